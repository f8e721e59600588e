"""Capacity (SOH) from charge throughput between well-known SOC points, and its fade trend.

A *well-known* SOC point (an *anchor*) is the end of a long rest: the cell voltage has relaxed to
its OCV and the chemistry's table gives SOC with an uncertainty set by the OCV slope (useless on
the LFP plateau, good at the knees). The charge counter ``A`` integrates the *measured* current,
which reads high by an unknown constant offset ``b``, so at anchor ``k`` (time ``t_k``, SOC
``x_k``)

    A_k = Q·x_k/100 + b·t_k + c

with the capacity ``Q``, the offset ``b`` and the counter's zero ``c`` unknown, and ``x_k``
measured with the anchor's error. Q is the weighted total-least-squares fit (Plett, "Recursive
approximate weighted total least squares estimation of battery cell total capacity", J. Power
Sources 196 (2011) 2319): minimise Σ w_k (A_k - Q·x_k - b·t_k - c)² / (σA_k² + Q²σx_k²) over Q,
with b and c profiled out in closed form for each Q.

Why the offset is fitted here and not taken from the SOC filter: between two anchors hours apart
an offset of 0.5 % of 1C moves the charge by several % of capacity, with the sign of the
current's direction, so discharge pairs read low and charge pairs high. The SOC filter learns
the offset only where the OCV is steep; on an LFP plateau its estimate follows model errors
(diffusion overpotentials, relaxation) and drifts by more than the offset itself. The anchors
measure it directly: two rests at the same SOC a day apart differ in ``A`` by ``b`` times a day.
While the anchors cannot yet pin b better than the SOC filter knows it (two anchors, one
pair), the filter's estimate and variance are the prior of b and Q rests on it as before. Once
they can, the fit takes only the sensor's spec as prior (zero ± 1 % of 1C) and its offset is
handed to the filter (``offset_learned``): never both ways at once, so no anchor is counted twice.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.soc import INITIAL_BIAS_SIGMA_C, OCV_MODEL_ERROR_V, ocv_table_error_v
from bess_edge.model import FloatArray

if TYPE_CHECKING:
    from bess_edge.diagnostics.ocv_learn import LearnedOcv

# Q is fitted once a chain of anchors spans at least 20 % SOC: shorter spans divide the anchors'
# errors by too little charge.
MIN_SPAN_SOC_PCT = 20.0
# An anchor's SOC is trusted only when the OCV slope gives σ below this.
MAX_ANCHOR_SIGMA_PCT = 3.0
# Old anchors fade: each new anchor multiplies older weights by this (memory of ~50 rests, a few
# weeks of daily cycling, over which the offset is taken as constant).
ANCHOR_FORGETTING = 0.98
MAX_ANCHORS = 200
# Current integration error beyond the offset: gain error of the sensor, ~0.5 % of reading.
CURRENT_GAIN_ERROR = 0.005
# The rested voltage is averaged over the last minutes of the rest: 1 mV of cell-monitor noise
# and its quantisation shrink, while the remaining relaxation over 5 min is far below a mV.
REST_AVERAGE_S = 300.0
MAX_HISTORY = 500
# Columns of ``anchors``.
SOC, SOC_VAR, AH, AH_VAR, TIME, CHAIN = range(6)


class CapacityEstimator:
    """Rested SOC anchors with the charge counter at each, fitted by weighted TLS."""

    def __init__(self, chemistry: Chemistry, nominal_capacity_ah: float) -> None:
        self.chemistry = chemistry
        self.nominal_capacity_ah = nominal_capacity_ah
        self.ah_counter = 0.0  # measured (not offset-corrected) charge since start [Ah]
        # Variance of that integral [Ah²] since the last anchor, and since start: the gain
        # error and what sampling misses.
        self.ah_sigma2 = 0.0
        self.counter_var_ah2 = 0.0
        self.chain = 0.0  # increments where the counter lost charge (a gap, a restart)
        self._rest_v = math.nan  # rested voltage, averaged over the settled part of this rest
        # This rest's settled sample: (averaged voltage V, counter Ah, its variance since
        # start Ah², time s, chain).
        self.settled_rest: tuple[float, float, float, float, float] | None = None
        self._pending: FloatArray | None = None  # the anchor this rest will give
        self.anchors: FloatArray = np.zeros((0, 6))
        self.capacity_ah = math.nan
        self.capacity_sigma_ah = math.nan
        self.offset_a = math.nan  # the offset b of the last fit [A], reads high by this
        self.offset_sigma_a = math.nan
        self.offset_learned = False  # the last fit pinned b from the anchors alone
        self.history: FloatArray = np.zeros((0, 3))  # ts_s, equivalent full cycles, capacity Ah

    def integrate(self, current_a: float, dt_s: float, sampling_sigma_as: float) -> None:
        """Add ``dt_s`` of measured current [A], offset included, to the charge counter;
        ``sampling_sigma_as`` is what the polls' sampling of the current leaves unknown of
        that charge [A·s] (:func:`~bess_edge.diagnostics.soc.sampled_charge_sigma_as`)."""
        if not (math.isfinite(current_a) and dt_s > 0):
            return
        eta = self.chemistry.coulombic_efficiency if current_a > 0 else 1.0
        self.ah_counter += eta * current_a * dt_s / 3600.0
        var = (CURRENT_GAIN_ERROR * current_a * dt_s / 3600.0) ** 2 + (
            sampling_sigma_as / 3600.0
        ) ** 2
        self.ah_sigma2 += var
        self.counter_var_ah2 += var

    def break_chain(self) -> None:
        """Charge went uncounted (a long gap, a restart): later anchors start a new chain."""
        self.chain += 1.0
        self._pending = None
        self._rest_v, self.settled_rest = math.nan, None

    def observe_rest(self, rested_voltage_v: float, dt_s: float, ts_s: float) -> None:
        """Note a settled resting poll: the mean cell voltage [V] is taken as the OCV."""
        if not math.isfinite(rested_voltage_v):
            return
        if math.isfinite(self._rest_v):
            alpha = min(1.0, max(dt_s, 0.0) / REST_AVERAGE_S)
            self._rest_v += alpha * (rested_voltage_v - self._rest_v)
        else:
            self._rest_v = rested_voltage_v
        self.settled_rest = (
            self._rest_v, self.ah_counter, self.counter_var_ah2, ts_s, self.chain
        )  # fmt: skip
        soc = float(self.chemistry.soc_from_ocv(self._rest_v))
        slope = float(self.chemistry.docv_dsoc(soc))
        error_v = math.hypot(OCV_MODEL_ERROR_V, float(ocv_table_error_v(self.chemistry, soc)))
        if slope <= 0 or error_v / slope > MAX_ANCHOR_SIGMA_PCT:
            self._pending = None
            return
        sigma_pct = error_v / slope
        self._pending = np.array(
            [soc, sigma_pct**2, self.ah_counter, self.ah_sigma2, ts_s, self.chain]
        )

    def end_rest(
        self,
        ts_s: float,
        equivalent_full_cycles: float,
        offset_a: float = 0.0,
        offset_sigma_a: float = math.inf,
    ) -> bool:
        """The rest is over: its last settled sample becomes an anchor. True if Q was refitted.

        ``offset_a`` ± ``offset_sigma_a`` is what else is known of the current offset [A] (the
        SOC filter's estimate), the prior of the fit.
        """
        pending, self._pending = self._pending, None
        self._rest_v, self.settled_rest = math.nan, None
        if pending is None:
            return False
        self.anchors = np.vstack([self.anchors, pending])[-MAX_ANCHORS:]
        self.ah_sigma2 = 0.0
        chain = self.anchors[self.anchors[:, CHAIN] == pending[CHAIN]]
        if np.ptp(chain[:, SOC]) < MIN_SPAN_SOC_PCT:
            return False
        nominal = self.nominal_capacity_ah
        fit = fit_capacity_wtls(self.anchors, nominal, 0.0, INITIAL_BIAS_SIGMA_C * nominal)
        self.offset_learned = fit[3] < offset_sigma_a
        if not self.offset_learned:
            fit = fit_capacity_wtls(self.anchors, nominal, offset_a, offset_sigma_a)
        self.capacity_ah, self.offset_a, self.offset_sigma_a = fit[0], fit[2], fit[3]
        self.capacity_sigma_ah = with_gain_error(fit[0], fit[1])
        self.history = np.vstack([self.history, [ts_s, equivalent_full_cycles, self.capacity_ah]])[
            -MAX_HISTORY:
        ]
        return True

    def adopt(self, fit: LearnedOcv, ts_s: float, equivalent_full_cycles: float) -> None:
        """Take Q and b from the learned-OCV fit: it solved for them together with the curve
        that gives the anchors their SOC, which a fit on those SOCs alone would count twice."""
        self.capacity_ah = fit.capacity_ah
        self.capacity_sigma_ah = with_gain_error(fit.capacity_ah, fit.capacity_sigma_ah)
        self.offset_a, self.offset_sigma_a = fit.offset_a, fit.offset_sigma_a
        self.offset_learned = False  # its prior was the rests' offset, which the filter has
        row = np.array([ts_s, equivalent_full_cycles, fit.capacity_ah])
        if self.history.size and self.history[-1, 0] == ts_s:
            self.history[-1] = row
        else:
            self.history = np.vstack([self.history, row])[-MAX_HISTORY:]

    def state(self) -> dict[str, Any]:
        return {
            "scalars": np.array(
                [
                    self.ah_counter,
                    self.ah_sigma2,
                    self.capacity_ah,
                    self.capacity_sigma_ah,
                    self.chain,
                    self.offset_a,
                    self.offset_sigma_a,
                ]
            ),
            "anchors": self.anchors,
            "history": self.history,
        }

    def load(self, state: dict[str, Any]) -> None:
        scalars = [float(x) for x in state["scalars"]]
        self.ah_counter, self.ah_sigma2, self.capacity_ah, self.capacity_sigma_ah = scalars[:4]
        self.history = np.asarray(state["history"], dtype=np.float64).reshape(-1, 3)
        if "anchors" in state and len(scalars) == 7:
            self.chain, self.offset_a, self.offset_sigma_a = scalars[4:]
            self.anchors = np.asarray(state["anchors"], dtype=np.float64).reshape(-1, 6)
        # else: a blob from before anchors were kept (pairs of offset-corrected charge); the
        # capacity and its history carry over, the anchors start afresh.
        self._pending = None
        self._rest_v, self.settled_rest = math.nan, None


def with_gain_error(capacity_ah: float, fit_sigma_ah: float) -> float:
    """A fitted capacity's sigma [Ah] with the current sensor's gain error added. The gain
    scales every counted charge alike, so no number of anchors averages it away (the fits
    count it per poll, as noise), and a capacity in Ah carries it whole; SOC, counted with
    the same sensor, does not (accuracy benchmark, commissioned line: capacity truths at
    +2.5 % with a +1 % gain outside a 1.1 % sigma)."""
    return math.hypot(fit_sigma_ah, CURRENT_GAIN_ERROR * capacity_ah)


def fit_capacity_wtls(
    anchors: FloatArray,
    nominal_capacity_ah: float,
    offset_a: float = 0.0,
    offset_sigma_a: float = math.inf,
) -> tuple[float, float, float, float]:
    """Capacity [Ah] and the current offset [A] from anchors, each with its standard deviation
    (Q, σQ, b, σb), with ``offset_a`` ± ``offset_sigma_a`` [A] as the prior of the offset.

    ``anchors`` has the columns SOC %, its variance, charge counter Ah, its variance, time s and
    chain. For a given Q the cost is quadratic in the offset and in each chain's counter zero,
    so those are solved exactly (the counter zero by centring within each chain, the offset with
    its prior); the remaining one-dimensional cost in Q is minimised on a dense grid around the
    rated capacity and refined, and the standard deviation comes from its curvature. The
    offset's variance is its variance for the fitted Q plus what Q's uncertainty adds through
    the slope of the profiled offset.
    """
    nan = math.nan
    if anchors.shape[0] < 2:
        return nan, nan, nan, nan
    age = np.arange(anchors.shape[0])[::-1]
    weight = ANCHOR_FORGETTING**age
    x = anchors[:, SOC] / 100.0
    sx2 = anchors[:, SOC_VAR] / 100.0**2
    y = anchors[:, AH]
    sy2 = np.maximum(anchors[:, AH_VAR], 1e-12)
    hours = (anchors[:, TIME] - anchors[-1, TIME]) / 3600.0
    _, chain = np.unique(anchors[:, CHAIN], return_inverse=True)
    member = np.eye(int(chain.max()) + 1)[chain]  # anchors x chains, one-hot
    prior_info = 1.0 / max(offset_sigma_a, 1e-9) ** 2  # 0 without a prior

    def profile(q: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        q = q[:, None]
        w = weight / (sy2 + q**2 * sx2)  # grid x anchors
        u = y - q * x
        # Centre u and t within each chain with the weights: that removes each chain's zero c.
        wsum = w @ member
        u_c = u - ((w * u) @ member / wsum) @ member.T
        t_c = hours - ((w * hours) @ member / wsum) @ member.T
        b_info = np.sum(w * t_c**2, axis=1) + prior_info
        b = (np.sum(w * u_c * t_c, axis=1) + prior_info * offset_a) / b_info
        residual = u_c - b[:, None] * t_c
        return np.sum(w * residual**2, axis=1) + prior_info * (b - offset_a) ** 2, b, b_info

    grid = nominal_capacity_ah * np.linspace(0.3, 1.5, 1201)
    best = grid[np.argmin(profile(grid)[0])]
    step = grid[1] - grid[0]
    fine = np.linspace(best - step, best + step, 201)
    q = float(fine[int(np.argmin(profile(fine)[0]))])
    h = max(1e-3 * q, 1e-9)
    values, offsets, b_info = profile(np.array([q - h, q, q + h]))
    curvature = float(np.diff(values, n=2)[0]) / h**2
    # Cost is Σ r²/σ², so half its curvature is the Fisher information of Q (b profiled out).
    if not curvature > 0:
        return q, nan, float(offsets[1]), nan
    sigma_q = math.sqrt(2.0 / curvature)
    db_dq = float(offsets[2] - offsets[0]) / (2.0 * h)
    sigma_b = math.sqrt(1.0 / float(b_info[1]) + (db_dq * sigma_q) ** 2)
    return q, sigma_q, float(offsets[1]), sigma_b


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
