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
# The diagnostics' thermal-risk words, in order; a rule (and the built-in precursor alert)
# compares the level number, so ``thermal_risk_level >= 2`` means "high or worse".
RISK_LEVELS = {
    **dict.fromkeys(("none", "low", "normal"), 0),
    **dict.fromkeys(("elevated", "medium"), 1),
    "high": 2,
    "critical": 3,
}


def known_metrics() -> set[str]:
    """Every metric name this build can resolve without a driver's ``extra`` values."""
    diagnosis_fields = {f.name for f in dataclasses.fields(Diagnosis)} - {"device_id", "values"}
    return {
        *CELL_ARRAYS,
        *READING_INTS,
        *Reading(device_id="-").scalars(),
        *diagnosis_fields,
        "thermal_risk_level",
    }


class MetricSource:
    """One cycle's values, looked up by name; derived dicts are built once per cycle."""

    def __init__(self, reading: Reading, diagnosis: Diagnosis | Any | None) -> None:
        self.reading = reading
        self.diagnosis = diagnosis
        self._scalars: dict[str, Any] | None = None
        self._diagnosis_dict: dict[str, Any] | None = None

    def get(self, metric: str) -> float | FloatArray | None:
        """The value(s) of ``metric`` this cycle, or None when absent or not a number."""
        r = self.reading
        if metric in CELL_ARRAYS:
            cells: FloatArray = getattr(r, metric)
            return cells if cells.size else None
        if metric in READING_INTS:
            return float(int(getattr(r, metric)))
        if self._scalars is None:
            self._scalars = r.scalars()
        if metric in self._scalars:
            return _number(self._scalars[metric])
        value = self._from_diagnosis(metric)
        if value is None and metric == "thermal_risk_level":
            value = self._from_diagnosis("thermal_risk")
        return _number(value)

    def _from_diagnosis(self, metric: str) -> Any:
        d = self.diagnosis
        if d is None:
            return None
        if hasattr(d, metric):
            return getattr(d, metric)
        values = getattr(d, "values", None)
        if isinstance(values, dict) and metric in values:
            return values[metric]
        if self._diagnosis_dict is None:
            self._diagnosis_dict = d.to_dict() if hasattr(d, "to_dict") else {}
        return self._diagnosis_dict.get(metric)


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
    if isinstance(value, list | tuple | np.ndarray):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if array.ndim != 1 or not np.isfinite(array).any():
            return None
        return array
    level = getattr(value, "value", None)  # an enum (e.g. a ThermalRisk IntEnum or StrEnum)
    return _number(level) if level is not None and level is not value else None
