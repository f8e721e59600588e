"""Data quality: what of a Reading may be believed, flagged on the Reading and masked out.

Every check turns doubtful values into NaN in a cleaned copy (the estimators skip NaN) and flags
the Reading with a :class:`~bess_edge.model.Quality` bit and a note that names the field and
why, so the operator sees the problem and the estimators never learn from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_or, median
from bess_edge.model import FloatArray, Quality, Reading

# Plausibility bands, wider than any operating limit: beyond them a value is a broken sensor or
# a decoding error, not a cell state.
CELL_VOLTAGE_PLAUSIBLE_FACTOR = (0.5, 1.25)  # x the chemistry's min/max operating voltage
TEMPERATURE_PLAUSIBLE_C = (-50.0, 250.0)
CURRENT_PLAUSIBLE_C = 10.0  # |I| above 10C is a decode error for a stationary string
# A cell that moves this much more than its string between two polls has an open sense wire
# (Plett, Battery Management Systems vol. 2, ch. 1: sense-wire faults show as jumps).
JUMP_FRACTION_OF_WINDOW = 0.1  # of (max - min) operating voltage: ~140 mV NMC
# A sensor whose value does not change for this many polls while most of its string's sensors
# do is frozen; with 1 mV / 0.1 °C resolution, noise alone moves a live channel within a few.
FROZEN_POLLS = 30
LIVE_FRACTION = 0.5
# BMS SOC and ours may differ by this much [%-points] (plus 3 of our sigmas) before we say so.
SOC_DISAGREEMENT_PCT = 10.0
PACK_SUM_TOLERANCE = 0.05  # pack voltage vs sum of cells (busbars, sensor gain)


@dataclass(slots=True)
class CleanInputs:
    """The believable part of one Reading (NaN where not), in SI units."""

    current_a: float
    pack_voltage_v: float
    cell_voltage_v: FloatArray
    temperature_c: FloatArray  # per sensor

    @property
    def cells_valid(self) -> FloatArray:
        return np.isfinite(self.cell_voltage_v)


class QualityMonitor:
    """Per-device checks that need memory (frozen sensors, jumps); the rest are stateless."""

    def __init__(self, chemistry: Chemistry, capacity_ah: float) -> None:
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        self._last_v: FloatArray = np.zeros(0)
        self._last_t: FloatArray = np.zeros(0)
        self._same_v: FloatArray = np.zeros(0)
        self._same_t: FloatArray = np.zeros(0)

    def clean(self, reading: Reading) -> CleanInputs:
        """Check one Reading, flag it, and return the values fit for the estimators."""
        chem = self.chemistry
        lo = chem.cell_voltage_min_v * CELL_VOLTAGE_PLAUSIBLE_FACTOR[0]
        hi = chem.cell_voltage_max_v * CELL_VOLTAGE_PLAUSIBLE_FACTOR[1]
        cell_v = _in_band(reading, reading.cell_voltage_v, lo, hi, "cell_voltage_v")
        temps = _in_band(reading, reading.cell_temperature_c, *TEMPERATURE_PLAUSIBLE_C,
                         "cell_temperature_c")  # fmt: skip
        # What no cell of this chemistry can read is stored as null, not only kept from the
        # estimators: a 8.191 V "cell" exported as a value is garbage with a flag on it.
        # (Frozen and jumping cells below stay stored: their values are real, only doubtful.)
        if cell_v.size == reading.cell_voltage_v.size:
            reading.cell_voltage_v = cell_v.copy()
        if temps.size == reading.cell_temperature_c.size:
            reading.cell_temperature_c = temps.copy()
        current = _scalar(reading, reading.pack_current_a, "pack_current_a",
                          CURRENT_PLAUSIBLE_C * self.capacity_ah)  # fmt: skip
        pack_v = _scalar(reading, reading.pack_voltage_v, "pack_voltage_v",
                         hi * max(cell_v.size, 1) * 2 if cell_v.size else 1e5)  # fmt: skip
        if pack_v < 0:
            reading.flag(Quality.OUT_OF_RANGE, f"pack_voltage_v={pack_v:.1f} is negative")
            pack_v = math.nan
        self._check_jumps(reading, cell_v)
        cell_v, self._last_v, self._same_v = _frozen(reading, cell_v, self._last_v, self._same_v,
                                                     "cell_voltage_v")  # fmt: skip
        temps, self._last_t, self._same_t = _frozen(reading, temps, self._last_t, self._same_t,
                                                    "cell_temperature_c")  # fmt: skip
        finite = cell_v[np.isfinite(cell_v)]
        if finite.size and math.isfinite(pack_v):
            total = float(finite.sum()) * cell_v.size / finite.size
            if abs(pack_v - total) > PACK_SUM_TOLERANCE * total:
                reading.flag(
                    Quality.INCONSISTENT,
                    f"pack_voltage_v={pack_v:.2f} but cells sum to {total:.2f} V",
                )
        return CleanInputs(current, pack_v, cell_v, temps)

    def _check_jumps(self, reading: Reading, cell_v: FloatArray) -> None:
        if self._last_v.size != cell_v.size or cell_v.size < 3:
            return
        step = cell_v - self._last_v
        finite = step[np.isfinite(step)]
        if finite.size < 3:
            return
        window = self.chemistry.cell_voltage_max_v - self.chemistry.cell_voltage_min_v
        excess = np.abs(step - median(finite))
        jumped = (finite_or(excess) > JUMP_FRACTION_OF_WINDOW * window).nonzero()[0]
        if jumped.size:
            reading.flag(Quality.JUMP, f"cell_voltage_v jumped at cells {_ids(jumped)}")
            cell_v[jumped] = np.nan


def check_soc_agreement(reading: Reading, soc_pct: float, soc_sigma_pct: float) -> bool:
    """Flag INCONSISTENT, and say True, when the BMS's SOC [%] and our estimate disagree by
    more than the estimate's own uncertainty (3 sigma) plus the BMS's usual error: then one of
    the two is wrong, and an alert must not be raised from ours as if it were known."""
    bms = reading.bms_soc_pct
    if not (math.isfinite(bms) and math.isfinite(soc_pct) and math.isfinite(soc_sigma_pct)):
        return False
    if abs(bms - soc_pct) > SOC_DISAGREEMENT_PCT + 3.0 * soc_sigma_pct:
        reading.flag(
            Quality.INCONSISTENT,
            f"bms_soc_pct={bms:.1f} but estimated {soc_pct:.1f} ± {soc_sigma_pct:.1f} %: "
            "no SOC alert is raised from the estimate while they disagree",
        )
        return True
    return False


def _scalar(reading: Reading, value: float, name: str, limit: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        reading.flag(Quality.DECODE_ERROR, f"{name} is not a number")
        return math.nan
    if math.isnan(value):
        reading.flag(Quality.MISSING, f"{name} missing")
        return math.nan
    if not abs(value) <= limit:
        reading.flag(Quality.OUT_OF_RANGE, f"{name}={value:g} beyond ±{limit:g}")
        return math.nan
    return value


def _in_band(reading: Reading, values: FloatArray, lo: float, hi: float, name: str) -> FloatArray:
    try:
        out = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    except (TypeError, ValueError):
        reading.flag(Quality.DECODE_ERROR, f"{name} is not numeric")
        return np.zeros(0)
    missing = np.isnan(out)
    if np.count_nonzero(missing):
        reading.flag(Quality.MISSING, f"{name} missing at {_ids(np.flatnonzero(missing))}")
    bad = (out < lo) | (out > hi)  # False for NaN: missing is not also out of range
    if np.count_nonzero(bad):
        reading.flag(
            Quality.OUT_OF_RANGE,
            f"{name} outside {lo:g}..{hi:g} at {_ids(np.flatnonzero(bad))}",
        )
        out[bad] = np.nan
    return out


def _frozen(
    reading: Reading, values: FloatArray, last: FloatArray, same: FloatArray, name: str
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Count polls without change per channel; mask channels frozen while the rest are live."""
    if last.size != values.size:
        return values, values.copy(), np.zeros(values.size)
    unchanged = values == last
    live = np.isfinite(values) & ~unchanged
    if values.size >= 3 and np.count_nonzero(live) >= LIVE_FRACTION * values.size:
        same = np.where(unchanged, same + 1, 0)
    else:
        same = np.where(unchanged, same, 0)
    frozen = same >= FROZEN_POLLS
    new_last = values.copy()
    if np.count_nonzero(frozen):
        reading.flag(Quality.FROZEN, f"{name} frozen at {_ids(np.flatnonzero(frozen))}")
        values = values.copy()
        values[frozen] = np.nan
    return values, new_last, same


def _ids(indices: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f" (+{indices.size - limit} more)" if indices.size > limit else ""
    return f"[{shown}]{more}"
