"""Electrode-level OCV model: which electrode windows a full-cell OCV curve is made of, and
how the cell lost capacity (lithium inventory or active material on either electrode).

A cell's OCV at SOC s (0..1) is the positive electrode's potential less the negative's, each
at a stoichiometry that moves linearly with s between its empty and full end:

    OCV(s) = U_p(y0 + (y100 - y0) s) - U_n(x0 + (x100 - x0) s)

Fitting x0, x100, y0, y100 to the curve (Levenberg-Marquardt, several starts, every library
pair the chemistry allows) gives the electrodes' capacities from the cell's capacity Q:
C_n = Q / (x100 - x0), C_p = Q / (y0 - y100), and the cyclable lithium
n_Li = C_n x100 + C_p y100. Against the same numbers of the fresh cell, their losses are the
degradation modes of Dubarry, Truchot, Liaw (J. Power Sources 219 (2012) 204) in the
quantified form of Birkl, Roberts, McTurk, Bruce, Howey (J. Power Sources 341 (2017) 373):
loss of lithium inventory (LLI) and loss of active material on the positive and negative
electrode (LAM_PE, LAM_NE).

The half-cell curves are a prior (``electrode_ocp.py``). A curve they cannot reproduce within
MAX_RESIDUAL_V is reported with its residual and no degradation modes (NaN): windows fitted
to the wrong materials would still give numbers, and they would be guesses.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.electrode_ocp import HalfCell, curves
from bess_edge.model import FloatArray

# A fit whose RMS residual is above this is no match: the library's curves are not this
# cell's (measured on PyBaMM's parameter sets, docs/diagnostics.md "Electrode model").
MAX_RESIDUAL_V = 0.010
# Each electrode's window spans at least this much of its stoichiometry: the PyBaMM cells use
# 59-88 % of each host, an electrode oversized 2.5 times is not built, and on a narrower window
# a smooth curve of one electrode can mimic almost any OCV shape while the other's stands still.
MIN_SPAN = 0.4
# A window within this of MIN_SPAN is the bound's doing, not the data's.
SPAN_MARGIN = 0.01
# Four windows fitted to few points leave a wrong pair room to match; below this many points
# known to MAX_RESIDUAL_V a fit is no match. Even 12 are not safe: the NMC preset's 12-point
# table (30-50 mV from Chen's LG M50 curve) is matched at 5.3 mV by Ecker's NCO on Kim's
# graphite, whatever cell it was read from. A judgement call, not fitted.
MIN_POINTS = 12
# Coarse grid of starting windows per pair; the best few are refined.
_GRID = np.array(
    list(
        itertools.product(
            (0.0, 0.03, 0.1, 0.2),  # x0
            (0.6, 0.75, 0.85, 0.95, 1.0),  # x100
            (0.7, 0.8, 0.9, 0.97, 1.0),  # y0
            (0.0, 0.05, 0.15, 0.3, 0.45, 0.6),  # y100
        )
    )
)
STARTS_PER_PAIR = 5
MAX_ITERATIONS = 60


@dataclass(frozen=True)
class ElectrodeWindows:
    """Fitted stoichiometric windows of one positive/negative pair."""

    positive: str  # library curve names
    negative: str
    x0: float  # negative electrode's lithium fraction at 0 % SOC
    x100: float  # ... at 100 % SOC
    y0: float  # positive electrode's lithium fraction at 0 % SOC
    y100: float
    covariance: FloatArray  # 4x4, of (x0, x100, y0, y100)
    residual_v: float  # RMS of the fit [V], weighted by 1/sigma² when sigma is given
    points: int  # points known to MAX_RESIDUAL_V or better: those that tell pairs apart

    @property
    def mismatch(self) -> str:
        """Why the windows mean nothing ("" when the pair matches the curve)."""
        if self.points < MIN_POINTS:
            return f"fewer than {MIN_POINTS} points known to {1000 * MAX_RESIDUAL_V:.0f} mV"
        if not (math.isfinite(self.residual_v) and self.residual_v <= MAX_RESIDUAL_V):
            return f"residual above {1000 * MAX_RESIDUAL_V:.0f} mV RMS"
        if min(self.x100 - self.x0, self.y0 - self.y100) <= MIN_SPAN + SPAN_MARGIN:
            return f"a window pressed against the narrowest span a cell has ({MIN_SPAN:g})"
        return ""

    @property
    def matched(self) -> bool:
        """The pair reproduces the curve with windows a real cell could have."""
        return not self.mismatch

    @property
    def params(self) -> FloatArray:
        return np.array([self.x0, self.x100, self.y0, self.y100])

    @classmethod
    def of(
        cls,
        positive: str,
        negative: str,
        params: FloatArray,
        covariance: FloatArray,
        residual_v: float,
        points: int,
    ) -> ElectrodeWindows:
        """From a (x0, x100, y0, y100) vector."""
        x0, x100, y0, y100 = (float(v) for v in params)
        cov = np.asarray(covariance, dtype=np.float64).reshape(4, 4)
        return cls(positive, negative, x0, x100, y0, y100, cov, float(residual_v), int(points))


@dataclass(frozen=True)
class DegradationModes:
    """Losses against the reference cell [%] with 1-sigma; NaN when not known."""

    lli_pct: float = math.nan
    lli_sigma_pct: float = math.nan
    lam_pe_pct: float = math.nan
    lam_pe_sigma_pct: float = math.nan
    lam_ne_pct: float = math.nan
    lam_ne_sigma_pct: float = math.nan


def full_cell_ocv(
    positive: HalfCell, negative: HalfCell, params: FloatArray, soc: FloatArray
) -> FloatArray:
    """OCV [V] at SOC fractions ``soc``; ``params`` (..., 4) broadcasts over windows."""
    p = np.asarray(params, dtype=np.float64)
    x0, x100, y0, y100 = (p[..., k, None] for k in range(4))
    return positive(y0 + (y100 - y0) * soc) - negative(x0 + (x100 - x0) * soc)


def fit_cell(
    chemistry: Chemistry, soc_pct: FloatArray, ocv_v: FloatArray, sigma_v: FloatArray | None = None
) -> ElectrodeWindows | None:
    """:func:`fit_windows` over every library pair of the chemistry's materials."""
    return fit_windows(
        soc_pct,
        ocv_v,
        curves(chemistry.positive_materials, "positive"),
        curves(chemistry.negative_materials, "negative"),
        sigma_v,
    )


