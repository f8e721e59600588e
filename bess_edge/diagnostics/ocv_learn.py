"""The cell's own OCV curve, learned on the device from settled rests and full-charge anchors.

A preset curve is a published cell's; the cell on site differs by tens of mV, a bias that
averaging cannot remove and that keeps SOC and capacity from converging. The rests measure the
cell's curve, but only against a SOC scale that itself depends on the unknowns: the charge
counter between rests holds the capacity ``Q``, the sensor's offset ``b`` and an unknown zero
``c`` per chain of uninterrupted counting, and what the counter missed since the chain's
previous rest, ``w_j`` (a random walk: the polls' sampling of a moving current, the gain
error). So the curve, Q, b, the zeros and the steps are fitted jointly (SOC ``s`` in %,
counter ``A`` in Ah, time ``h`` in hours since the newest rest):

    s_k = 100 (A_k - b h_k - c_chain - sum of w_j, j <= k) / Q
    V_k = preset(s_k) + d(s_k) + e_k         settled rest k, e_k the rest's model error
    100 = 100 (A_f - b h_f - c_chain - ...) / Q    a calibration charge: upper limit, CV taper
    w_j ~ N(0, the counter's variance gathered between rest j-1 and rest j)

``d`` is a correction, piecewise linear on the preset's own knots, with the preset's table error
as its prior (widened where the curve is steep, since there the error is a shift of the curve
in SOC), and a smoothness prior on its change of slope; Q's prior is the label with its 10 %,
b's the offset the rests measured. Regularised Gauss-Newton (Levenberg-damped) finds the most
probable set; its posterior covariance says how well each knot of the curve is known, which
is what the SOC filter and the capacity anchors then count with instead of a constant (the
covariance leaves the preset's SOC scale open: without the empty end Q is known only as well
as its label, see _posterior_covariance). Any
curve can be fitted this way (no library of cells is assumed), and with no rest near a knot
its uncertainty stays the prior's.

The fit runs at the end of a rest (a few ms: a dozen knots, a few chains), never per poll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.soc import ocv_table_error_v
from bess_edge.model import FloatArray

# Rest columns: rested voltage V, charge counter Ah, the variance the counter gathered since
# the chain's previous rest Ah² (0 for a chain's first), time s, chain.
V, AH, AH_VAR, TIME, CHAIN = range(5)
# Anchor columns: SOC %, its variance, charge counter Ah, time s, chain.
A_SOC, A_SOC_VAR, A_AH, A_TIME, A_CHAIN = range(5)
# A settled rest's voltage is the OCV to within this [V]: the residual relaxation after
# 30 min, the cell monitor's 1 mV and the 1-RC model's misfit (as OCV_MODEL_ERROR_V in soc.py).
REST_ERROR_V = 0.004
# Where the preset is steep its error is a shift of the curve along SOC rather than in volts:
# the prior of each knot is the table error or this shift times the local slope, the larger.
PRIOR_SHIFT_PCT = 5.0
# Smoothness: the correction's slope may change between neighbouring segments by this [V/%]
# (1 sigma), plus a share of the preset's own change of slope there: the cells of the accuracy
# benchmark differ from their presets by corrections whose slope changes by a few mV/% over
# 10 % of SOC, and by more at the knees, where a knee at another SOC bends the difference.
CURVATURE_SIGMA_V_PER_PCT = 0.002
CURVATURE_SHARE = 0.5
MAX_ITERATIONS = 40
# The preset's SOC scale (where its 0 % lies against its 100 %) as one more unknown of the
# covariance: 1 sigma of a stretch [fraction]. Wide enough to say nothing a label does not:
# electrode balances differ between cell designs by tens of % of the window, and the label's
# 10 % is then what holds Q along the direction the rests cannot see.
SCALE_PRIOR_REL = 0.5


@dataclass(frozen=True)
class LearnedOcv:
    """A fitted curve on the preset's knots with its posterior, and the counter's unknowns."""

    soc_pct: FloatArray
    ocv_v: FloatArray
    sigma_v: FloatArray  # posterior 1-sigma of the curve at each knot
    residual_v: float  # RMS of the rests around the curve
    capacity_ah: float
    capacity_sigma_ah: float
    offset_a: float
    offset_sigma_a: float
    rests: int


def knot_prior_sigma_v(soc_pct: FloatArray, ocv_v: FloatArray, table_error_v: float) -> FloatArray:
    """Prior sigma [V] of each knot of a preset: its table error, or a shift of
    PRIOR_SHIFT_PCT along SOC at the local slope where that is larger."""
    slopes = np.abs(np.diff(ocv_v) / np.diff(soc_pct))
    local = np.maximum(np.concatenate([slopes[:1], slopes]), np.concatenate([slopes, slopes[-1:]]))
    return np.hypot(table_error_v, PRIOR_SHIFT_PCT * local)


class OcvProblem:
    """The joint fit's data and priors (rests and anchors in the columns above, Q's and b's
    (value, sigma)); its residuals and Jacobian, whitened (each residual in its sigmas)."""

    def __init__(
        self,
        knots: FloatArray,
        prior_ocv: FloatArray,
        prior_sigma: FloatArray,
        rests: FloatArray,
        anchors: FloatArray,
        q_prior: tuple[float, float],
        b_prior: tuple[float, float],
    ) -> None:
        self.knots, self.ocv0, self.sigma0 = knots, prior_ocv, prior_sigma
        self.k = knots.size
        self.dk = np.diff(knots)
        t_ref = float(np.max(np.concatenate([rests[:, TIME], anchors[:, A_TIME]])))
        chains, index = np.unique(
            np.concatenate([rests[:, CHAIN], anchors[:, A_CHAIN]]), return_inverse=True
        )
        self.chains = chains.size
        self.rest_chain, self.anchor_chain = index[: rests.shape[0]], index[rests.shape[0] :]
        self.v, self.ah = rests[:, V], rests[:, AH]
        self.hours = (rests[:, TIME] - t_ref) / 3600.0
        self.a_soc, self.a_sigma = anchors[:, A_SOC], np.sqrt(anchors[:, A_SOC_VAR])
        self.a_ah, self.a_hours = anchors[:, A_AH], (anchors[:, A_TIME] - t_ref) / 3600.0
        self.q0, self.q_sigma = q_prior
        self.b0, self.b_sigma = b_prior
        # The counter's error is a random walk along each chain (what the polls missed of a
        # moving current adds up): each rest's step since the one before is an unknown of its
        # own, and a rest's counter carries every step before it, an anchor every step of a
        # rest before it. Counted as one independent error per rest instead, two rests an hour
        # apart after a night of regulation could each slide by that night's 2-3 points of
        # SOC, and the fit slid them rather than bend the curve to them.
        stepped = np.flatnonzero(rests[:, AH_VAR] > 0.0)
        self.step_sigma = np.sqrt(rests[stepped, AH_VAR])
        same = self.rest_chain[:, None] == self.rest_chain[None, stepped]
        step_time = rests[None, stepped, TIME]
        self.rest_steps = (same & (rests[:, TIME][:, None] >= step_time)) * 1.0
        same = self.anchor_chain[:, None] == self.rest_chain[None, stepped]
        self.anchor_steps = (same & (anchors[:, A_TIME][:, None] >= step_time)) * 1.0
        self.zeros = slice(self.k + 2, self.k + 2 + self.chains)
        self.steps = slice(self.zeros.stop, self.zeros.stop + stepped.size)
        self.n = self.steps.stop
        # Change of slope between neighbouring segments, as a matrix on d.
        curv = np.zeros((max(self.k - 2, 0), self.k))
        for j in range(self.k - 2):
            curv[j, j] = 1.0 / self.dk[j]
            curv[j, j + 1] = -1.0 / self.dk[j] - 1.0 / self.dk[j + 1]
            curv[j, j + 2] = 1.0 / self.dk[j + 1]
        bend = np.abs(curv @ prior_ocv)
        self.curv = curv / np.hypot(CURVATURE_SIGMA_V_PER_PCT, CURVATURE_SHARE * bend)[:, None]
        # The priors' rows are linear in the parameters: their Jacobian is built once, here.
        k, n = self.k, self.n
        prior = np.zeros((k, n))
        prior[:, :k] = np.diag(1.0 / self.sigma0)
        smooth = np.zeros((self.curv.shape[0], n))
        smooth[:, :k] = self.curv
        scalar = np.zeros((2, n))
        scalar[0, k], scalar[1, k + 1] = 1.0 / self.q_sigma, 1.0 / self.b_sigma
        steps = np.zeros((self.step_sigma.size, n))
        steps[:, self.steps] = np.diag(1.0 / self.step_sigma)
        self.prior_jac = np.vstack([prior, smooth, scalar, steps])

    def initial(self) -> FloatArray:
        """d = 0, Q and b at their priors, each chain's zero from the preset's SOC, no steps."""
        theta = np.zeros(self.n)
        theta[self.k], theta[self.k + 1] = self.q0, self.b0
        soc = np.interp(self.v, self.ocv0, self.knots)
        zero_r = self.ah - self.b0 * self.hours - self.q0 * soc / 100.0
        zero_a = self.a_ah - self.b0 * self.a_hours - self.q0 * self.a_soc / 100.0
        for c in range(self.chains):
            from_anchor = zero_a[self.anchor_chain == c]
            values = from_anchor if from_anchor.size else zero_r[self.rest_chain == c]
            theta[self.k + 2 + c] = float(np.median(values))
        return theta

    def curve(
        self, theta: FloatArray, soc: FloatArray
    ) -> tuple[FloatArray, FloatArray, Any, FloatArray]:
        """g(s), its slope, the segment index and the weight of its upper knot (linear
        extrapolation beyond the ends, so the derivatives stay valid there)."""
        table = self.ocv0 + theta[: self.k]
        idx = np.clip(np.searchsorted(self.knots, soc, side="right") - 1, 0, self.k - 2)
        w = (soc - self.knots[idx]) / self.dk[idx]
        slope = (table[idx + 1] - table[idx]) / self.dk[idx]
        return table[idx] + slope * (soc - self.knots[idx]), slope, idx, w

    def _soc(
        self, theta: FloatArray, ah: FloatArray, hours: FloatArray, chain: Any, steps: FloatArray
    ) -> FloatArray:
        """SOC [%] on the fit's scale of counter readings ``ah`` [Ah]: the counter less the
        offset over ``hours``, its chain's zero and the walk's ``steps`` before it."""
        walk = steps @ theta[self.steps]
        zero = theta[self.zeros][chain]
        return 100.0 * (ah - theta[self.k + 1] * hours - zero - walk) / theta[self.k]

    def _soc_jacobian(
        self, soc: FloatArray, hours: FloatArray, chain: Any, steps: FloatArray, q: float
    ) -> FloatArray:
        """d SOC / d (Q, b, zeros, steps) of :meth:`_soc`'s readings; zero elsewhere."""
        jac = np.zeros((soc.size, self.n))
        jac[:, self.k] = -soc / q
        jac[:, self.k + 1] = -100.0 * hours / q
        jac[np.arange(soc.size), self.zeros.start + chain] = -100.0 / q
        jac[:, self.steps] = (-100.0 / q) * steps
        return jac

    def residuals(self, theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        k = self.k
        q, b = theta[k], theta[k + 1]
        soc = self._soc(theta, self.ah, self.hours, self.rest_chain, self.rest_steps)
        g, slope, idx, w = self.curve(theta, soc)
        rows = [(self.v - g) / REST_ERROR_V]
        ds = -slope / REST_ERROR_V  # d r / d s
        jac = ds[:, None] * self._soc_jacobian(soc, self.hours, self.rest_chain, self.rest_steps, q)
        jac[np.arange(soc.size), idx] = -(1.0 - w) / REST_ERROR_V
        jac[np.arange(soc.size), idx + 1] = -w / REST_ERROR_V
        jacs = [jac]
        a_soc = self._soc(theta, self.a_ah, self.a_hours, self.anchor_chain, self.anchor_steps)
        rows.append((a_soc - self.a_soc) / self.a_sigma)
        ja = self._soc_jacobian(a_soc, self.a_hours, self.anchor_chain, self.anchor_steps, q)
        jacs.append(ja / self.a_sigma[:, None])
        d = theta[:k]
        rows += [d / self.sigma0, self.curv @ d]
        rows.append(np.array([(q - self.q0) / self.q_sigma, (b - self.b0) / self.b_sigma]))
        rows.append(theta[self.steps] / self.step_sigma)
        jacs.append(self.prior_jac)
        return np.concatenate(rows), np.vstack(jacs)


def _posterior_covariance(
    problem: OcvProblem, theta: FloatArray, jac: FloatArray, rest_scale: float
) -> FloatArray:
    """Posterior covariance of (curve correction, Q, b, zeros) at the fit, with the preset's
    scale left open and the rests' sigma times ``sqrt(rest_scale)``.

    The knots' prior is independent per knot, but a preset's error is not: a cell whose
    electrodes are balanced differently has the preset's curve stretched along SOC, the same
    way at every knot. Against the counter, a stretch about the full end and a capacity larger
    by the same factor predict the same rests; only a discharge to the lower limit (or rests
    reaching the empty knee) tells them apart. A dozen independent knot priors would each
    penalise the stretch, and together pin Q to a few % from the preset's shape alone, which is
    what the cell does not follow (a 190 mV different low end). So the covariance is taken
    with that stretch as one more unknown ``e`` of wide prior (SCALE_PRIOR_REL): the cell's
    SOC ``s`` reads the curve at ``100 - (100 - s)(1 + e)``, which adds ``-g'(s)(100 - s) e``
    at each knot. Along what the data cannot see, Q is then known as well as its label
    allows; where rests or limit anchors see both ends, they pin ``e`` and Q with it. The
    curve's covariance carries the stretch too: at SOC ``s`` it is the curve's uncertainty
    from a scale known to ``σ_Q/Q``, (100 - s) σ_Q/Q points of SOC, which is what the SOC
    filters' floor then counts with. The fit itself (the most probable set) is unchanged."""
    k = problem.k
    rests = problem.v.size
    mode = -np.gradient(problem.ocv0 + theta[:k], problem.knots) * (100.0 - problem.knots)
    # A rest reads the stretched curve at s - (100 - s) e: its column is d r/d s times
    # -(100 - s), which is Q's and its chain's zero's columns combined (each is d r/d s times
    # -s/Q and -100/Q). Built from the knots' mode instead, the piecewise-linear table would
    # let the rests tell a stretch from a capacity by its kinks, which no cell says.
    column = np.zeros((jac.shape[0], 1))
    q = theta[k]
    column[:rests, 0] = q * (jac[:rests, problem.zeros].sum(axis=1) - jac[:rests, k])
    augmented = np.hstack([jac, column])
    augmented[:rests] /= math.sqrt(rest_scale)
    hess = augmented.T @ augmented
    hess[-1, -1] += 1.0 / SCALE_PRIOR_REL**2
    full = np.linalg.inv(hess)
    # Back to the curve (d + e·mode), Q, b and the zeros.
    to_curve = np.hstack([np.eye(problem.n), np.zeros((problem.n, 1))])
    to_curve[:k, -1] = mode
    cov: FloatArray = to_curve @ full @ to_curve.T
    return cov


def fit_learned_ocv(problem: OcvProblem) -> LearnedOcv | None:
    """The most probable curve, Q and b given the problem's rests, anchors and priors; None if
    the data cannot carry a fit (fewer than two rests)."""
    if problem.v.size < 2:
        return None
    theta = problem.initial()
    r, jac = problem.residuals(theta)
    cost, damping = float(r @ r), 1e-3
    for _ in range(MAX_ITERATIONS):
        hess, grad = jac.T @ jac, jac.T @ r
        step = np.linalg.solve(hess + damping * np.diag(np.diag(hess) + 1e-12), -grad)
        trial = theta + step
        if not trial[problem.k] > 0.1 * problem.q0:
            damping *= 10.0
            continue
        r_new, jac_new = problem.residuals(trial)
        cost_new = float(r_new @ r_new)
        if cost_new <= cost:
            theta, r, jac = trial, r_new, jac_new
            done = cost - cost_new < 1e-9 * max(cost, 1.0)
            cost, damping = cost_new, max(damping / 3.0, 1e-9)
            if done:
                break
        else:
            damping *= 5.0
            if damping > 1e8:
                break
    k = problem.k
    q = float(theta[k])
    # Rests scattered wider than a settled rest's error mean the model misses something (a
    # curve the correction cannot follow, hysteresis, a counter that lost charge): the rests'
    # sigma widens by the ratio (Birge). Only the rests': what they do not see (Q along the
    # preset's stretch, a knot no rest reached) stays as well known as its prior says, never
    # worse.
    rest_ms = float(np.mean(r[: problem.v.size] ** 2))  # the rests' misfit over REST_ERROR_V, ²
    misfit_rms = REST_ERROR_V * math.sqrt(rest_ms)
    rest_scale = max(1.0, rest_ms)
    try:
        cov = _posterior_covariance(problem, theta, jac, rest_scale)
    except np.linalg.LinAlgError:
        return None
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return LearnedOcv(
        soc_pct=problem.knots.copy(),
        ocv_v=problem.ocv0 + theta[:k],
        sigma_v=sd[:k],
        residual_v=misfit_rms,
        capacity_ah=q,
        capacity_sigma_ah=float(sd[k]),
        offset_a=float(theta[k + 1]),
        offset_sigma_a=float(sd[k + 1]),
        rests=int(problem.v.size),
    )


# A charge has reached full when it tapers (at most C/10, a CV phase or a BMS's last steps)
# within 30 mV of the upper voltage limit; a discharge at C/10 (as a sensor reads it, see
# EMPTY_MAX_C) within 0.1 V of the lower limit has reached empty (the empty knee is steeper:
# 40-70 mV per % on the presets). The counter there is 100 % SOC less what the taper had
# still to take (0 % at empty), to within the sigma: a BMS ends its taper between C/20 and
# C/50, 98.5-100 % of a cell's capacity.
LIMIT_TAPER_C = 0.1
# Full is where the OCV reaches the charge limit: a CV taper ended at I has I*tau still to go,
# tau its decay time (at a held voltage the current falls as exp(-t/tau), tau = R*Q/(dOCV/dQ)).
# tau is read off the taper's own decay once the current has fallen by a quarter; the charge
# left is capped at TAPER_MAX_LEFT_PCT (a BMS stepping its current down is no exponential).
TAPER_MIN_DECAY = 1.25
TAPER_MAX_LEFT_PCT = 3.0
FULL_MARGIN_V = 0.03
EMPTY_MARGIN_V = 0.1
# A taper's current falls through C/10, so that gate is crossed whatever the sensor; a BMS's
# calibration discharge sits at its set current, commonly C/10 of the label, which a sensor
# with a 1 % gain error and 0.3 % of 1C noise reads up to 0.115C (3 sigma): the gate at C/10
# took it or not by the noise (accuracy benchmark, nmc-msmr: 0.101C at 2.815 V, no anchor).
EMPTY_MAX_C = 0.115
LIMIT_SOC_SIGMA_PCT = 1.5
# Charging, not a rest read through an offset: at least this [fraction of 1C] after the offset.
LIMIT_MIN_C = 0.01
# A cell's own limit is not its preset's (an LFP cell held at 3.6 V under a 3.65-V preset): a
# CV hold is also recognised as a voltage held flat while the charge current decays by ten
# times its noise (0.003C) to the taper, in the top of the preset's curve (at rest,
# HOLD_BAND_SOC_PCT or more on the preset). Flat: two readings of one voltage by a cell monitor
# with 1 mV of noise and 1-mV steps differ by up to ~7 mV (4 sigma of a difference, a step).
# A slow charge or a rest read through an offset keeps its current; a CC charge there keeps
# raising the voltage.
HOLD_FLAT_V = 0.008
HOLD_DECAY_C = 0.03
HOLD_BAND_SOC_PCT = 98.0
# The curve replaces the preset once this many settled rests are in the fit.
MIN_RESTS = 3
# About a month of daily cycling: the curve and Q move slowly with ageing, so old rests go.
MAX_RESTS = 120
MAX_ANCHORS = 30
SCHEMA = 1  # of the learner's saved state; a learned curve also counts its revisions


class Taper:
    """A CV taper's current, fitted as I0*exp(-t/tau) by least squares on log current (a few
    sums a poll): the charge it has still to take before the OCV reaches the held voltage."""

    def __init__(self, ts_s: float) -> None:
        self.t0_s, self.span_s = ts_s, 0.0
        self.sums = np.zeros(5)  # n, t, t^2, ln I, t*ln I (t from t0_s)

    def add(self, ts_s: float, current_a: float) -> None:
        t, y = ts_s - self.t0_s, math.log(current_a)
        self.sums += (1.0, t, t * t, y, t * y)
        self.span_s = t

    def state(self) -> FloatArray:
        return np.concatenate([[self.t0_s, self.span_s], self.sums])

    @classmethod
    def from_state(cls, values: FloatArray) -> Taper:
        taper = cls(float(values[0]))
        taper.span_s, taper.sums = float(values[1]), np.array(values[2:], dtype=np.float64)
        return taper

    def left_pct(self, capacity_ah: float) -> float:
        """Charge still to go [% of ``capacity_ah``] at the last poll: 0 before the fit has
        decayed by TAPER_MIN_DECAY (a CC charge near the limit, a taper too short to read)."""
        n, st, stt, sy, sty = self.sums
        spread = n * stt - st * st
        if n < 3 or spread <= 0.0:
            return 0.0
        slope = (n * sty - st * sy) / spread  # -1/tau
        if -slope * self.span_s < math.log(TAPER_MIN_DECAY):
            return 0.0
        current_a = math.exp((sy - slope * st) / n + slope * self.span_s)
        return min(100.0 * current_a / -slope / 3600.0 / capacity_ah, TAPER_MAX_LEFT_PCT)


def _triple(values: Any) -> tuple[float, float, float] | None:
    """A saved (a, b, c) of the hold tracker, None if it was not saved or held nothing."""
    x = np.asarray(values if values is not None else (), dtype=np.float64).ravel()
    return (float(x[0]), float(x[1]), float(x[2])) if x.size == 3 else None


class OcvLearner:
    """Collects settled rests and limit anchors; refits the curve, Q and b at each rest end."""

    def __init__(self, preset: Chemistry) -> None:
        self.preset = preset
        self.knots = np.asarray(preset.ocv_soc_pct, dtype=np.float64)
        self.prior_ocv = np.asarray(preset.ocv_v, dtype=np.float64)
        self.prior_sigma = knot_prior_sigma_v(
            self.knots, self.prior_ocv, float(ocv_table_error_v(preset))
        )
        self.rests: FloatArray = np.zeros((0, 5))
        self.anchors: FloatArray = np.zeros((0, 5))
        self.fit: LearnedOcv | None = None
        self.revision = 0  # how many times the curve was refitted
        self._limit: FloatArray | None = None  # the newest limit sample of this charge
        self._taper: Taper | None = None  # this charge's taper so far
        # A hold's lowest and highest voltage and highest current; the poll before this one.
        self._hold: tuple[float, float, float] | None = None
        self._last_poll: tuple[float, float, float] | None = None
        self.hold_band_v = float(np.interp(HOLD_BAND_SOC_PCT, self.knots, self.prior_ocv))
        self._last_rest: tuple[float, float] | None = None  # chain, counter variance there

    def observe(
        self,
        corrected_current_a: float,
        voltage_v: float,
        counter_ah: float,
        ts_s: float,
        chain: float,
        capacity_ah: float,
    ) -> None:
        """One poll (a few comparisons): note the counter where a taper meets a limit."""
        held = self._held(corrected_current_a, voltage_v, capacity_ah)
        amps = abs(corrected_current_a)
        taper, self._taper = self._taper, None
        if amps < LIMIT_MIN_C * capacity_ah:
            return
        chem = self.preset
        near_max = voltage_v >= chem.cell_voltage_max_v - FULL_MARGIN_V
        charging = corrected_current_a > 0 and amps <= LIMIT_TAPER_C * capacity_ah
        if charging and (near_max or held):
            self._taper = taper = taper or Taper(ts_s)
            taper.add(ts_s, corrected_current_a)
            soc = 100.0 - taper.left_pct(capacity_ah)
        elif (
            corrected_current_a < 0
            and amps <= EMPTY_MAX_C * capacity_ah
            and voltage_v <= chem.cell_voltage_min_v + EMPTY_MARGIN_V
        ):
            soc = 0.0
        else:
            return
        self._limit = np.array([soc, LIMIT_SOC_SIGMA_PCT**2, counter_ah, ts_s, chain])

    def _held(self, corrected_current_a: float, voltage_v: float, capacity_ah: float) -> bool:
        """Whether this poll ends a CV hold's decay in the preset's top band (see HOLD_*): the
        polls since the hold began span at most HOLD_FLAT_V, and the current fell from their
        highest. A poll outside the span starts a new hold with the poll before it where the
        two are within it (the CC phase's last poll, still rising, drops out)."""
        poll = (voltage_v, voltage_v, corrected_current_a)
        last, self._last_poll = self._last_poll, poll
        charging = corrected_current_a >= LIMIT_MIN_C * capacity_ah
        if not (charging and voltage_v >= self.hold_band_v):
            self._hold, self._last_poll = None, None
            return False
        hold = self._hold
        if hold is not None and max(hold[1], voltage_v) - min(hold[0], voltage_v) <= HOLD_FLAT_V:
            hold = (min(hold[0], voltage_v), max(hold[1], voltage_v), max(hold[2], poll[2]))
        elif last is not None and abs(last[0] - voltage_v) <= HOLD_FLAT_V:
            hold = (min(last[0], voltage_v), max(last[0], voltage_v), max(last[2], poll[2]))
        else:
            hold = poll
        self._hold = hold
        return hold[2] - corrected_current_a >= HOLD_DECAY_C * capacity_ah

    def end_rest(
        self,
        rest: tuple[float, float, float, float, float] | None,
        q_prior: tuple[float, float],
        b_prior: tuple[float, float],
    ) -> bool:
        """A rest ended; ``rest`` is its settled (voltage V, counter Ah, the counter's variance
        since start Ah², time s, chain) or None. Refits with Q's and b's priors (value, sigma);
        True if a new curve was fitted."""
        new = False
        if self._limit is not None:
            self.anchors = np.vstack([self.anchors, self._limit])[-MAX_ANCHORS:]
            self._limit, new = None, True
        if rest is not None and all(math.isfinite(x) for x in rest):
            v, ah, var, ts, chain = rest
            last, self._last_rest = self._last_rest, (chain, var)
            row = [v, ah, var - last[1] if last and last[0] == chain else 0.0, ts, chain]
            self.rests = np.vstack([self.rests, row])[-MAX_RESTS:]
            new = True
        if not new or self.rests.shape[0] < MIN_RESTS:
            return False
        fit = fit_learned_ocv(
            OcvProblem(self.knots, self.prior_ocv, self.prior_sigma, self.rests, self.anchors,
                       q_prior, b_prior)
        )  # fmt: skip
        if fit is None or not (np.isfinite(fit.ocv_v).all() and np.isfinite(fit.sigma_v).all()):
            return False
        self.fit, self.revision = fit, self.revision + 1
        return True

    def chemistry(self) -> Chemistry | None:
        """The preset with the learned curve and its sigma (None before a fit, or if the fit
        is not a usable table)."""
        if self.fit is None:
            return None
        # Strictly rising (a plateau's knots may swap within their noise): a µV per knot.
        ocv = np.maximum.accumulate(self.fit.ocv_v + np.arange(self.knots.size) * 1e-6)
        try:
            return self.preset.with_ocv_table(self.knots, ocv, "learned", self.fit.sigma_v)
        except ValueError:
            return None

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": np.array([SCHEMA, self.revision]),
            "rests": self.rests,
            "anchors": self.anchors,
            "limit": np.zeros((0, 5)) if self._limit is None else self._limit[None, :],
            # A restart in the middle of a CV hold goes on reading it (empty: none).
            "taper": np.zeros(0) if self._taper is None else self._taper.state(),
            "hold": np.array(self._hold if self._hold is not None else ()),
            "last_poll": np.array(self._last_poll if self._last_poll is not None else ()),
        }
        if self.fit is not None:
            f = self.fit
            out["curve"] = np.vstack([f.soc_pct, f.ocv_v, f.sigma_v])
            out["fit"] = np.array(
                [f.residual_v, f.capacity_ah, f.capacity_sigma_ah, f.offset_a,
                 f.offset_sigma_a, f.rests],
            )  # fmt: skip
        return out

    def load(self, state: dict[str, Any]) -> None:
        schema, revision = (int(x) for x in state["schema"])
        if schema != SCHEMA:
            raise ValueError(f"learned OCV state schema {schema}, expected {SCHEMA}")
        rests = np.asarray(state["rests"], dtype=np.float64).reshape(-1, 5)
        anchors = np.asarray(state["anchors"], dtype=np.float64).reshape(-1, 5)
        fit = None
        if "curve" in state:
            curve = np.asarray(state["curve"], dtype=np.float64)
            if curve.shape != (3, self.knots.size) or not np.allclose(curve[0], self.knots):
                raise ValueError("learned OCV curve is not on this preset's knots")
            r, q, q_sigma, b, b_sigma, n = (float(x) for x in state["fit"])
            fit = LearnedOcv(curve[0], curve[1], curve[2], r, q, q_sigma, b, b_sigma, int(n))
        self.rests, self.anchors, self.fit, self.revision = rests, anchors, fit, revision
        limit = np.asarray(state.get("limit", np.zeros((0, 5))), dtype=np.float64)
        self._limit = limit.reshape(5) if limit.size == 5 else None
        taper = np.asarray(state.get("taper", np.zeros(0)), dtype=np.float64).ravel()
        self._taper = Taper.from_state(taper) if taper.size == 7 else None
        self._hold, self._last_poll = (_triple(state.get(k)) for k in ("hold", "last_poll"))
        self._last_rest = None
