"""The Diagnosis: what the daemon concluded about one device at one poll.

Alert rules read these fields by name (``metric = "thermal_risk_level"``), the store keeps them
with the sample, sync publishes ``to_dict()``. Units are in the names; ``docs/diagnostics.md``
says what each field estimates and from what evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bess_edge.model import FloatArray

NAN = math.nan


def _cells() -> FloatArray:
    return np.empty(0)


@dataclass(slots=True)
class Diagnosis:
    """One device at one poll (SI units; SOC, SOH and life in percent)."""

    device_id: str
    ts_ms: int
    # State of charge (EKF on a 1-RC model, string average cell).
    soc_pct: float = NAN
    soc_uncertainty_pct: float = NAN
    current_offset_a: float = NAN  # estimated current-sensor offset, already removed
    # The estimate and the BMS's own SOC disagree beyond the estimate's uncertainty (the
    # Reading is flagged inconsistent); SOC rules skip the estimate while this holds.
    soc_disputed: bool = False
    current_offset_uncertainty_a: float = NAN
    # Where the OCV table came from: preset, config, file (commissioning), learned.
    ocv_source: str = "preset"
    # RMS of the settled rests around a learned OCV curve (NaN unless ocv_source is learned).
    ocv_fit_residual_v: float = NAN
    # Capacity and health.
    capacity_ah: float = NAN  # estimated, NaN until two rested SOC points were seen
    capacity_uncertainty_ah: float = NAN
    soh_pct: float = NAN  # capacity-based: estimated / rated capacity
    soh_resistance_pct: float = NAN  # 100 at the preset R0, 80 at double it
    r0_ohm: float = NAN  # string ohmic resistance at 25 °C (sum over series cells)
    cell_r0_mean_ohm: float = NAN  # mean cell R0 at 25 °C
    # The two resistances r0_ohm mixes, string totals at 25 °C: the 1-s DC pulse resistance
    # from steps >= 0.5C (datasheet/HPPC), and the small-signal one from steps below 0.5C.
    r0_pulse_1s_ohm: float = NAN
    r0_pulse_1s_uncertainty_ohm: float = NAN
    r0_small_signal_ohm: float = NAN
    capacity_fade_pct_per_year: float = NAN
    # Why the cell faded (electrode.py, refitted only when a new OCV curve exists): loss of
    # lithium inventory and of active material on each electrode since the reference cell
    # (commissioning, or the first matched fit), with 1-sigma. NaN when no library pair of
    # half-cell curves reproduces the cell's OCV within 10 mV, or no reference exists.
    lli_pct: float = NAN
    lli_uncertainty_pct: float = NAN
    lam_pe_pct: float = NAN
    lam_pe_uncertainty_pct: float = NAN
    lam_ne_pct: float = NAN
    lam_ne_uncertainty_pct: float = NAN
    electrode_pair: str = ""  # the library curves fitted, "positive/negative"
    electrode_fit_residual_v: float = NAN  # RMS of that fit
    # The string as a whole (usable.py): what it can deliver with its imbalance, what balancing
    # would recover (apart from ageing, rated - capacity_ah), energy SOH at 0.5C.
    usable_capacity_ah: float = NAN
    usable_capacity_uncertainty_ah: float = NAN
    recoverable_capacity_ah: float = NAN
    usable_energy_wh: float = NAN
    usable_energy_uncertainty_wh: float = NAN
    soh_energy_pct: float = NAN
    soh_energy_uncertainty_pct: float = NAN
    # SOH in 1, 5 and 10 years, with the 10th and 90th percentiles (the 80 % band).
    soh_forecast_pct: list[float] = field(default_factory=list)
    soh_forecast_low_pct: list[float] = field(default_factory=list)
    soh_forecast_high_pct: list[float] = field(default_factory=list)
    eol_projected_ts_ms: float = NAN  # when SOH reaches the chemistry's end of life
    eol_projected_efc: float = NAN
    # Cycles and life.
    equivalent_full_cycles: float = 0.0
    life_used_pct: float = 0.0
    remaining_cycles: float = NAN
    dod_histogram: FloatArray = field(default_factory=_cells)  # cycles per 10 % DoD bin
    # Balance.
    cell_spread_v: float = NAN
    cell_soc_spread_pct: float = NAN
    imbalance_trend_pct_per_day: float = NAN
    weak_cells: list[int] = field(default_factory=list)
    balancing_recommendation: str = "none"
    # Safety and thermal.
    temperature_max_c: float = NAN
    temperature_min_c: float = NAN
    temperature_spread_c: float = NAN
    temperature_rate_max_k_per_min: float = NAN
    thermal_runaway_score: float = 0.0  # 0..1 precursor score of the worst sensor
    thermal_risk: str = "normal"  # normal / elevated / high / critical
    thermal_risk_level: int = 0  # 0..3, the same scale
    thermal_risk_reasons: list[str] = field(default_factory=list)
    # Anomalies.
    anomalous_cells: list[int] = field(default_factory=list)
    anomaly_reasons: list[str] = field(default_factory=list)
    # Data quality of this poll.
    quality_flags: list[str] = field(default_factory=list)
    rest_s: float = 0.0  # how long the string has been at rest
    # Per cell (index = position in the string).
    cell_soc_pct: FloatArray = field(default_factory=_cells)
    cell_deviation_v: FloatArray = field(default_factory=_cells)
    cell_zscore: FloatArray = field(default_factory=_cells)
    cell_r0_ohm: FloatArray = field(default_factory=_cells)
    cell_self_discharge_a: FloatArray = field(default_factory=_cells)
    # Capacity of each cell relative to the string's average cell (capacity_ah), from rest to
    # rest SOC changes; in Ah once capacity_ah is known (cell_capacity.py).
    cell_capacity_ratio: FloatArray = field(default_factory=_cells)
    cell_capacity_ratio_uncertainty: FloatArray = field(default_factory=_cells)
    cell_capacity_ah: FloatArray = field(default_factory=_cells)
    cell_capacity_uncertainty_ah: FloatArray = field(default_factory=_cells)
    # What an estimator found wrong with its own inputs (offset on its bound, wrong sign, ...).
    estimator_warnings: list[str] = field(default_factory=list)
    diagnostics_error: str | None = None  # set only if an estimator failed on this poll

    def to_dict(self, cell_arrays: bool = True) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, numpy arrays become lists, floats keep six significant
        digits (the projected end-of-life time is a whole millisecond timestamp). Without
        ``cell_arrays`` the per-cell arrays (``cell_soc_pct``, ...) are left out.

        Field by field, not ``dataclasses.asdict``: that deep-copies every array first, a third
        of a 16-cell rack's diagnostics time per poll, for values converted here anyway."""
        out = {}
        for f in _FIELDS:
            value = getattr(self, f)
            if type(value) is float:  # most fields: _jsonable's type checks skipped
                out[f] = float(format(value, _FLOAT_FORMAT)) if math.isfinite(value) else None
            elif type(value) in _AS_IS:
                out[f] = value
            elif cell_arrays or f not in _CELL_FIELDS or not isinstance(value, np.ndarray):
                out[f] = _jsonable(value)
        if math.isfinite(self.eol_projected_ts_ms):
            out["eol_projected_ts_ms"] = round(self.eol_projected_ts_ms)
        return out


