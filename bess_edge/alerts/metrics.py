"""Where a rule's ``metric`` comes from: a Reading field, a cell statistic or a Diagnosis field.

A metric is either one number (pack values, cell min/max/spread, diagnosis scalars) or one number
per cell (``cell_voltage_v``, ``cell_temperature_c``, per-cell diagnosis arrays). Absent or
non-numeric values are ``None``: the rule is skipped for that cycle, it never raises through.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bess_edge.diagnostics import Diagnosis
from bess_edge.model import FloatArray, Reading

# Per-cell arrays of a Reading: a rule on one of them checks every cell and names it.
CELL_ARRAYS = ("cell_voltage_v", "cell_temperature_c")
# Reading fields that are integers a rule may test (``quality > 0``: any data-quality flag).
READING_INTS = ("quality", "fault_flags", "status_flags", "cell_count")
# The diagnostics' thermal-risk words (Diagnosis.thermal_risk) as numbers, so that a rule can
# compare them: ``metric = "thermal_risk", above = 1.5`` means "high or worse".
RISK_LEVELS = {"normal": 0, "elevated": 1, "high": 2, "critical": 3}
# The SOC estimates a rule may not use while the Diagnosis says they disagree with the BMS.
DISPUTED_SOC = frozenset({"soc_pct", "cell_soc_pct"})


# The Reading's own scalars (Reading.scalars() without a driver's ``extra`` values): only a
# metric among them or ``extra`` builds that dict, whose cell statistics cost ~20 us a poll on
# a 16-cell rack; the built-in thermal rule reads a Diagnosis field and needs none of it.
READING_SCALARS = frozenset(Reading(device_id="-").scalars())


def known_metrics() -> set[str]:
    """Every metric name this build can resolve without a driver's ``extra`` values."""
    diagnosis_fields = {f.name for f in dataclasses.fields(Diagnosis)} - {"device_id", "ts_ms"}
    return {*CELL_ARRAYS, *READING_INTS, *READING_SCALARS, *diagnosis_fields}


class MetricSource:
    """One cycle's values, looked up by name; the Reading's scalars are built once per cycle."""

    def __init__(self, reading: Reading, diagnosis: Diagnosis | Any | None) -> None:
        self.reading = reading
        self.diagnosis = diagnosis
        self._scalars: dict[str, Any] | None = None

    def get(self, metric: str) -> float | FloatArray | None:
        """The value(s) of ``metric`` this cycle, or None when absent or not a number."""
        r = self.reading
        if metric in CELL_ARRAYS:
            cells: FloatArray = getattr(r, metric)
            return cells if cells.size else None
        if metric in READING_INTS:
            return float(int(getattr(r, metric)))
        if metric in READING_SCALARS or metric in r.extra:
            if self._scalars is None:
                self._scalars = r.scalars()
            return _number(self._scalars[metric])
        if metric in DISPUTED_SOC and getattr(self.diagnosis, "soc_disputed", False):
            return None  # an estimate the BMS contradicts raises nothing (the Reading says so)
        return _number(getattr(self.diagnosis, metric, None))


def _number(value: Any) -> float | FloatArray | None:
    """A float, a float array (per cell), or None for anything absent, NaN-only or non-numeric."""
    if value is None:
        return None
    if isinstance(value, str):
        level = RISK_LEVELS.get(value.lower())
        return float(level) if level is not None else None
    if isinstance(value, bool | int | float | np.number):
        number = float(value)
        return None if math.isnan(number) else number
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "fiu":
        array = value.astype(np.float64, copy=False)  # per cell (cell_soc_pct, cell_zscore, ...)
        return array if np.isfinite(array).any() else None
    return None  # lists of cell indices, reasons, ...: not a level to compare
