"""Cycle counting and cycle life: rainflow (ASTM E1049-85) of the SOC history, DoD, damage.

The counter is streaming, so a year of 1 Hz SOC never has to be kept: only the rainflow residue
(the reversals not yet closed into a cycle, a handful of points) lives between polls. Closed
cycles are folded at once into a depth-of-discharge histogram and a Palmgren-Miner damage sum
with the chemistry's Wöhler curve ``N(DoD)`` (``Chemistry.cycle_life``, sources cited there).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.model import FloatArray

# DoD histogram bin edges [% SOC]: ten 10-point bins, as in the cycle-life tables of datasheets.
DOD_BIN_EDGES_PCT = np.linspace(0.0, 100.0, 11)

Cycle = tuple[float, float]  # (range, count): count 1.0 for a full cycle, 0.5 for a half cycle


class RainflowCounter:
    """Streaming rainflow counter of ASTM E1049-85 §5.4.4 (the three-point method).

    Fed one sample at a time it yields exactly the cycles of the reference ``rainflow`` package
    run over the whole series (reversal extraction included); ``hysteresis`` > 0 first drops
    wiggles smaller than that range, so estimator noise on a resting SOC does not become
    thousands of micro-cycles.
    """

    def __init__(self, hysteresis: float = 0.0) -> None:
        self.hysteresis = hysteresis
        self._stack: list[float] = []  # confirmed reversals not yet closed into cycles
        self._first: float | None = None
        self._x: float | None = None  # last distinct value (tentative reversal)
        self._d_last = 0.0
        self._last_passed: float | None = None
        self._samples = 0

    @property
    def samples(self) -> int:
        """Samples that passed the hysteresis: the counter's state changes only with these."""
        return self._samples

    def push(self, value: float) -> list[Cycle]:
        """Add one sample; return the cycles it closes (range in the sample's unit)."""
        if not np.isfinite(value):
            return []
        if self._last_passed is not None and abs(value - self._last_passed) < self.hysteresis:
            return []
        self._last_passed = value
        self._samples += 1
        if self._first is None:
            self._first = value
            return self._add_reversal(value)
        if self._x is None:
            self._x = value
            self._d_last = value - self._first
            return []
        if value == self._x:
            return []
        d_next = value - self._x
        closed = self._add_reversal(self._x) if self._d_last * d_next < 0 else []
        self._x = value
        self._d_last = d_next
        return closed

    def _add_reversal(self, point: float) -> list[Cycle]:
        stack = self._stack
        stack.append(point)
        closed: list[Cycle] = []
        while len(stack) >= 3:
            x_range = abs(stack[-1] - stack[-2])
            y_range = abs(stack[-2] - stack[-3])
            if x_range < y_range:
                break
            if len(stack) == 3:
                closed.append((y_range, 0.5))
                del stack[0]
            else:
                closed.append((y_range, 1.0))
                del stack[-3:-1]
        return closed

    def residue_cycles(self) -> list[Cycle]:
        """Half cycles of the residue if the history ended now (not yet final, not stored)."""
        points = list(self._stack)
        if self._samples >= 3:
            # The last sample is a reversal at the end of the series (a two-sample series has
            # none, as in the reference); counting it closes what it would close, without
            # touching the live stack.
            assert self._last_passed is not None  # set by every sample
            scratch = RainflowCounter()
            scratch._stack = points
            closed = scratch._add_reversal(self._last_passed)
            points = scratch._stack
        else:
            closed = []
        return closed + [(abs(b - a), 0.5) for a, b in itertools.pairwise(points)]

    def state(self) -> dict[str, Any]:
        return {
            "stack": np.asarray(self._stack, dtype=np.float64),
            "scalars": np.array(
                [
                    _or_nan(self._first),
                    _or_nan(self._x),
                    self._d_last,
                    _or_nan(self._last_passed),
                    self._samples,
                ]
            ),
        }

    def load(self, state: dict[str, Any]) -> None:
        self._stack = [float(v) for v in state["stack"]]
        first, x, d_last, last_passed, samples = (float(v) for v in state["scalars"])
        self._samples = int(samples)
        self._first = _or_none(first)
        self._x = _or_none(x)
        self._d_last = d_last
        self._last_passed = _or_none(last_passed)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _or_none(value: float) -> float | None:
    return None if np.isnan(value) else value


