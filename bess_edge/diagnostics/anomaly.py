"""Cell anomalies: statistics of each cell against its string, and against its own past.

Three views, from fast to slow:

* the robust z-score of each cell's voltage against the string's median and MAD at every poll
  (Iglewicz & Hoaglin, "How to Detect and Handle Outliers", ASQC 1993: |z| > 3.5 is an outlier);
* the drift of each cell away from its string *during rests*, when no current flows and only an
  internal leak can move one cell's OCV relative to the others: a within-rest slope, turned into
  a leak current through the OCV slope (high self-discharge, an incipient soft short);
* a learned per-cell baseline ``deviation = a + b·I`` (its SOC offset and relative resistance)
  that adapts over days, and the cell's R0 ratio to the string against its own slow average:
  what was normal for this cell, so a slow change stands out even where it is within the spread
  of the string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_or, median
from bess_edge.diagnostics.trend import EwTrend
from bess_edge.model import FloatArray

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
# Floor of the robust spread [V]: below the cell monitor's accuracy (±1-2 mV for the common AFEs,
# e.g. ADI LTC6811/ADBMS1818 total measurement error), a small MAD is resolution, not signal.
SPREAD_FLOOR_V = 0.002
VOLTAGE_NOISE_V = 0.002
# Rest drift: fitted over a day of rests; a leak must be 6 standard errors out and above 0.1 %
# of capacity per hour (2.4 %/day, several times an LFP or NMC cell's normal self-discharge of
# ~2-3 %/month, Redondo-Iglesias et al., J. Energy Storage 2017) before a cell is named.
DRIFT_TIME_CONSTANT_S = 86_400.0
LEAK_SIGMAS = 6.0
LEAK_MIN_C = 0.001
# Learned baseline: adapts over a few days; a residual of 8 sigma held for ~10 min is anomalous.
BASELINE_TIME_CONSTANT_S = 3 * 86_400.0
BASELINE_Z_LIMIT = 8.0
BASELINE_Z_SMOOTH_S = 600.0
# Resistance: 20 % above the cell's own slowly learned ratio to its string, after 20 steps.
R_RISE_LIMIT = 1.2
R_BASELINE_TIME_CONSTANT_S = 30 * 86_400.0
R_MIN_STEPS = 20


def robust_zscore(values: FloatArray, floor: float = SPREAD_FLOOR_V) -> FloatArray:
    """Each value's distance from the median in robust standard deviations (median/MAD).

    Estimates how unlike its string a cell is at this instant; NaN values stay NaN.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 3:
        return np.full(values.shape, np.nan)
    centre = median(finite)
    sigma = max(MAD_TO_SIGMA * median(np.abs(finite - centre)), floor)
    return (values - centre) / sigma


