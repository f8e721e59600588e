"""Rests, and the current-sensor offset measured during them.

A rest is where the string carries no current, so the sensor reads its own offset there. A
fixed threshold on the raw current (or on the current minus an offset estimate that may be
wrong) hides rests exactly when the offset is large: with a +2 %-of-1C offset and a 2 % rest
band the string never "rests", no OCV anchor is taken and the offset is never learned. So a
rest is judged against the offset as it is known *with its uncertainty*: the band is 2 % of
1C plus twice the offset's sigma, and a current within 5 % of 1C of zero (what a sensor in spec,
up to ±3 % of 1C, may read at zero current) is a rest too, so an offset estimate that is
confidently wrong cannot hide the rests that would correct it. The current must also be steady
(a regulation signal crossing zero is not a rest).

Once a rest has lasted REST_OFFSET_AFTER_S, its mean current *is* the offset (the PCS is idle;
a BMS's own consumption, if it flows through the sensor, is counted with it, a few mA). Rests
are pooled with forgetting (the offset drifts with temperature), which gives a direct,
sign-correct measurement that the SOC filter and the capacity fit take as their offset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bess_edge.diagnostics.soc import INITIAL_BIAS_SIGMA_C

# At rest: within 2 % of 1C of the offset (a BMS's own idle threshold is similar, several sigma
# of a hall sensor's noise) widened by twice the offset's sigma; a rest ends after 3 polls
# outside it, not on one spike.
REST_C = 0.02
REST_END_POLLS = 3
# Steady: poll-to-poll change within this [fraction of 1C] (several sigma of sensor noise).
STEADY_C = 0.01
# The mean current of a rest is taken as the offset only after this long at rest.
REST_OFFSET_AFTER_S = 300.0
# A rest's mean current is good to this at least [fraction of 1C]: correlated noise,
# quantisation and the few mA a BMS may draw through the sensor.
REST_OFFSET_FLOOR_C = 0.0005
# Each new rest multiplies the weight of older ones by this (memory of ~20 rests).
REST_FORGETTING = 0.95


class RestTracker:
    """Rest time, and the offset [A] the rests measured (NaN before the first)."""

    def __init__(self, capacity_ah: float) -> None:
        self.capacity_ah = capacity_ah
        self.rest_s = 0.0
        self.busy_polls = 0
        self._last_current_a = math.nan
        self._rest_sum = 0.0  # sum and count of current samples of this rest, after the delay
        self._rest_n = 0.0
        self._w = 0.0  # pooled rests: total weight, weighted sum of means, of squared means
        self._wx = 0.0
        self._wxx = 0.0
        self.rests_measured = 0

    @property
    def offset_a(self) -> float:
        """The offset [A] the rests measured: pooled over past rests, else this rest's mean."""
        if self._w > 0:
            return self._wx / self._w
        return self._rest_mean()

    @property
    def offset_sigma_a(self) -> float:
        """Sigma of :attr:`offset_a`: the floor, plus the spread of the rests (the offset moved
        between them); twice the floor while only the first rest is under way."""
        floor = REST_OFFSET_FLOOR_C * self.capacity_ah
        if self._w <= 0:
            return 2.0 * floor if self._rest_n else math.nan
        mean = self._wx / self._w
        spread = math.sqrt(max(self._wxx / self._w - mean**2, 0.0))
        return math.hypot(floor, spread)

    def _rest_mean(self) -> float:
        return self._rest_sum / self._rest_n if self._rest_n else math.nan

    def band_a(self, offset_sigma_a: float) -> float:
        """Half-width [A] of the rest band around the offset known with ``offset_sigma_a``."""
        sigma = offset_sigma_a if math.isfinite(offset_sigma_a) else math.inf
        sigma = min(sigma, INITIAL_BIAS_SIGMA_C * self.capacity_ah)
        return REST_C * self.capacity_ah + 2.0 * sigma

    def update(
        self, current_a: float, dt_s: float, offset_a: float, offset_sigma_a: float
    ) -> tuple[bool, bool]:
        """One poll of the measured current [A]; ``offset_a`` ± ``offset_sigma_a`` is the best
        offset known elsewhere (the SOC filter's). Returns (resting, rest_just_ended)."""
        if math.isfinite(self.offset_a):
            offset_a, offset_sigma_a = self.offset_a, self.offset_sigma_a
        elif not math.isfinite(offset_a):
            offset_a = 0.0
        last, self._last_current_a = self._last_current_a, current_a
        steady = not math.isfinite(last) or abs(current_a - last) < STEADY_C * self.capacity_ah
        # Near the offset as known, or anywhere a sensor in spec could read at zero current:
        # a confidently wrong offset (the opposite sign) must not hide the rests that correct it.
        near = abs(current_a - offset_a) < self.band_a(offset_sigma_a) or abs(
            current_a
        ) < self.band_a(math.inf)
        resting = math.isfinite(current_a) and steady and near
        self.busy_polls = 0 if resting else self.busy_polls + 1
        if self.rest_s > 0.0 and 0 < self.busy_polls < REST_END_POLLS:
            return True, False  # a spike: the rest goes on, its samples are not used
        if resting:
            self.rest_s += max(dt_s, 1e-3)
            if self.rest_s >= REST_OFFSET_AFTER_S:
                self._rest_sum += current_a
                self._rest_n += 1.0
            return True, False
        if self.rest_s == 0.0:
            return False, False
        self.rest_s = 0.0
        self._close_rest()
        return False, True

    def _close_rest(self) -> None:
        mean = self._rest_mean()
        self._rest_sum, self._rest_n = 0.0, 0.0
        if not math.isfinite(mean):
            return
        self._w = REST_FORGETTING * self._w + 1.0
        self._wx = REST_FORGETTING * self._wx + mean
        self._wxx = REST_FORGETTING * self._wxx + mean**2
        self.rests_measured += 1

    def state(self) -> dict[str, Any]:
        return {
            "scalars": np.array(
                [self.rest_s, self._w, self._wx, self._wxx, float(self.rests_measured)]
            )
        }

    def load(self, state: dict[str, Any]) -> None:
        values = [float(v) for v in state["scalars"]]
        if len(values) != 5:
            raise ValueError(f"rest state has {len(values)} values, expected 5")
        self.rest_s, self._w, self._wx, self._wxx = values[:4]
        self.rests_measured = int(values[4])
