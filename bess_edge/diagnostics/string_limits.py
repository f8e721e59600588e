"""Which cell stops the string: the first to reach a voltage limit at the end of a charge or of
a discharge.

A series string stops charging when its first cell reaches the upper voltage limit and
discharging when its first reaches the lower one. A cell first at one end only is out of
balance (its SOC is above or below the others'); a cell first at *both* ends, time after time,
is the one with the least capacity, which balancing cannot help. Cells are compared without
their ohmic drop (R0·I), so a high-resistance cell, which reaches both limits early under
current, is not taken for a low-capacity one (its R0 names it); before every cell's R0 is
known, no end is counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.model import BoolArray, FloatArray

# "At the limit": within this share of the chemistry's operating window of it (NMC 2.8-4.2 V:
# 42 mV), what a BMS's stop threshold and a poll's timing leave of the last approach.
LIMIT_WINDOW_FRACTION = 0.03
# A cell limits the string at an end when it was first there in this share of the ends seen
# (with forgetting), after at least LIMIT_MIN_ENDS ends of each kind.
LIMIT_SHARE = 0.75
LIMIT_MIN_ENDS = 3.0
LIMIT_FORGETTING = 0.9  # each new end of a kind weighs the older ones down (~10 ends)
# Currents below this [fraction of 1C] are rests or noise: they neither end nor re-arm an end.
MOVING_C = 0.02


class LimitTracker:
    """Counts, per cell, the ends of charge and of discharge it reached first."""

    def __init__(self, cells: int, capacity_ah: float) -> None:
        self.moving_a = MOVING_C * capacity_ah
        self.first = np.zeros((2, cells))  # rows: top (end of charge), bottom (end of discharge)
        self.ends = np.zeros(2)  # forgetting-weighted ends of each kind
        self.seen = np.zeros(2)  # ends of each kind, counted
        self._armed = np.ones(2, dtype=bool)  # re-armed once the current turns the other way

    def update(
        self, chemistry: Chemistry, cell_voltage_v: FloatArray, current_a: float, r0_ohm: FloatArray
    ) -> None:
        """One poll: the cells' voltages [V], the corrected current [A], each cell's R0 [Ω] at
        its temperature (NaN: not known yet)."""
        moving = np.isfinite(current_a) and abs(current_a) >= self.moving_a
        if not (moving and np.count_nonzero(np.isfinite(cell_voltage_v))):
            return
        end = 0 if current_a > 0 else 1
        self._armed[1 - end] = True
        if not self._armed[end]:
            return
        valid = np.isfinite(cell_voltage_v)
        if not np.isfinite(r0_ohm[valid]).all():
            return
        ocv = np.where(valid, cell_voltage_v - r0_ohm * current_a, np.nan)
        margin = LIMIT_WINDOW_FRACTION * (
            chemistry.cell_voltage_max_v - chemistry.cell_voltage_min_v
        )
        if end == 0 and np.nanmax(cell_voltage_v) >= chemistry.cell_voltage_max_v - margin:
            first = int(np.nanargmax(ocv))
        elif end == 1 and np.nanmin(cell_voltage_v) <= chemistry.cell_voltage_min_v + margin:
            first = int(np.nanargmin(ocv))
        else:
            return
        self._armed[end] = False
        self.first[end] *= LIMIT_FORGETTING
        self.first[end, first] += 1.0
        self.ends[end] = LIMIT_FORGETTING * self.ends[end] + 1.0
        self.seen[end] += 1.0

    def limiting(self) -> BoolArray:
        """Cells first at both ends of the string in most of its recent charges and discharges."""
        # np.count_nonzero, not np.any or .any(): their machinery costs more than the test.
        if np.count_nonzero(self.seen < LIMIT_MIN_ENDS):
            return np.zeros(self.first.shape[1], dtype=bool)
        share = self.first / self.ends[:, None]
        return np.asarray((share >= LIMIT_SHARE).all(axis=0))

    def state(self) -> dict[str, Any]:
        return {"first": self.first, "ends": np.concatenate([self.ends, self.seen]),
                "armed": self._armed}  # fmt: skip

    def load(self, state: dict[str, Any]) -> None:
        first = np.asarray(state["first"], dtype=np.float64)
        if first.shape != self.first.shape:
            raise ValueError(f"limit state for {first.shape[-1]} cells, not {self.first.shape[1]}")
        self.first = first
        self.ends, self.seen = np.asarray(state["ends"], dtype=np.float64).reshape(2, 2)
        self._armed = np.asarray(state["armed"], dtype=bool)
