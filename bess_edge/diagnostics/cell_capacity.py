"""Per-cell capacity of a series string, relative to the string's, from rested cell voltages.

In series every cell carries the same charge, so between two settled rests cell k's SOC moves by
``ΔSOC_k = 100·ΔQ/C_k``: the cells' SOC changes are in the inverse ratio of their capacities.
The ratio needs no current sensor (offset and gain errors do not enter), and an OCV-table bias
mostly cancels: the cells of a string sit within a few points of SOC of each other, where the
table is off by nearly the same. With ``u_k = Q/C_k`` (Q: the string's average cell, the
capacity fit's) each pair p of rests gives

    ΔSOC_k,p = u_k · ΔSOC̄_p       (ΔSOC̄_p: the mean over the cells)

and ``u_k`` is the weighted least-squares slope through the origin over all pairs, with
forgetting. A pair's residual has three sources: the cells' relative rested-voltage error
(monitor noise, relaxation that differs with a cell's resistance), the table's error changing
between the cell's SOC and the string's (its *shape*, taken as the table's error over
SHAPE_SPAN_PCT of SOC), and the table's common bias, which moves every cell's ΔSOC by the same
amount and so a ratio ``u ≠ 1`` by ``(u - 1)·bias``.

The shape error has a signature the string shows itself: a cell that sits δ points above the
string's mean reads every SOC through the table δ points further along, so where the table's
SOC error changes by γ between a pair's two rests, the cell's ΔSOC is off by γ·δ, the same γ
for every cell of the pair. Each pair's γ is therefore fitted across the cells (Theil-Sen: the
median of the slopes between every two cells, which a weak cell, whose offset grows as it
swings wider, moves little) and γ·δ taken off each cell before the pair is pooled. On the
accuracy benchmark's string with its learned table (5 points of imbalance), the healthy cells'
ratios went from 0.976-1.069 to 1.001-1.025 (truth 1.015), the weak cell's from 0.839 to 0.900
(truth 0.893). Where the residuals scatter more than the rest explains, the sigma is widened by
the scatter (reduced chi-square); and because what is left of the shape error comes back at
every rest at the same SOC, the sigma is floored by the cells' robust spread. Anchors on a flat
region (the LFP plateau) are not used: a voltage there does not say the SOC.

``C_k = Q/u_k`` needs Q: without the string's capacity the ratios are still reported, the
capacities are NaN. A cell whose capacity is WEAK_DEFICIT below the string's median cell and
WEAK_SIGMAS out of its sigma is weak: it limits the string, and balancing cannot recover it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_median
from bess_edge.diagnostics.soc import in_flat_region, ocv_table_error_v
from bess_edge.model import BoolArray, FloatArray

# Relative rested-voltage error between two cells of a string [V]: 1 mV monitor noise averaged
# over minutes, and relaxation that differs with each cell's resistance after the same current.
CELL_OCV_ERROR_V = 0.002
# The table's error changes by about its own size over this much SOC (the NMC preset against
# the accuracy benchmark's cells: 20-70 mV between 20 and 90 %, far more below 15 %).
SHAPE_SPAN_PCT = 25.0
# Two cells whose offsets from the string's mean differ by less than this [% SOC] (a rested
# voltage's error over a typical slope: 2 mV at 5 mV/%) give no slope of the table's shape
# term; the fit needs SPREAD_MIN_CELLS cells, and takes its slopes from at most
# SHAPE_FIT_MAX_CELLS of them (evenly spaced: the pairs grow as the square of the cells).
MIN_OFFSET_GAP_PCT = 0.5
SHAPE_FIT_MAX_CELLS = 256
# Pairs of rests whose mean SOC moved less than this say little about a ratio.
MIN_PAIR_SPAN_PCT = 5.0
# Each new pair multiplies older weights by this (memory of ~50 pairs, weeks of daily rests).
PAIR_FORGETTING = 0.98
# The table's shape error repeats wherever the same rests come back (a site rests at the same
# SOCs every day), so pooling pairs does not average it away: the fitted sigma is floored by the
# robust spread of the cells' ratios (a string's cells are within 1-2 % when new), the cells'
# own calibration of that error (accuracy benchmark, NMC preset: ratios off by ~4 %, fitted
# sigma 0.4-2 %, MAD spread 4.6 %). Needs this many cells with a ratio.
SPREAD_MIN_CELLS = 4
MAD_TO_SIGMA = 1.4826
# Ratios are reported after this many pairs (one pair has no scatter to check its sigma by).
MIN_PAIRS = 2
# The forgetting-weighted count that MIN_PAIRS pairs leave.
MIN_PAIRS_WEIGHT = (1.0 - PAIR_FORGETTING**MIN_PAIRS) / (1.0 - PAIR_FORGETTING)
# Weak: capacity at least 5 % below the string's median cell (beyond the production spread of
# new cells, ~1-2 %), and that deficit at least 3 sigma out.
WEAK_DEFICIT = 0.05
WEAK_SIGMAS = 3.0
# The rested voltage is averaged over the last minutes of the rest (as capacity.py does).
REST_AVERAGE_S = 300.0


@dataclass
class CellCapacityResult:
    ratio: FloatArray  # C_k / Q: each cell's capacity relative to the string's average cell
    ratio_sigma: FloatArray
    capacity_ah: FloatArray  # C_k [Ah], NaN while Q is unknown
    capacity_sigma_ah: FloatArray
    weak: BoolArray  # per cell: capacity significantly below the others


class CellCapacity:
    """Rest-to-rest SOC changes of every cell, pooled into capacity ratios."""

    def __init__(self, cells: int) -> None:
        self.cells = cells
        self._rest_v = np.full(cells, np.nan)  # rested voltages, averaged over this rest
        self._anchor = np.full(cells, np.nan)  # cell SOCs [%] at the last rest's end
        self._anchor_var = np.full(cells, np.nan)  # their relative variances [%²]
        self._anchor_bias_var = math.nan  # the table's common SOC bias there [%²]
        # Weighted sums of the per-cell fit Δ_k = u_k·Δ̄ (with forgetting).
        self.s_xx = np.zeros(cells)
        self.s_xy = np.zeros(cells)
        self.s_yy = np.zeros(cells)
        self.pairs = np.zeros(cells)  # forgetting-weighted count of pairs per cell
        # result() for (capacity, sigma), read every poll, changed only by a pair or a load.
        self._result: tuple[tuple[float, float], CellCapacityResult] | None = None

    def observe_rest(self, cell_voltage_v: FloatArray, dt_s: float) -> None:
        """A settled resting poll: each cell's voltage [V] is its OCV (NaN cells are skipped)."""
        alpha = min(1.0, max(dt_s, 0.0) / REST_AVERAGE_S)
        old = self._rest_v
        averaged = np.where(np.isfinite(old), old + alpha * (cell_voltage_v - old), cell_voltage_v)
        self._rest_v = np.where(np.isfinite(cell_voltage_v), averaged, old)

    def end_rest(self, chemistry: Chemistry) -> None:
        """The rest is over: its rested voltages become an anchor, paired with the last one.

        ``chemistry`` is the table in use now (a learned table may have replaced the preset).
        """
        rest_v, self._rest_v = self._rest_v, np.full(self.cells, np.nan)
        if not np.isfinite(rest_v).any():
            return
        soc = np.asarray(chemistry.soc_from_ocv(rest_v), dtype=np.float64)
        flat = in_flat_region(chemistry.ocv_flat_regions_pct, soc)
        soc = np.where(np.isfinite(rest_v) & ~flat, soc, np.nan)
        mean = float(np.nanmean(soc)) if np.isfinite(soc).any() else math.nan
        table_v = float(ocv_table_error_v(chemistry, mean if math.isfinite(mean) else 50.0))
        var = relative_soc_var(chemistry, soc, mean, table_v)
        mean_slope = max(float(chemistry.docv_dsoc(mean)), 1e-6) if math.isfinite(mean) else 1.0
        bias_var = (table_v / mean_slope) ** 2
        self._add_pair(soc, var, bias_var)
        self._anchor, self._anchor_var, self._anchor_bias_var = soc, var, bias_var

    def _add_pair(self, soc: FloatArray, var: FloatArray, bias_var: float) -> None:
        delta = soc - self._anchor
        ok = np.isfinite(delta)
        if ok.sum() < 2:
            return
        ref = float(np.mean(delta[ok]))
        if abs(ref) < MIN_PAIR_SPAN_PCT:
            return
        # Each cell's offset from the string's mean, averaged over the pair's two ends.
        middle = 0.5 * (self._anchor + soc)
        offset = middle - float(np.mean(middle[ok]))
        delta = delta - _shape_slope(delta - ref, offset, ok) * offset
        ref = float(np.mean(delta[ok]))
        u = self.ratio_inverse()
        u = np.where(np.isfinite(u), u, 1.0)
        pair_var = var + self._anchor_var + ((u - 1.0) ** 2) * (bias_var + self._anchor_bias_var)
        w = np.where(ok, 1.0 / pair_var, 0.0)
        y = np.where(ok, delta, 0.0)
        self.s_xx = PAIR_FORGETTING * self.s_xx + w * ref**2
        self.s_xy = PAIR_FORGETTING * self.s_xy + w * ref * y
        self.s_yy = PAIR_FORGETTING * self.s_yy + w * y**2
        self.pairs = PAIR_FORGETTING * self.pairs + ok
        self._result = None

    def ratio_inverse(self) -> FloatArray:
        """u_k = Q/C_k per cell, NaN before MIN_PAIRS pairs."""
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.s_xy / self.s_xx
        return np.where(self.pairs >= MIN_PAIRS_WEIGHT - 1e-9, u, np.nan)

    def ratio_inverse_sigma(self, u: FloatArray) -> FloatArray:
        """Sigma of ``u``: the fit's, widened by the residuals' scatter where it is larger, and
        never below the cells' robust spread (the table's shape error is systematic)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            chi2 = np.maximum(self.s_yy - 2 * u * self.s_xy + u**2 * self.s_xx, 0.0)
            dof = np.maximum(self.pairs - 1.0, 1.0)
            fit = np.sqrt(np.maximum(1.0, chi2 / dof) / self.s_xx)
        return np.hypot(fit, _robust_spread(u))

    def result(self, capacity_ah: float, capacity_sigma_ah: float) -> CellCapacityResult:
        """Ratios, capacities [Ah] with ``capacity_ah`` ± sigma as the string's Q, weak cells;
        computed again only when the pairs or the capacity changed (its arrays are read-only:
        the Diagnoses until then share them)."""
        key = (capacity_ah, capacity_sigma_ah)
        cached = self._result
        if cached is None or not all(
            a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(cached[0], key, strict=True)
        ):
            result = self._compute_result(capacity_ah, capacity_sigma_ah)
            for array in vars(result).values():
                array.flags.writeable = False
            cached = self._result = (key, result)
        return cached[1]

    def _compute_result(self, capacity_ah: float, capacity_sigma_ah: float) -> CellCapacityResult:
        u = self.ratio_inverse()
        sigma_u = np.where(np.isfinite(u), self.ratio_inverse_sigma(u), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = 1.0 / u
            ratio_sigma = sigma_u / u**2
            rel_q = capacity_sigma_ah / capacity_ah
        cap = capacity_ah * ratio
        cap_sigma = np.abs(cap) * np.hypot(rel_q, ratio_sigma / ratio)
        median = finite_median(u)
        with np.errstate(invalid="ignore"):
            weak = (u > median / (1.0 - WEAK_DEFICIT)) & (u - median > WEAK_SIGMAS * sigma_u)
        return CellCapacityResult(ratio, ratio_sigma, cap, cap_sigma, weak)

    def state(self) -> dict[str, Any]:
        return {
            "anchor": np.vstack([self._anchor, self._anchor_var]),
            "bias_var": np.array([self._anchor_bias_var]),
            "sums": np.vstack([self.s_xx, self.s_xy, self.s_yy, self.pairs]),
        }

    def load(self, state: dict[str, Any]) -> None:
        anchor = np.asarray(state["anchor"], dtype=np.float64)
        sums = np.asarray(state["sums"], dtype=np.float64)
        if anchor.shape != (2, self.cells) or sums.shape != (4, self.cells):
            raise ValueError(f"cell capacity state for {anchor.shape[-1]} cells, not {self.cells}")
        self._anchor, self._anchor_var = anchor
        self._anchor_bias_var = float(np.asarray(state["bias_var"]).ravel()[0])
        self.s_xx, self.s_xy, self.s_yy, self.pairs = sums
        self._result = None


def relative_soc_var(
    chemistry: Chemistry, soc_pct: FloatArray, mean_pct: float, table_error_v: float
) -> FloatArray:
    """Variance [%²] of cells' SOCs, read through ``chemistry``'s table, against their
    string's mean SOC ``mean_pct``: the cells' relative rested-voltage error and the table's
    shape error (``table_error_v`` there) over each cell's offset from the mean (what a bias
    common to the cells leaves), at the local slope."""
    slope = np.maximum(np.asarray(chemistry.docv_dsoc(soc_pct), dtype=np.float64), 1e-6)
    shape = table_error_v * np.abs(soc_pct - mean_pct) / SHAPE_SPAN_PCT
    return (CELL_OCV_ERROR_V**2 + shape**2) / slope**2


def _shape_slope(residual: FloatArray, offset: FloatArray, ok: BoolArray) -> float:
    """γ of one pair: the Theil-Sen slope of the cells' ΔSOC residuals (from the pair's mean)
    against their offsets from the string's mean, 0 where too few cells are apart."""
    cells = np.flatnonzero(ok)
    if cells.size < SPREAD_MIN_CELLS:
        return 0.0
    if cells.size > SHAPE_FIT_MAX_CELLS:
        cells = cells[np.linspace(0, cells.size - 1, SHAPE_FIT_MAX_CELLS).astype(np.intp)]
    j, k = np.triu_indices(cells.size, 1)
    gap = offset[cells[j]] - offset[cells[k]]
    apart = np.abs(gap) > MIN_OFFSET_GAP_PCT
    if not apart.any():
        return 0.0
    rise = residual[cells[j]] - residual[cells[k]]
    return float(np.median(rise[apart] / gap[apart]))


def _robust_spread(u: FloatArray) -> float:
    """Robust standard deviation (MAD) of the cells' ratios, 0 for fewer than SPREAD_MIN_CELLS."""
    finite = u[np.isfinite(u)]
    if finite.size < SPREAD_MIN_CELLS:
        return 0.0
    return MAD_TO_SIGMA * float(np.median(np.abs(finite - np.median(finite))))
