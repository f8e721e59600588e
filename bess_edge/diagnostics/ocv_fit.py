"""An OCV table fitted from a recorded slow charge/discharge or a set of rests.

The commissioning test every cell datasheet's OCV curve comes from, done with the site's own
recording: between the full end (the highest slow or rested voltage, a charge to the upper
limit) and the empty end (the lowest), the charge counter gives SOC; the voltage at low current,
less the ohmic drop R0·I, is the OCV. A charge and a discharge branch are averaged, which cancels
the (nearly symmetric) polarisation and leaves the mean of the hysteresis loop, the usual OCV
definition for tables (Plett, Battery Management Systems vol. 1, §2.10). Rests, when there are
any, count as their own branch: their voltage needs no correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bess_edge.model import FloatArray

# Points slower than C/10 are used: the polarisation beyond R0·I is then a few mV.
SLOW_C = 0.1
# Below this current [fraction of 1C] a sample is a rest.
REST_C = 0.01
GRID_PCT = np.linspace(0.0, 100.0, 41)
# The recording must span at least this share of the label capacity between its ends.
MIN_SPAN_OF_LABEL = 0.5


@dataclass(frozen=True)
class OcvFit:
    soc_pct: FloatArray
    ocv_v: FloatArray
    capacity_ah: float  # charge between the empty and the full end
    residual_v: float  # RMS of the points around the table
    points: int


def fit_ocv_table(
    t_s: FloatArray,
    cell_voltage_v: FloatArray,
    current_a: FloatArray,
    label_capacity_ah: float,
    r0_ohm: float,
) -> OcvFit:
    """Fit the table; ValueError says why the recording cannot give one."""
    t = np.asarray(t_s, dtype=np.float64)
    v = np.asarray(cell_voltage_v, dtype=np.float64)
    i = np.asarray(current_a, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(v) & np.isfinite(i)
    t, v, i = t[ok], v[ok], i[ok]
    if t.size < 10:
        raise ValueError("fewer than 10 complete samples (time, current, cell voltage)")
    if np.any(np.diff(t) <= 0):
        raise ValueError("sample times must rise strictly")
    # Charge counter [Ah], trapezoidal (the current between two samples is not known better).
    counter = np.concatenate([[0.0], np.cumsum(0.5 * (i[1:] + i[:-1]) * np.diff(t))]) / 3600.0
    slow = np.abs(i) <= SLOW_C * label_capacity_ah
    if slow.sum() < 10:
        raise ValueError(f"no slow segment: fewer than 10 samples below C/{1 / SLOW_C:g}")
    ocv = v - r0_ohm * i
    full, empty = np.argmax(np.where(slow, ocv, -np.inf)), np.argmin(np.where(slow, ocv, np.inf))
    capacity = abs(float(counter[full] - counter[empty]))
    if capacity < MIN_SPAN_OF_LABEL * label_capacity_ah:
        raise ValueError(
            f"the slow samples span {capacity:.3g} Ah between their highest and lowest voltage, "
            f"less than half the label's {label_capacity_ah:g} Ah: record a charge to the upper "
            "limit and a discharge to the lower one (or rests between them)"
        )
    soc = 100.0 * (counter - counter[empty]) / (counter[full] - counter[empty])
    inside = slow & (soc >= -0.5) & (soc <= 100.5)
    resting = np.abs(i) <= REST_C * label_capacity_ah
    branches = [inside & resting, inside & ~resting & (i > 0), inside & ~resting & (i < 0)]
    curves = [_binned(soc[b], ocv[b]) for b in branches]
    stacked = np.vstack(curves)
    with np.errstate(invalid="ignore"):
        table = np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)
    known = np.isfinite(table)
    if known.sum() < 3:
        raise ValueError("the slow samples cover fewer than 3 points of the SOC grid")
    table = np.interp(GRID_PCT, GRID_PCT[known], table[known])
    # Strictly rising (noise can make two neighbours of a plateau swap): a µV per step.
    table = np.maximum.accumulate(table + np.arange(table.size) * 1e-6)
    used = inside & np.isfinite(soc)
    residual = ocv[used] - np.interp(soc[used], GRID_PCT, table)
    rms = float(np.sqrt(np.mean(residual**2))) if residual.size else math.nan
    return OcvFit(GRID_PCT.copy(), table, capacity, rms, int(used.sum()))


def _binned(soc: FloatArray, ocv: FloatArray) -> FloatArray:
    """Median OCV of the points nearest each grid SOC (NaN where none is within half a step)."""
    out = np.full(GRID_PCT.size, np.nan)
    if soc.size == 0:
        return out
    half = 0.5 * (GRID_PCT[1] - GRID_PCT[0])
    index = np.clip(np.round(soc / (2 * half)).astype(int), 0, GRID_PCT.size - 1)
    near = np.abs(soc - GRID_PCT[index]) <= half
    for k in np.unique(index[near]):
        out[k] = float(np.median(ocv[near & (index == k)]))
    return out