def fit_windows(
    soc_pct: FloatArray,
    ocv_v: FloatArray,
    positives: list[HalfCell],
    negatives: list[HalfCell],
    sigma_v: FloatArray | None = None,
) -> ElectrodeWindows | None:
    """The best pair's windows for a full-cell OCV curve (None: no pair or too few points).

    Points are weighted by 1/sigma²; without sigma all alike. The covariance is the
    Gauss-Newton one, scaled by the reduced chi-square when the fit is worse than sigma says
    (so a model error widens it, never narrows it)."""
    soc = np.asarray(soc_pct, dtype=np.float64) / 100.0
    ocv = np.asarray(ocv_v, dtype=np.float64)
    sigma = np.ones_like(ocv) if sigma_v is None else np.asarray(sigma_v, dtype=np.float64)
    ok = np.isfinite(soc) & np.isfinite(ocv) & np.isfinite(sigma) & (sigma > 0)
    soc, ocv, sigma = soc[ok], ocv[ok], sigma[ok]
    if soc.size < 8 or not positives or not negatives:
        return None
    best: ElectrodeWindows | None = None
    best_cost = math.inf
    for pos, neg in itertools.product(positives, negatives):
        grid_cost = np.sum(((full_cell_ocv(pos, neg, _GRID, soc) - ocv) / sigma) ** 2, axis=1)
        for start in _GRID[np.argsort(grid_cost)[:STARTS_PER_PAIR]]:
            params, cost = _levenberg_marquardt(pos, neg, start, soc, ocv, sigma)
            if cost < best_cost:
                best_cost = cost
                best = _windows(pos, neg, params, soc, ocv, sigma, sigma_v is not None)
    return best


def _project(p: FloatArray) -> FloatArray:
    """Windows inside the host: 0 <= x0 < x100 <= 1, 0 <= y100 < y0 <= 1, spans >= MIN_SPAN."""
    x0, x100, y0, y100 = np.clip(p, 0.0, 1.0)
    x0 = min(x0, 1.0 - MIN_SPAN)
    x100 = max(x100, x0 + MIN_SPAN)
    y100 = min(y100, 1.0 - MIN_SPAN)
    y0 = max(y0, y100 + MIN_SPAN)
    return np.array([x0, x100, y0, y100])


def _jacobian(pos: HalfCell, neg: HalfCell, p: FloatArray, soc: FloatArray) -> FloatArray:
    x = p[0] + (p[1] - p[0]) * soc
    y = p[2] + (p[3] - p[2]) * soc
    dn, dp = neg.slope(x), pos.slope(y)
    return np.column_stack([-dn * (1 - soc), -dn * soc, dp * (1 - soc), dp * soc])


