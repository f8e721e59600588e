"""Thermal state of a string: temperature rates and a thermal-runaway precursor score.

Runaway announces itself before the limits are crossed (Feng et al., "Thermal runaway mechanism
of lithium ion battery for electric vehicles: A review", Energy Storage Materials 10 (2018) 246):
a cell warms with no current to explain it (an internal short or side reactions), it gets hotter
than its neighbours, and its voltage sags while it heats (the short discharges it). Each sign is
scored 0..1 per temperature sensor; the weighted sum is the precursor score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_or, median
from bess_edge.diagnostics.safety import Finding
from bess_edge.diagnostics.trend import EwTrend
from bess_edge.model import FloatArray

# Heating faster than the string median by this much [K/min] scores 1. A stationary cell at
# ≤1C warms by well under 1 K/min (lumped model of the presets); 2 K/min is a fault.
EXCESS_RATE_FULL_K_PER_MIN = 2.0
LOW_CURRENT_C = 0.1  # "at rest or nearly": heating here has no electrical cause
HOT_SPOT_START_K = 2.0  # hotter than its neighbours' mean by more than this starts to score
HOT_SPOT_FULL_K = 12.0
VOLTAGE_SAG_FULL_V_PER_MIN = 0.005  # a cell sagging 5 mV/min faster than its string
WEIGHTS = (0.45, 0.35, 0.2)  # rate, hot spot, voltage sag
# Rates are fitted over about two minutes: fast enough for runaway, slow enough for 0.1 K steps.
RATE_TIME_CONSTANT_S = 120.0
SCORE_LEVELS = ((0.6, 2), (0.25, 1))
# A hot cell: a sensor this much hotter than both its neighbours' mean and the string's median.
# Cells of one string share their air and their current, so sensors sit within ~1-2 K of each
# other (the presets' lumped model; foxBMS captures read 25-26 °C across a module); 4 K is four
# steps of a 1 °C sensor above that spread, and a quarter of the way to the precursor's full
# hot-spot score. It must hold this long, so a single glitch is not reported: the bound on the
# detection time, independent of the two-minute rate fit above.
OUTLIER_K = 4.0
OUTLIER_HOLD_S = 30.0


def sensor_of_cell(cells: int, sensors: int) -> np.ndarray:
    """Index of the temperature sensor nearest each cell, sensors spread evenly along the string
    (the first ``cells % sensors`` sensors cover one cell more, as ``numpy.array_split``)."""
    if sensors == 0 or cells == 0:
        return np.zeros(cells, dtype=np.intp)
    small, extra = divmod(cells, sensors)
    i = np.arange(cells)
    split = extra * (small + 1)
    with np.errstate(divide="ignore"):
        rest = extra + (i - split) // max(small, 1)
    return np.where(i < split, i // (small + 1), rest).astype(np.intp)


def neighbour_excess_c(temperature_c: FloatArray) -> FloatArray:
    """How much hotter [K] each sensor reads than its two neighbours' mean along the string."""
    t = np.asarray(temperature_c, dtype=np.float64)
    if t.size < 2:
        return np.zeros(t.size)
    ok = np.isfinite(t)
    value = np.where(ok, t, 0.0)
    total, count = np.zeros(t.size), np.zeros(t.size)
    total[1:] += value[:-1]  # left neighbour
    count[1:] += ok[:-1]
    total[:-1] += value[1:]  # right neighbour
    count[:-1] += ok[1:]
    with np.errstate(invalid="ignore"):
        return t - total / count  # 0 / 0: NaN for a sensor with no finite neighbour


def _unit(values: FloatArray) -> FloatArray:
    """``values`` clipped to 0..1: ``np.clip`` without its wrapper, which costs as much as
    the two comparisons (it differs only in keeping -0.0, which no score can be: s_hot >= 0)."""
    return np.minimum(np.maximum(values, 0.0), 1.0)


@dataclass
class ThermalResult:
    """Per-sensor rates and scores of one poll, and the findings they raise."""

    rate_k_per_min: FloatArray
    precursor_score: FloatArray
    findings: list[Finding] = field(default_factory=list)