def cycle_damage(chemistry: Chemistry, cycles: list[Cycle]) -> float:
    """Palmgren-Miner damage (fraction of life, 0..1) of SOC cycles given as (range %, count).

    Each cycle of depth DoD uses ``count / N(DoD)`` of the life, ``N`` the chemistry's Wöhler
    curve; the sum reaches 1 at end of life (``end_of_life_soh_pct``).
    """
    if not cycles:
        return 0.0
    ranges, counts = np.asarray(cycles, dtype=np.float64).T
    return float(np.sum(counts / chemistry.cycle_life(ranges / 100.0)))


def dod_histogram(cycles: list[Cycle]) -> FloatArray:
    """Cycle counts per 10-point DoD bin (``DOD_BIN_EDGES_PCT``) of (range %, count) cycles."""
    if not cycles:
        return np.zeros(DOD_BIN_EDGES_PCT.size - 1)
    ranges, counts = np.asarray(cycles, dtype=np.float64).T
    hist, _ = np.histogram(np.clip(ranges, 0.0, 100.0), bins=DOD_BIN_EDGES_PCT, weights=counts)
    return hist


@dataclass
class CycleLife:
    """Cycle bookkeeping of one string: throughput, rainflow damage and what life is left."""

    chemistry: Chemistry
    nominal_capacity_ah: float
    # 0.5 % SOC: above the EKF's resting noise, far below any cycle that ages a cell.
    counter: RainflowCounter = field(default_factory=lambda: RainflowCounter(hysteresis=0.5))
    throughput_ah: float = 0.0
    closed_damage: float = 0.0
    closed_histogram: FloatArray = field(default_factory=lambda: dod_histogram([]))
    # Damage and histogram of the closed cycles plus the residue, and the counter's sample
    # count they were computed at: they change only when a sample passes the hysteresis.
    _damage: tuple[int, float, FloatArray] | None = field(default=None, init=False, repr=False)
    # The chemistry's rated life in EFC at its reference depth, and the chemistry it is of.
    _rated: tuple[Chemistry, float] | None = field(default=None, init=False, repr=False)

    def update(self, soc_pct: float, current_a: float, dt_s: float) -> None:
        """Add one poll: the string SOC [%] and the bias-corrected current [A] over ``dt_s``."""
        if np.isfinite(current_a) and dt_s > 0:
            self.throughput_ah += abs(current_a) * dt_s / 3600.0
        closed = self.counter.push(soc_pct)
        if closed:
            self.closed_damage += cycle_damage(self.chemistry, closed)
            self.closed_histogram = self.closed_histogram + dod_histogram(closed)

    @property
    def equivalent_full_cycles(self) -> float:
        """Charge throughput over two nominal capacities: one EFC is a full charge + discharge."""
        return self.throughput_ah / (2.0 * self.nominal_capacity_ah)

    def summary(self) -> dict[str, Any]:
        """Damage so far (closed cycles + the open residue), the DoD histogram, and the
        equivalent full cycles left until end of life at the duty seen so far."""
        if self._damage is None or self._damage[0] != self.counter.samples:
            residue = self.counter.residue_cycles()
            self._damage = (
                self.counter.samples,
                self.closed_damage + cycle_damage(self.chemistry, residue),
                self.closed_histogram + dod_histogram(residue),
            )
        _, damage, histogram = self._damage
        efc = self.equivalent_full_cycles
        if damage > 1e-9 and efc > 0.05:
            # Cycles left at the duty seen so far: damage per EFC extrapolated (Miner's rule).
            remaining = max(0.0, 1.0 - damage) * efc / damage
        else:
            # Nothing cycled yet: the preset's rated life, in EFC at its reference depth (a
            # constant of the chemistry, kept: every poll of a new string's first hours).
            chem = self.chemistry
            if self._rated is None or self._rated[0] is not chem:
                self._rated = (chem, float(chem.cycle_life(chem.dod_ref)) * chem.dod_ref)
            remaining = self._rated[1]
        return {
            "life_used_pct": 100.0 * damage,
            "dod_histogram": histogram.copy(),
            "remaining_cycles": remaining,
        }

    def state(self) -> dict[str, Any]:
        return {
            **{f"rainflow_{k}": v for k, v in self.counter.state().items()},
            "scalars": np.array([self.throughput_ah, self.closed_damage]),
            "histogram": self.closed_histogram,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.counter.load({"stack": state["rainflow_stack"], "scalars": state["rainflow_scalars"]})
        self.throughput_ah, self.closed_damage = (float(v) for v in state["scalars"])
        self.closed_histogram = np.asarray(state["histogram"], dtype=np.float64)
        self._damage = None
