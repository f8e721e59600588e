"""Capacity (SOH) from charge throughput between well-known SOC points, and its fade trend.

A *well-known* SOC point is the end of a long rest: the cell voltage has relaxed to its OCV and
the chemistry's table gives SOC with an uncertainty set by the OCV slope (useless on the LFP
plateau, good at the knees). Between two such points the offset-corrected current integral ΔAh
and the SOC difference ΔSOC satisfy ΔAh = Q·ΔSOC/100, both measured with error, so Q is fitted
by weighted total least squares (Plett, "Recursive approximate weighted total least squares
estimation of battery cell total capacity", J. Power Sources 196 (2011) 2319): minimise
Σ (ΔAh - Q·x)² / (σy² + Q²σx²).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.soc import OCV_MODEL_ERROR_V
from bess_edge.model import FloatArray

# A pair must span at least 20 % SOC: shorter spans divide noise by too little charge.
MIN_PAIR_SOC_PCT = 20.0
# An anchor's SOC is trusted only when the OCV slope gives σ below this.
MAX_ANCHOR_SIGMA_PCT = 3.0
# Old pairs fade: each new pair multiplies older weights by this (memory of ~50 pairs).
PAIR_FORGETTING = 0.98
MAX_PAIRS = 200
# Current integration error beyond the offset: gain error of the sensor, ~0.5 % of reading.
CURRENT_GAIN_ERROR = 0.005
MAX_HISTORY = 500


class CapacityEstimator:
    """Pairs of rested SOC anchors with the charge between them, fitted by weighted TLS."""

    def __init__(self, chemistry: Chemistry, nominal_capacity_ah: float) -> None:
        self.chemistry = chemistry
        self.nominal_capacity_ah = nominal_capacity_ah
        self.ah_counter = 0.0  # offset-corrected, efficiency-corrected charge since start [Ah]
        self.ah_sigma2 = 0.0  # variance of that integral from the offset uncertainty [Ah²]
        self._pending: tuple[float, float, float, float] | None = None
        self._anchor: tuple[float, float, float, float] | None = None  # soc, σ², Ah, σ²Ah
        self.pairs: FloatArray = np.zeros((0, 4))  # ΔSOC %, ΔAh, σx², σy²
        self.capacity_ah = math.nan
        self.capacity_sigma_ah = math.nan
        self.history: FloatArray = np.zeros((0, 3))  # ts_s, equivalent full cycles, capacity Ah

    def integrate(self, current_a: float, dt_s: float, bias_sigma_a: float) -> None:
        """Add ``dt_s`` of offset-corrected current [A] to the charge counter."""
        if not (math.isfinite(current_a) and dt_s > 0):
            return
        eta = self.chemistry.coulombic_efficiency if current_a > 0 else 1.0
        self.ah_counter += eta * current_a * dt_s / 3600.0
        # The offset error is systematic: its contribution grows with time, not with √time.
        self.ah_sigma2 += (bias_sigma_a * dt_s / 3600.0) ** 2 + (
            CURRENT_GAIN_ERROR * current_a * dt_s / 3600.0
        ) ** 2

    def observe_rest(self, rested_voltage_v: float) -> None:
        """Note a settled rest: the mean cell voltage [V] is taken as the OCV."""
        if not math.isfinite(rested_voltage_v):
            return
        soc = float(self.chemistry.soc_from_ocv(rested_voltage_v))
        slope = float(self.chemistry.docv_dsoc(soc))
        if slope <= 0 or OCV_MODEL_ERROR_V / slope > MAX_ANCHOR_SIGMA_PCT:
            return
        sigma_pct = OCV_MODEL_ERROR_V / slope
        self._pending = (soc, sigma_pct**2, self.ah_counter, self.ah_sigma2)

    def end_rest(self, ts_s: float, equivalent_full_cycles: float) -> bool:
        """The rest is over: its last settled sample becomes an anchor. True if Q was refitted."""
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        previous, self._anchor = self._anchor, pending
        if previous is None:
            return False
        d_soc = pending[0] - previous[0]
        if abs(d_soc) < MIN_PAIR_SOC_PCT:
            return False
        pair = [d_soc, pending[2] - previous[2], pending[1] + previous[1], pending[3] - previous[3]]
        self.pairs = np.vstack([self.pairs, pair])[-MAX_PAIRS:]
        self.capacity_ah, self.capacity_sigma_ah = fit_capacity_wtls(
            self.pairs, self.nominal_capacity_ah
        )
        self.history = np.vstack([self.history, [ts_s, equivalent_full_cycles, self.capacity_ah]])[
            -MAX_HISTORY:
        ]
        return True

    def state(self) -> dict[str, Any]:
        def anchor(value: tuple[float, ...] | None) -> FloatArray:
            return np.full(4, np.nan) if value is None else np.asarray(value)

        return {
            "scalars": np.array(
                [self.ah_counter, self.ah_sigma2, self.capacity_ah, self.capacity_sigma_ah]
            ),
            "pending": anchor(self._pending),
            "anchor": anchor(self._anchor),
            "pairs": self.pairs,
            "history": self.history,
        }

    def load(self, state: dict[str, Any]) -> None:
        def anchor(value: FloatArray) -> tuple[float, float, float, float] | None:
            v = [float(x) for x in value]
            return None if math.isnan(v[0]) else (v[0], v[1], v[2], v[3])

        scalars = [float(x) for x in state["scalars"]]
        self.ah_counter, self.ah_sigma2, self.capacity_ah, self.capacity_sigma_ah = scalars
        self._pending = anchor(state["pending"])
        self._anchor = anchor(state["anchor"])
        self.pairs = np.asarray(state["pairs"], dtype=np.float64).reshape(-1, 4)
        self.history = np.asarray(state["history"], dtype=np.float64).reshape(-1, 3)


def fit_capacity_wtls(pairs: FloatArray, nominal_capacity_ah: float) -> tuple[float, float]:
    """Capacity [Ah] and its standard deviation [Ah] from (ΔSOC %, ΔAh, σx², σy²) pairs.

    The weighted-TLS cost is one-dimensional in Q, so it is minimised on a dense grid around the
    rated capacity and refined; the standard deviation comes from the cost's curvature.
    """
    if pairs.size == 0:
        return math.nan, math.nan
    age = np.arange(pairs.shape[0])[::-1]
    weight = PAIR_FORGETTING**age
    x = pairs[:, 0] / 100.0
    y, sx2, sy2 = pairs[:, 1], pairs[:, 2] / 100.0**2, np.maximum(pairs[:, 3], 1e-12)

    def cost(q: FloatArray) -> FloatArray:
        q = q[:, None]
        return np.sum(weight * (y - q * x) ** 2 / (sy2 + q**2 * sx2), axis=1)

    grid = nominal_capacity_ah * np.linspace(0.3, 1.5, 1201)
    best = grid[np.argmin(cost(grid))]
    step = grid[1] - grid[0]
    fine = np.linspace(best - step, best + step, 201)
    values = cost(fine)
    q = float(fine[np.argmin(values)])
    h = max(1e-3 * q, 1e-9)
    curvature = float(np.diff(cost(np.array([q - h, q, q + h])), n=2)[0]) / h**2
    # Cost is Σ r²/σ², so half its curvature is the Fisher information of Q.
    sigma = math.sqrt(2.0 / curvature) if curvature > 0 else math.nan
    return q, sigma


def fade_projection(history: FloatArray, nominal_capacity_ah: float, eol_soh_pct: float) -> dict:
    """Capacity-fade trend: fade per year [% of rated], and when/at which EFC SOH hits EOL.

    A straight line through the capacity estimates against time and against equivalent full
    cycles (capacity fade in the linear region before the "knee", Schmalstieg et al., J. Power
    Sources 257 (2014) 325); no projection before two estimates a day apart or while not fading.
    """
    nan = math.nan
    out = {"fade_pct_per_year": nan, "eol_ts_ms": nan, "eol_efc": nan}
    if history.shape[0] < 2 or np.ptp(history[:, 0]) < 86_400.0:
        return out
    ts, efc, cap = history.T
    soh = 100.0 * cap / nominal_capacity_ah
    slope_per_s, intercept = np.polyfit(ts - ts[-1], soh, 1)
    out["fade_pct_per_year"] = float(-slope_per_s * 365.25 * 86_400.0)
    if slope_per_s < 0 and intercept > eol_soh_pct:
        out["eol_ts_ms"] = float((ts[-1] + (eol_soh_pct - intercept) / slope_per_s) * 1000.0)
        if np.ptp(efc) > 0:
            slope_efc, icpt_efc = np.polyfit(efc - efc[-1], soh, 1)
            if slope_efc < 0:
                out["eol_efc"] = float(efc[-1] + (eol_soh_pct - icpt_efc) / slope_efc)
    return out
