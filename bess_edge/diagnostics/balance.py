"""Cell balance: how far apart the cells of a string are, which are weak, what to do about it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bess_edge.diagnostics.numeric import finite_or, median
from bess_edge.diagnostics.trend import EwTrend
from bess_edge.model import BoolArray, FloatArray

# A cell whose voltage sits 3.5 robust sigmas below its string (Iglewicz & Hoaglin's outlier
# bound), smoothed over ~10 min so a single noisy poll does not count, is weak; so is a cell
# with 1.5x the string's median R0 (half-way to the usual doubling end-of-life criterion), and
# one whose capacity is significantly below the others' (cell_capacity.py).
WEAK_Z = -3.5
WEAK_Z_SMOOTH_S = 600.0
WEAK_R0_RATIO = 1.5
# SOC spread [%-points] beyond which a string needs balancing: passive balancers move ~1-2 % of
# capacity per day (tens of mA bleed on a 100+ Ah cell), so 5 % is days of normal balancing and
# 20 % more than they can recover in a reasonable time.
BALANCE_SPREAD_PCT = 5.0
SERVICE_SPREAD_PCT = 20.0
TREND_TIME_CONSTANT_S = 7 * 86_400.0


@dataclass
class BalanceResult:
    spread_v: float
    soc_spread_pct: float
    trend_pct_per_day: float
    weak_cells: list[int] = field(default_factory=list)
    recommendation: str = "none"


def balancing_recommendation(
    cell_soc_pct: FloatArray, spread_pct: float, low_capacity: BoolArray | None = None
) -> str:
    """What an operator should do about the SOC spread [%] of a string's cells (``spread_pct``,
    max - min of the finite ones, NaN if none, as the caller has it already), and about cells
    whose low capacity (``low_capacity``, bool per cell) limits the string: balancing cannot
    recover that, only replacing them can."""
    advice = _spread_advice(cell_soc_pct, spread_pct)
    weak = low_capacity.nonzero()[0] if low_capacity is not None else np.empty(0, int)
    if not weak.size:
        return advice
    ids = ", ".join(str(int(i)) for i in weak[:10])
    limit = f"low-capacity cells [{ids}] limit the string; balancing cannot recover them"
    return limit if advice == "none" else f"{advice}; {limit}"


def _spread_advice(cell_soc_pct: FloatArray, spread: float) -> str:
    # NaN (no finite SOC) and 0 (one) compare False: no advice.
    if spread > SERVICE_SPREAD_PCT:
        return f"service balance: SOC spread {spread:.1f} % is beyond passive balancing"
    if spread > BALANCE_SPREAD_PCT:
        centre = median(cell_soc_pct[np.isfinite(cell_soc_pct)])
        high = np.flatnonzero(finite_or(cell_soc_pct, -1e9) > centre + BALANCE_SPREAD_PCT / 2)
        ids = ", ".join(str(int(i)) for i in high[:10])
        return f"balance at top of charge: bleed cells [{ids}] (SOC spread {spread:.1f} %)"
    return "none"


class BalanceTracker:
    """Smoothed per-cell standing and the trend of the string's SOC spread."""

    def __init__(self, cells: int) -> None:
        self.z_smooth = np.zeros(cells)
        self.spread = EwTrend(1, TREND_TIME_CONSTANT_S)

    def update(
        self,
        dt_s: float,
        cell_voltage_v: FloatArray,
        zscore: FloatArray,
        cell_soc_pct: FloatArray,
        r0_ratio: FloatArray,
        low_capacity: BoolArray,
    ) -> BalanceResult:
        """One poll: cell voltages [V], their robust z-scores, the cells' SOC [%], R0 ratios and
        which cells have a capacity significantly below the others (bool per cell)."""
        finite_v = cell_voltage_v[np.isfinite(cell_voltage_v)]
        # max - min is np.ptp without its wrapper (a few us a call)
        spread_v = float(finite_v.max() - finite_v.min()) if finite_v.size else math.nan
        finite_soc = cell_soc_pct[np.isfinite(cell_soc_pct)]
        soc_spread = float(finite_soc.max() - finite_soc.min()) if finite_soc.size else math.nan
        self.spread.add(dt_s, np.array([soc_spread]))
        alpha = 1 - np.exp(-max(dt_s, 0.0) / WEAK_Z_SMOOTH_S)
        self.z_smooth = np.where(
            np.isfinite(zscore), self.z_smooth + alpha * (zscore - self.z_smooth), self.z_smooth
        )
        weak = (self.z_smooth < WEAK_Z) | (finite_or(r0_ratio) > WEAK_R0_RATIO) | low_capacity
        return BalanceResult(
            spread_v=spread_v,
            soc_spread_pct=soc_spread,
            trend_pct_per_day=float(self.spread.slope_per_h[0]) * 24.0,
            weak_cells=[int(i) for i in weak.nonzero()[0]],
            recommendation=balancing_recommendation(cell_soc_pct, soc_spread, low_capacity),
        )

    def state(self) -> dict[str, Any]:
        return {
            "z_smooth": self.z_smooth,
            **{f"trend_{k}": v for k, v in self.spread.state().items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        z = np.asarray(state["z_smooth"], dtype=np.float64)
        if z.shape != self.z_smooth.shape:
            raise ValueError(f"balance state for {z.size} cells, string has {self.z_smooth.size}")
        self.z_smooth = z
        self.spread.load({k[6:]: v for k, v in state.items() if k.startswith("trend_")})