@dataclass
class AnomalyResult:
    zscore: FloatArray
    leak_a: FloatArray
    baseline_z: FloatArray
    cells: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class AnomalyDetector:
    """Per-cell memory of rest drifts, learned baselines and resistance ratios."""

    def __init__(self, chemistry: Chemistry, capacity_ah: float, cells: int) -> None:
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        self.drift = EwTrend(cells, DRIFT_TIME_CONSTANT_S)
        # Weighted sums for the per-cell regression deviation = a + b·I (current shared).
        self.s_w = 0.0
        self.s_i = 0.0
        self.s_ii = 0.0
        self.s_d = np.zeros(cells)
        self.s_id = np.zeros(cells)
        self.resid_var = np.full(cells, VOLTAGE_NOISE_V**2)
        self.baseline_z_smooth = np.zeros(cells)
        self.r_ratio_baseline = np.ones(cells)
        # What _leak_view last read (the drift's slope array, the OCV slope) and gave.
        self._leak_cache: tuple[FloatArray, float, FloatArray, FloatArray, np.ndarray] | None = None

    def start_rest(self) -> None:
        """A new rest begins: its OCV level is new, only its drift joins the old ones."""
        self.drift.new_segment()

    def update(
        self,
        dt_s: float,
        deviation_v: FloatArray,
        current_a: float,
        settled_rest: bool,
        ocv_slope_v_per_pct: float,
        r0_ratio: FloatArray,
        r0_steps: FloatArray,
    ) -> AnomalyResult:
        """One poll: cell voltage minus string median [V], the corrected current [A], whether
        the string has rested long enough to read OCV, the OCV slope [V/%] at the string SOC,
        and each cell's R0 over the string median with the number of steps behind it."""
        if settled_rest:
            self.drift.add(dt_s, deviation_v)
        leak_a, _, leaking = self._leak_view(ocv_slope_v_per_pct)
        result = AnomalyResult(
            zscore=robust_zscore(deviation_v),
            leak_a=leak_a,
            baseline_z=self._baseline(dt_s, deviation_v, current_a),
        )
        for cell in leaking:
            result.cells.append(int(cell))
            result.reasons.append(
                f"cell {cell}: self-discharge {result.leak_a[cell]:.3f} A above its string at rest"
            )
        for cell in (np.abs(self.baseline_z_smooth) > BASELINE_Z_LIMIT).nonzero()[0]:
            result.cells.append(int(cell))
            result.reasons.append(
                f"cell {cell}: {self.baseline_z_smooth[cell]:+.1f} sigma off its learned baseline"
            )
        self._resistance(dt_s, r0_ratio, r0_steps, result)
        result.cells = sorted(set(result.cells))
        return result

    def _leak_view(self, slope_v_per_pct: float) -> tuple[FloatArray, FloatArray, np.ndarray]:
        """Each cell's leak [A], the leak it must exceed and the cells above it, computed again
        only when the drift fit (its slope array is replaced at every settled poll, kept
        otherwise) or the OCV slope changed: between rests they are the same every poll.
        Read-only arrays, as the Diagnoses until then share them."""
        drift = self.drift.slope_per_h
        cached = self._leak_cache
        if cached is None or cached[0] is not drift or cached[1] != slope_v_per_pct:
            leak, limit = self._leak(slope_v_per_pct), self._leak_limit(slope_v_per_pct)
            leak.flags.writeable = limit.flags.writeable = False
            leaking = (finite_or(leak) > limit).nonzero()[0]
            cached = self._leak_cache = (drift, slope_v_per_pct, leak, limit, leaking)
        return cached[2], cached[3], cached[4]

    def _leak(self, slope_v_per_pct: float) -> FloatArray:
        # A leak discharges: the cell's OCV falls against the string, so leak = -drift.
        soc_rate_pct_per_h = self.drift.slope_per_h / max(slope_v_per_pct, 1e-6)
        leak = -soc_rate_pct_per_h * self.capacity_ah / 100.0
        finite = leak[np.isfinite(leak)]
        return leak - median(finite) if finite.size else leak

    def _leak_limit(self, slope_v_per_pct: float) -> FloatArray:
        """Leak [A] a cell must exceed: a physical floor and LEAK_SIGMAS standard errors."""
        spread = self.drift.time_spread_h2
        with np.errstate(divide="ignore"):
            se_v_per_h = np.where(spread > 0, VOLTAGE_NOISE_V / np.sqrt(spread), np.inf)
        se_a = se_v_per_h / max(slope_v_per_pct, 1e-6) * self.capacity_ah / 100.0
        return np.maximum(LEAK_SIGMAS * se_a, LEAK_MIN_C * self.capacity_ah)

    def _baseline(self, dt_s: float, deviation_v: FloatArray, current_a: float) -> FloatArray:
        if not math.isfinite(current_a):
            return np.full(deviation_v.shape, np.nan)
        a, b = self._baseline_fit()
        expected = a + b * current_a
        resid = deviation_v - expected
        z = resid / np.sqrt(self.resid_var)
        learn = np.exp(-max(dt_s, 0.0) / BASELINE_TIME_CONSTANT_S)
        smooth = np.exp(-max(dt_s, 0.0) / BASELINE_Z_SMOOTH_S)
        ok = np.isfinite(resid)
        if self.s_w > 0:
            self.baseline_z_smooth = np.where(
                ok, smooth * self.baseline_z_smooth + (1 - smooth) * z, self.baseline_z_smooth
            )
            # Anomalous cells stop teaching the baseline, so a fault is not learned away.
            ok &= np.abs(self.baseline_z_smooth) <= BASELINE_Z_LIMIT
            learned = learn * self.resid_var + (1 - learn) * finite_or(resid) ** 2
            self.resid_var = np.where(ok, np.maximum(learned, VOLTAGE_NOISE_V**2), self.resid_var)
        w = 1.0
        self.s_w = learn * self.s_w + w
        self.s_i = learn * self.s_i + w * current_a
        self.s_ii = learn * self.s_ii + w * current_a**2
        d = np.where(ok, deviation_v, expected)
        d = finite_or(d)
        self.s_d = learn * self.s_d + w * d
        self.s_id = learn * self.s_id + w * current_a * d
        return z

    def _baseline_fit(self) -> tuple[FloatArray, FloatArray]:
        """Each cell's learned offset [V] and relative resistance [Ω] from the weighted sums."""
        if self.s_w <= 0:
            return np.zeros_like(self.s_d), np.zeros_like(self.s_d)
        det = self.s_w * self.s_ii - self.s_i**2
        if det <= 1e-9 * max(self.s_w * self.s_ii, 1e-12):
            return self.s_d / self.s_w, np.zeros_like(self.s_d)
        b = (self.s_w * self.s_id - self.s_i * self.s_d) / det
        a = (self.s_d - b * self.s_i) / self.s_w
        return a, b

    def _resistance(
        self, dt_s: float, r0_ratio: FloatArray, steps: FloatArray, result: AnomalyResult
    ) -> None:
        ok = np.isfinite(r0_ratio) & (steps >= R_MIN_STEPS)
        rising = ok & (r0_ratio > R_RISE_LIMIT * self.r_ratio_baseline)
        learn = np.exp(-max(dt_s, 0.0) / R_BASELINE_TIME_CONSTANT_S)
        teach = ok & ~rising
        self.r_ratio_baseline = np.where(
            teach, learn * self.r_ratio_baseline + (1 - learn) * r0_ratio, self.r_ratio_baseline
        )
        for cell in rising.nonzero()[0]:
            result.cells.append(int(cell))
            result.reasons.append(
                f"cell {cell}: R0 {r0_ratio[cell]:.2f}x string median, "
                f"learned {self.r_ratio_baseline[cell]:.2f}x"
            )

    def state(self) -> dict[str, Any]:
        return {
            **{f"drift_{k}": v for k, v in self.drift.state().items()},
            "scalars": np.array([self.s_w, self.s_i, self.s_ii]),
            "s_d": self.s_d,
            "s_id": self.s_id,
            "resid_var": self.resid_var,
            "baseline_z_smooth": self.baseline_z_smooth,
            "r_ratio_baseline": self.r_ratio_baseline,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.drift.load({k[6:]: v for k, v in state.items() if k.startswith("drift_")})
        self.s_w, self.s_i, self.s_ii = (float(v) for v in state["scalars"])
        for name in ("s_d", "s_id", "resid_var", "baseline_z_smooth", "r_ratio_baseline"):
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != self.s_d.shape:
                raise ValueError(f"anomaly field {name} has shape {value.shape}")
            setattr(self, name, value)
