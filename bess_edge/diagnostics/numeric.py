"""NaN-aware reductions that stay cheap on small arrays.

numpy's ``nanmedian``/``nan_to_num`` cost tens of microseconds each through their generic
machinery; at 1 Hz for many devices those microseconds add up, so the few we need are here.
For the same reason the per-poll code tests a 1-D mask with ``np.count_nonzero(mask)`` rather
than ``mask.any()`` and lists its indices with ``mask.nonzero()[0]`` rather than
``np.flatnonzero(mask)``: the same answers at a third and a fifth of the cost (16 cells).
"""

from __future__ import annotations

import math

import numpy as np

from bess_edge.model import FloatArray


def finite_or(values: FloatArray, fill: float = 0.0) -> FloatArray:
    """``values`` with every NaN/inf replaced by ``fill``."""
    return np.where(np.isfinite(values), values, fill)


# Up to this size a full sort is cheaper than a partition (whose call costs a few us more).
SORT_MEDIAN_MAX = 256


def median(values: FloatArray) -> float:
    """Median of a non-empty array without NaN, equal to ``np.median`` bit for bit, at a
    twentieth of its cost on a 16-cell string (np.median's generic checks cost ~20 us)."""
    n = values.size
    half = n // 2
    if n <= SORT_MEDIAN_MAX:
        ordered = values.copy()  # np.sort's copy and sort without its wrapper (half the cost)
        ordered.sort()
    else:
        ordered = np.partition(values, (half - 1, half) if n % 2 == 0 else half)
    if n % 2:
        return float(ordered[half])
    return (float(ordered[half - 1]) + float(ordered[half])) / 2.0


def finite_median(values: FloatArray) -> float:
    """Median of the finite entries; NaN if there are none."""
    finite = values[np.isfinite(values)]
    return median(finite) if finite.size else math.nan


def finite_mean(values: FloatArray) -> float:
    """Mean of the finite entries; NaN if there are none (sum over count is what ``mean``
    computes, bit for bit, without its ~1.5 us of Python wrapper)."""
    finite = values[np.isfinite(values)]
    return float(finite.sum() / finite.size) if finite.size else math.nan


def finite_max(values: FloatArray) -> float:
    """Largest finite entry; NaN if there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else math.nan
