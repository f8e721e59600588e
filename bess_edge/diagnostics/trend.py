"""Exponentially weighted least-squares slopes, vectorised over cells.

Used wherever a diagnosis is a *rate*: a cell's voltage drifting away from its string during a
rest (self-discharge), a string's imbalance growing over days. Old samples fade with a time
constant, so the slope follows slow changes; sums are kept relative to the latest sample's time,
so precision does not erode over months of seconds.

Optionally the data come in *segments* (rest periods) whose levels differ for reasons the slope
must ignore: :meth:`EwTrend.new_segment` keeps only each segment's within-segment information
(the pooled within-group regression of analysis of covariance).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bess_edge.model import FloatArray

_FIELDS = ("s0", "st", "stt", "sy", "sty", "pxx", "pxy")


class EwTrend:
    """Weighted slope of ``y`` against time, per column, with exponential forgetting."""

    # Weighted sums over the samples (t in hours, the newest at 0): 1, t, t², y, t·y; and the
    # centred t² and t·y of closed segments (pxx, pxy). One entry per column each, as rows of
    # one array (``sums``) that a poll updates in place: forgetting is then one multiplication
    # instead of seven, which is most of what a poll costs on a 16-cell string.
    s0: FloatArray
    st: FloatArray
    stt: FloatArray
    sy: FloatArray
    sty: FloatArray
    pxx: FloatArray
    pxy: FloatArray

    def __init__(self, columns: int, time_constant_s: float) -> None:
        self.time_constant_s = time_constant_s
        self._use(np.zeros((len(_FIELDS), columns)))
        # Slope and time spread, read every poll but changed only by add/new_segment/load.
        self._derived: dict[str, FloatArray] = {}

    def _use(self, sums: FloatArray) -> None:
        """Hold ``sums`` and name its rows (views, so in-place updates reach both)."""
        self.sums = sums
        for name, row in zip(_FIELDS, sums, strict=True):
            setattr(self, name, row)

    def add(self, dt_s: float, y: FloatArray, weight: FloatArray | float = 1.0) -> None:
        """Add samples ``y`` taken ``dt_s`` after the previous ones (NaN entries are skipped)."""
        self._derived.clear()
        decay = np.exp(-max(dt_s, 0.0) / self.time_constant_s)
        dt_h = max(dt_s, 0.0) / 3600.0
        # Move the time origin to the new sample: t_old' = t_old - dt; each sum is shifted
        # before the sums it reads are.
        self.stt -= 2 * dt_h * self.st
        self.stt += dt_h**2 * self.s0
        self.sty -= dt_h * self.sy
        self.st -= dt_h * self.s0
        self.sums *= decay
        finite = np.isfinite(y)
        if np.count_nonzero(finite) == finite.size:  # the usual poll: no entry to mask
            self.s0 += weight
            self.sy += weight * y
        else:
            w = np.where(finite, weight, 0.0)
            self.s0 += w
            self.sy += w * np.where(finite, y, 0.0)
        # The new sample sits at t = 0, so it adds nothing to st, stt or sty.

    def new_segment(self) -> None:
        """Close the current segment: keep its slope information, forget its level."""
        self._derived.clear()
        sxx, sxy = self._centred()
        self.pxx += sxx
        self.pxy += sxy
        self.sums[: _FIELDS.index("pxx")] = 0.0

    def _centred(self) -> tuple[FloatArray, FloatArray]:
        some = self.s0 > 0
        every = np.count_nonzero(some) == some.size  # the usual case: nothing to mask
        safe = self.s0 if every else np.where(some, self.s0, 1.0)
        sxx = self.stt - self.st**2 / safe
        sxy = self.sty - self.st * self.sy / safe
        if not every:  # a column without samples has no spread and no covariance
            sxx, sxy = np.where(some, sxx, 0.0), np.where(some, sxy, 0.0)
        return np.maximum(sxx, 0.0), sxy

    @property
    def time_spread_h2(self) -> FloatArray:
        """Weighted spread of sample times [h²]: how much evidence the slope rests on."""
        if "spread" not in self._derived:
            self._keep("spread", self.pxx + self._centred()[0])
        return self._derived["spread"]

    @property
    def slope_per_h(self) -> FloatArray:
        """The fitted slope [unit of y per hour]; NaN where there is no spread in time yet."""
        if "slope" not in self._derived:
            sxx, sxy = self._centred()
            den = self.pxx + sxx
            with np.errstate(invalid="ignore", divide="ignore"):
                self._keep("slope", np.where(den > 1e-12, (self.pxy + sxy) / den, np.nan))
        return self._derived["slope"]

    def _keep(self, name: str, value: FloatArray) -> None:
        """Cache a derived array until the next change; read-only, as its readers share it."""
        value.flags.writeable = False
        self._derived[name] = value

    @property
    def mean(self) -> FloatArray:
        """The weighted mean of the current segment's ``y``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.s0 > 0, self.sy / self.s0, np.nan)

    def state(self) -> dict[str, Any]:
        """Copies of the sums, which later polls change in place."""
        return {name: row.copy() for name, row in zip(_FIELDS, self.sums, strict=True)}

    def load(self, state: dict[str, Any]) -> None:
        size = self.s0.size
        sums = np.empty_like(self.sums)
        for row, name in enumerate(_FIELDS):
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != (size,):
                raise ValueError(f"trend field {name} has shape {value.shape}, expected {size}")
            sums[row] = value
        self._use(sums)
        self._derived.clear()
