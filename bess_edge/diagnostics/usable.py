"""What a series string can deliver: usable capacity and energy, what balancing would recover,
energy-based SOH and an SOH forecast with a band that stays wide while evidence is thin.

Energy SOH is the energy of a full balanced 0.5C discharge now against the rated cell's: the
capacity fade and the resistance rise (the I·R0 loss) together, as an energy contract sees it.

A series string stops discharging when its first cell is empty and charging when its first is
full. With per-cell SOC s_k and capacity C_k = r_k·Q (Q the string's average cell, r_k from
cell_capacity.py) the charge in cell k is C_k·s_k/100, so

    usable = min_k C_k·s_k/100 + min_k C_k·(100 - s_k)/100
    recoverable by balancing = min_k C_k - usable

(balancing can at best make the weakest cell the limit at both ends). What ageing took is the
rated capacity minus Q, and what a weak cell takes is Q - min_k C_k: three numbers, three
remedies. A cell whose ratio is not known yet counts as the average cell with a sigma of
UNKNOWN_RATIO_SIGMA. The cells' SOC errors are mostly one error (the table's bias, Q's and the
offset's, which the string's own SOC sigma measures): where two cells limit the two ends it
enters with opposite signs and cancels but for their capacities' difference, and what is each
cell's own is its SOC sigma beyond that common part plus its SOC relative to the string's
(cell_capacity.relative_soc_var).

Usable energy is the usable charge times the mean OCV over the window it spans. Its sigma
counts the usable capacity's and the OCV table's error over that window, taken as one bias
(a table's error at neighbouring SOCs moves together: the mean of the sigmas, not their
root-sum-square). A SOC error common to the cells moves both ends of the window alike and
leaves it where it is, so it enters through the usable capacity only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.cell_capacity import relative_soc_var
from bess_edge.diagnostics.soc import ocv_table_error_v
from bess_edge.model import FloatArray

# Capacity fade of stationary Li-ion without evidence, a prior and not a measurement: about
# 2 %/year, 0.5-5 %/year as the 80 % band (field data of home storage systems, Figgener et al.,
# Nature Energy 9 (2024) 1438: roughly 2-3 %/year; LFP calendar ageing, Naumann et al.,
# J. Energy Storage 17 (2018) 153). Evidence narrows it (see soh_forecast).
PRIOR_FADE_PCT_PER_YEAR = 2.0
PRIOR_FADE_BAND_PCT_PER_YEAR = (0.5, 5.0)
FORECAST_YEARS = (1.0, 5.0, 10.0)
# z of the 10th/90th percentiles of a normal distribution.
Z80 = 1.2816
# A cell's capacity relative to its string before its own was measured: new cells of one batch
# are within 1-2 %, a string in service spreads further; 5 % as the sigma of that assumption.
UNKNOWN_RATIO_SIGMA = 0.05


@dataclass
class StringCapacity:
    usable_capacity_ah: float = math.nan
    usable_capacity_uncertainty_ah: float = math.nan
    recoverable_capacity_ah: float = math.nan
    usable_energy_wh: float = math.nan
    usable_energy_uncertainty_wh: float = math.nan
    soh_energy_pct: float = math.nan
    soh_energy_uncertainty_pct: float = math.nan


def string_capacity(
    chemistry: Chemistry,
    capacity_ah: float,
    capacity_sigma_ah: float,
    nominal_capacity_ah: float,
    cell_soc_pct: FloatArray,
    cell_soc_sigma_pct: FloatArray,
    string_soc_sigma_pct: float,
    cell_ratio: FloatArray,
    cell_ratio_sigma: FloatArray,
    series_cells: int,
    cell_r0_ohm: float,
    cell_r0_rel_sigma: float,
) -> StringCapacity:
    """Usable capacity and energy of the string now, from Q [Ah], each cell's SOC [%] and its
    capacity ratio to Q (NaN: not measured); NaN without a capacity estimate. The string's SOC
    sigma is the part of the cells' that they share (NaN: none is). ``cell_r0_ohm`` NaN: the
    preset's R0, its whole I·R0 loss counted as uncertain (``cell_r0_rel_sigma`` is then
    ignored)."""
    out = StringCapacity()
    ok = np.isfinite(cell_soc_pct)
    if not (math.isfinite(capacity_ah) and np.count_nonzero(ok) and series_cells):
        return out
    known = np.isfinite(cell_ratio)
    ratio = np.where(known, cell_ratio, 1.0)[ok]
    ratio_sigma = np.where(known, cell_ratio_sigma, UNKNOWN_RATIO_SIGMA)[ok]
    soc, soc_sigma = cell_soc_pct[ok], cell_soc_sigma_pct[ok]
    below, above = ratio * soc / 100.0, ratio * (100.0 - soc) / 100.0  # in units of Q
    j, m = int(np.argmin(below)), int(np.argmin(above))
    share = float(below[j] + above[m])
    out.usable_capacity_ah = capacity_ah * share
    # (max: one cell limiting both ends leaves 0 less a rounding error)
    out.recoverable_capacity_ah = max(
        capacity_ah * float(np.min(ratio)) - out.usable_capacity_ah, 0.0
    )
    mean_soc = float(np.mean(soc))
    if j == m:  # one cell limits both ends: its SOC cancels, only its capacity counts
        var = ratio_sigma[j] ** 2
    else:
        common = float(np.nan_to_num(min(string_soc_sigma_pct, soc_sigma[j], soc_sigma[m])))
        ends = np.array([j, m])
        table_v = float(ocv_table_error_v(chemistry, mean_soc))
        own_var_j, own_var_m = (
            soc_sigma[ends] ** 2
            - common**2
            + relative_soc_var(chemistry, soc[ends], mean_soc, table_v)
        )
        var = (
            (soc[j] * ratio_sigma[j]) ** 2
            + ratio[j] ** 2 * own_var_j
            + ((100.0 - soc[m]) * ratio_sigma[m]) ** 2
            + ratio[m] ** 2 * own_var_m
            + ((ratio[j] - ratio[m]) * common) ** 2
        ) / 100.0**2
    out.usable_capacity_uncertainty_ah = capacity_ah * math.hypot(
        share * capacity_sigma_ah / capacity_ah, math.sqrt(var)
    )
    # The window of the average cell's SOC the usable charge spans.
    grid = np.linspace(mean_soc - 100.0 * below[j], mean_soc + 100.0 * above[m], 11)
    window_ocv_v = float(np.mean(chemistry.ocv(grid)))
    window_ocv_sigma_v = float(np.mean(ocv_table_error_v(chemistry, grid)))
    out.usable_energy_wh = series_cells * out.usable_capacity_ah * window_ocv_v
    out.usable_energy_uncertainty_wh = series_cells * math.hypot(
        window_ocv_v * out.usable_capacity_uncertainty_ah,
        out.usable_capacity_ah * window_ocv_sigma_v,
    )
    ocv = _mean_ocv_v(chemistry)
    current = 0.5 * nominal_capacity_ah
    rated_wh = nominal_capacity_ah * (ocv - current * chemistry.r0_ohm(nominal_capacity_ah))
    if math.isfinite(cell_r0_ohm):
        r0, r0_sigma = cell_r0_ohm, cell_r0_ohm * cell_r0_rel_sigma
    else:
        r0 = r0_sigma = chemistry.r0_ohm(nominal_capacity_ah)
    delivered_v = ocv - current * r0
    out.soh_energy_pct = 100.0 * capacity_ah * delivered_v / rated_wh
    out.soh_energy_uncertainty_pct = out.soh_energy_pct * math.hypot(
        capacity_sigma_ah / capacity_ah, current * r0_sigma / delivered_v
    )
    return out


@functools.lru_cache(maxsize=32)
def _mean_ocv_v(chemistry: Chemistry) -> float:
    """Mean OCV [V] over 0-100 % SOC: the energy per Ah of a full slow discharge."""
    return float(np.mean(chemistry.ocv(np.linspace(0.0, 100.0, 101))))


def soh_forecast(
    soh_pct: float,
    soh_sigma_pct: float,
    fade_pct_per_year: float,
    fade_sigma_pct_per_year: float,
) -> tuple[list[float], list[float], list[float]]:
    """SOH [%] in 1, 5 and 10 years with its 10th and 90th percentiles.

    Without a measured fade the chemistry-agnostic prior (2 %/year, 0.5-5 %/year) is used; a
    measured fade is combined with it by inverse variance, so a trend fitted over a few days
    (a large sigma) barely moves the forecast and the band stays wide.
    """
    nan = [math.nan] * len(FORECAST_YEARS)
    if not math.isfinite(soh_pct):
        return nan, nan, nan
    lo, hi = PRIOR_FADE_BAND_PCT_PER_YEAR
    prior_sigma = (hi - lo) / (2.0 * Z80)
    fade, var = PRIOR_FADE_PCT_PER_YEAR, prior_sigma**2
    if math.isfinite(fade_pct_per_year) and fade_sigma_pct_per_year > 0:
        w_prior, w_meas = 1.0 / var, 1.0 / fade_sigma_pct_per_year**2
        fade = (w_prior * fade + w_meas * fade_pct_per_year) / (w_prior + w_meas)
        var = 1.0 / (w_prior + w_meas)
    now_sigma = soh_sigma_pct if math.isfinite(soh_sigma_pct) else 0.0
    mid, low, high = [], [], []
    for years in FORECAST_YEARS:
        centre = soh_pct - fade * years
        spread = Z80 * math.hypot(now_sigma, math.sqrt(var) * years)
        mid.append(centre)
        low.append(centre - spread)
        high.append(min(centre + spread, soh_pct + Z80 * now_sigma))
    return mid, low, high