class ThermalMonitor:
    """Tracks each sensor's temperature slope and its block's voltage sag."""

    def __init__(self, chemistry: Chemistry, capacity_ah: float, sensors: int) -> None:
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        # The sensors' temperatures, then their blocks' voltage deviations: sampled together,
        # so one fit of twice the columns serves both (half the per-poll numpy calls).
        self.trend = EwTrend(2 * sensors, RATE_TIME_CONSTANT_S)
        self.observed_s = 0.0  # rates mean nothing until a time constant of data is in
        self.outlier_s = np.zeros(sensors)  # how long each sensor has stood out as hot

    def update(
        self,
        dt_s: float,
        temperature_c: FloatArray,
        block_deviation_v: FloatArray,
        current_a: float,
    ) -> ThermalResult:
        """One poll: sensor temperatures [°C], each sensor's cells' voltage deviation from the
        string median [V], and the pack current [A]."""
        self.trend.add(dt_s, np.concatenate((temperature_c, block_deviation_v)))
        self.observed_s += max(dt_s, 0.0)
        neighbour_excess = neighbour_excess_c(temperature_c)
        outliers = self._hot_outliers(dt_s, temperature_c, neighbour_excess)
        if self.observed_s < RATE_TIME_CONSTANT_S:
            nothing = np.zeros(np.shape(temperature_c))
            return ThermalResult(np.full(nothing.shape, np.nan), nothing, outliers)
        slopes = finite_or(self.trend.slope_per_h) / 60.0
        rate, sag = slopes[: self.outlier_s.size], slopes[self.outlier_s.size :]
        excess_rate = rate - (median(rate) if rate.size else 0.0)
        low_current = not math.isfinite(current_a) or abs(current_a) < (
            LOW_CURRENT_C * self.capacity_ah
        )
        s_rate = _unit(excess_rate / EXCESS_RATE_FULL_K_PER_MIN)
        if not low_current:
            s_rate = 0.5 * s_rate  # load explains part of any heating
        hot = finite_or(neighbour_excess)
        s_hot = _unit((hot - HOT_SPOT_START_K) / (HOT_SPOT_FULL_K - HOT_SPOT_START_K))
        s_sag = np.where(rate > 0.1, _unit(-sag / VOLTAGE_SAG_FULL_V_PER_MIN), 0.0)
        score = WEIGHTS[0] * s_rate + WEIGHTS[1] * s_hot + WEIGHTS[2] * s_sag
        result = ThermalResult(rate, score, outliers)
        if score.size:
            worst = int(np.argmax(score))
            for threshold, level in SCORE_LEVELS:
                if score[worst] >= threshold:
                    result.findings.append(
                        (
                            level,
                            f"runaway precursor at sensor {worst}: score {score[worst]:.2f} "
                            f"(+{excess_rate[worst]:.2f} K/min vs string, "
                            f"{hot[worst]:+.1f} K vs neighbours, "
                            f"sag {sag[worst] * 1e3:.1f} mV/min)",
                        )
                    )
                    break
        return result

    def _hot_outliers(
        self, dt_s: float, temperature_c: FloatArray, neighbour_excess: FloatArray
    ) -> list[Finding]:
        """Sensors hotter than their neighbours (``neighbour_excess_c``) and the string by
        OUTLIER_K, for OUTLIER_HOLD_S: a hot cell that the precursor score (weighted, and
        rate-led) may never reach."""
        t = np.asarray(temperature_c, dtype=np.float64)
        if t.size < 3 or self.outlier_s.size != t.size:
            return []
        finite = t[np.isfinite(t)]
        if finite.size < 3:
            return []
        if not np.count_nonzero(neighbour_excess >= OUTLIER_K):
            # The excess is at most the neighbour excess: no sensor stands out this poll (the
            # usual case), and the string's median is not needed.
            self.outlier_s = np.zeros(t.size)
            return []
        with np.errstate(invalid="ignore"):
            excess = np.minimum(neighbour_excess, t - median(finite))
            hot = excess >= OUTLIER_K
        self.outlier_s = np.where(hot, self.outlier_s + max(dt_s, 0.0), 0.0)
        held = (hot & (self.outlier_s >= OUTLIER_HOLD_S)).nonzero()[0]
        return [
            (
                1,
                f"hot cell at sensor {int(k)}: {t[k]:.1f} °C, {excess[k]:+.1f} K vs neighbours "
                f"and string for {self.outlier_s[k]:.0f} s",
            )
            for k in held
        ]

    def state(self) -> dict[str, Any]:
        trend = self.trend.state()
        return {
            "observed_s": np.array([self.observed_s]),
            "outlier_s": self.outlier_s.copy(),
            **{f"t_{k}": v[: self.outlier_s.size] for k, v in trend.items()},
            **{f"v_{k}": v[self.outlier_s.size :] for k, v in trend.items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.observed_s = float(state["observed_s"][0])
        if "outlier_s" in state and np.shape(state["outlier_s"]) == self.outlier_s.shape:
            self.outlier_s = np.asarray(state["outlier_s"], dtype=np.float64)
        self.trend.load(
            {
                k[2:]: np.concatenate((np.ravel(v), np.ravel(state[f"v_{k[2:]}"])))
                for k, v in state.items()
                if k.startswith("t_")
            }
        )