def _levenberg_marquardt(
    pos: HalfCell,
    neg: HalfCell,
    start: FloatArray,
    soc: FloatArray,
    ocv: FloatArray,
    sigma: FloatArray,
) -> tuple[FloatArray, float]:
    """Least squares from ``start``, steps projected into the hosts (Marquardt's damping)."""
    p = _project(start)
    r = (full_cell_ocv(pos, neg, p, soc) - ocv) / sigma
    cost = float(r @ r)
    lam = 1e-3
    for _ in range(MAX_ITERATIONS):
        j = _jacobian(pos, neg, p, soc) / sigma[:, None]
        jtj, jtr = j.T @ j, j.T @ r
        improved = False
        while lam < 1e8:
            a = jtj + lam * np.diag(np.diag(jtj) + 1e-12)
            try:
                step = np.linalg.solve(a, -jtr)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            trial = _project(p + step)
            r_trial = (full_cell_ocv(pos, neg, trial, soc) - ocv) / sigma
            cost_trial = float(r_trial @ r_trial)
            if cost_trial < cost:
                converged = cost - cost_trial < 1e-10 * max(cost, 1e-30)
                p, r, cost, lam, improved = trial, r_trial, cost_trial, lam * 0.3, True
                if converged:
                    return p, cost
                break
            lam *= 10.0
        if not improved:
            break
    return p, cost


def _windows(
    pos: HalfCell,
    neg: HalfCell,
    p: FloatArray,
    soc: FloatArray,
    ocv: FloatArray,
    sigma: FloatArray,
    sigma_given: bool,
) -> ElectrodeWindows:
    residual = full_cell_ocv(pos, neg, p, soc) - ocv
    chi2 = float(np.sum((residual / sigma) ** 2))
    dof = max(soc.size - 4, 1)
    j = _jacobian(pos, neg, p, soc) / sigma[:, None]
    # Without sigma the residual is the only scale there is; with it, never below sigma.
    scale = chi2 / dof if not sigma_given else max(1.0, chi2 / dof)
    covariance = np.asarray(np.linalg.pinv(j.T @ j) * scale, dtype=np.float64)
    # Weighted: points whose sigma is wide (a learned curve's knots far from any rest) neither
    # make nor break a match.
    weight = sigma**-2.0
    rms = float(np.sqrt(np.sum(weight * residual**2) / np.sum(weight)))
    known = int(np.sum(sigma <= MAX_RESIDUAL_V)) if sigma_given else soc.size
    return ElectrodeWindows.of(pos.name, neg.name, p, covariance, rms, known)


def electrode_capacities(p: FloatArray, capacity_ah: float) -> FloatArray:
    """(C_n, C_p, n_Li) [Ah] of windows ``p`` for a cell of ``capacity_ah``."""
    x0, x100, y0, y100 = p
    c_n = capacity_ah / (x100 - x0)
    c_p = capacity_ah / (y0 - y100)
    return np.array([c_n, c_p, c_n * x100 + c_p * y100])


def degradation_modes(
    fit: ElectrodeWindows,
    capacity_ah: float,
    capacity_sigma_ah: float,
    reference: ElectrodeWindows,
    reference_capacity_ah: float,
    reference_capacity_sigma_ah: float = 0.0,
) -> DegradationModes:
    """LLI, LAM_PE, LAM_NE [%] of ``fit`` against ``reference`` (the same cell fresh).

    NaN when either fit is no match, the pairs differ (windows on different curves are not
    comparable) or a capacity is unknown. Sigmas propagate both fits' covariances and both
    capacities' sigmas through the Jacobian of the modes."""
    comparable = (
        fit.matched
        and reference.matched
        and (fit.positive, fit.negative) == (reference.positive, reference.negative)
    )
    values = [capacity_ah, capacity_sigma_ah, reference_capacity_ah, reference_capacity_sigma_ah]
    if not comparable or not all(math.isfinite(v) for v in values) or capacity_ah <= 0:
        return DegradationModes()
    theta = np.concatenate([fit.params, [capacity_ah], reference.params, [reference_capacity_ah]])
    cov = np.zeros((10, 10))
    cov[:4, :4], cov[4, 4] = fit.covariance, capacity_sigma_ah**2
    cov[5:9, 5:9], cov[9, 9] = reference.covariance, reference_capacity_sigma_ah**2

    def losses(t: FloatArray) -> FloatArray:
        now, then = electrode_capacities(t[:4], t[4]), electrode_capacities(t[5:9], t[9])
        return 100.0 * (1.0 - now / then)  # LAM_NE, LAM_PE, LLI

    value = losses(theta)
    jac = np.empty((3, 10))
    for k in range(10):
        h = 1e-6 * max(abs(theta[k]), 1e-3)
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        jac[:, k] = (losses(up) - losses(down)) / (2 * h)
    sigma = np.sqrt(np.maximum(np.diag(jac @ cov @ jac.T), 0.0))
    return DegradationModes(
        lli_pct=float(value[2]),
        lli_sigma_pct=float(sigma[2]),
        lam_pe_pct=float(value[1]),
        lam_pe_sigma_pct=float(sigma[1]),
        lam_ne_pct=float(value[0]),
        lam_ne_sigma_pct=float(sigma[0]),
    )