_FIELDS = tuple(f.name for f in fields(Diagnosis))

# Estimates are good to a few parts per thousand at best: six significant digits keep every
# figure exact to its meaning and cut a stored/published diagnosis by about 13 % (demo run).
SIGNIFICANT_DIGITS = 6
_FLOAT_FORMAT = f".{SIGNIFICANT_DIGITS}g"
_CELL_FIELDS = frozenset(f for f in _FIELDS if f.startswith("cell_"))
_AS_IS = frozenset({str, int, bool, type(None)})  # JSON-ready already


def round_significant(values: np.ndarray) -> np.ndarray:
    """Each finite value rounded to SIGNIFICANT_DIGITS significant digits (NaN, inf and 0 kept)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        finite = np.isfinite(magnitude)
        scale = np.where(finite, 10.0 ** (SIGNIFICANT_DIGITS - 1 - magnitude), 1.0)
        # The round method: np.round's dispatch wrapper cost as much as the rounding.
        return np.where(finite, (values * scale).round() / scale, values)


def _jsonable(value: Any) -> Any:
    if type(value) is float:  # the items of most lists: the checks below skipped
        return float(format(value, _FLOAT_FORMAT)) if math.isfinite(value) else None
    if type(value) in _AS_IS:
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            # Whole-array path: 10,000-cell strings are serialised every poll.
            values = round_significant(value.astype(np.float64, copy=False)).tolist()
            if np.isfinite(value).all():
                return values
            return [v if math.isfinite(v) else None for v in values]
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(format(value, _FLOAT_FORMAT))
    if isinstance(value, np.integer):
        return int(value)
    return value
