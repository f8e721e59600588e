"""Chemistry presets: the one place that knows what NMC, LFP and lead-acid cells look like.

The simulator, the estimators, the safety checks and the default alert rules all read these
numbers; a device's config names its chemistry and may override any field
(``[devices.chemistry_overrides]``). Values are per cell, SI units, and each group cites where it
comes from. They are typical values for stationary-storage cells, not a datasheet: a site should
override limits with its cells' datasheet.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from bess_edge.model import FloatArray


@dataclass(frozen=True, slots=True)
class Chemistry:
    """Per-cell parameters of one battery chemistry (SI units; SOC in percent)."""

    name: str
    # Open-circuit voltage against SOC, ascending SOC 0..100 %.
    ocv_soc_pct: tuple[float, ...]
    ocv_v: tuple[float, ...]
    nominal_voltage_v: float
    # Operating limits (a BMS trips at or beyond these).
    cell_voltage_min_v: float
    cell_voltage_max_v: float
    charge_temp_min_c: float
    charge_temp_max_c: float
    discharge_temp_min_c: float
    discharge_temp_max_c: float
    max_charge_c_rate: float  # continuous, 1/h
    max_discharge_c_rate: float
    # Equivalent-circuit parameters, as products with capacity so they scale with cell size:
    # R0 [Ω] ≈ r0_ohm_ah / capacity [Ah].
    r0_ohm_ah: float
    r1_ohm_ah: float
    tau1_s: float
    # Arrhenius-like resistance rise in the cold: R(T) = R(25 °C) * exp(r_temp_coeff * (25 - T)).
    r_temp_coeff_per_c: float
    # Cycle life: N(DoD) = cycle_life_ref * (dod_ref / DoD) ** cycle_life_exponent (Wöhler curve).
    cycle_life_ref: float
    dod_ref: float
    cycle_life_exponent: float
    end_of_life_soh_pct: float
    # Lumped thermal model of one cell with its share of the enclosure.
    mass_kg_per_ah: float
    specific_heat_j_kg_k: float
    # Temperature at which self-heating reactions start (thermal-runaway precursor region).
    self_heating_onset_c: float
    # Regions where the OCV curve is too flat to correct SOC from voltage (LFP plateau), percent.
    ocv_flat_regions_pct: tuple[tuple[float, float], ...] = ()
    coulombic_efficiency: float = 0.999
    # Where the OCV table came from: "preset" (a published cell of the chemistry), "config"
    # (chemistry_overrides), "file" (a commissioning or datasheet table), "learned".
    ocv_source: str = "preset"
    # Electrode materials the cells may be made of (families of diagnostics/electrode_ocp.py):
    # the pairs the electrode-level OCV model tries. Empty: no such model (lead-acid).
    positive_materials: tuple[str, ...] = ()
    negative_materials: tuple[str, ...] = ()
    # Posterior 1-sigma [V] of a learned table at each of its points (empty otherwise: the
    # table's error is then a constant by its source, see diagnostics/soc.py).
    ocv_sigma_v: tuple[float, ...] = ()

    def ocv(self, soc_pct: FloatArray | float) -> FloatArray:
        """Open-circuit voltage [V] at a state of charge [%] (linear interpolation, clipped)."""
        return np.asarray(np.interp(soc_pct, self.ocv_soc_pct, self.ocv_v))

    def soc_from_ocv(self, ocv_v: FloatArray | float) -> FloatArray:
        """State of charge [%] for a rested cell voltage [V]; ambiguous on flat plateaus."""
        return np.asarray(np.interp(ocv_v, self.ocv_v, self.ocv_soc_pct))

    def docv_dsoc(self, soc_pct: FloatArray | float) -> FloatArray:
        """Slope of the OCV curve [V per % SOC], the observability of SOC from voltage."""
        soc = np.asarray(self.ocv_soc_pct)
        slopes = np.diff(np.asarray(self.ocv_v)) / np.diff(soc)
        idx = np.clip(np.searchsorted(soc, soc_pct, side="right") - 1, 0, slopes.size - 1)
        return slopes[idx]

    def r0_ohm(self, capacity_ah: float) -> float:
        return self.r0_ohm_ah / capacity_ah

    def cycle_life(self, dod: FloatArray | float) -> FloatArray:
        """Cycles to end of life at a depth of discharge (fraction 0..1)."""
        dod = np.clip(np.asarray(dod, dtype=np.float64), 1e-3, 1.0)
        return self.cycle_life_ref * (self.dod_ref / dod) ** self.cycle_life_exponent

    def with_overrides(self, overrides: dict[str, Any]) -> Chemistry:
        """A copy with some fields replaced (from a device's ``chemistry_overrides``)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown chemistry field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
        }
        if "ocv_v" in values:
            values.setdefault("ocv_source", "config")
        return dataclasses.replace(self, **values)

    def with_ocv_table(
        self,
        soc_pct: FloatArray,
        ocv_v: FloatArray,
        source: str,
        sigma_v: FloatArray | None = None,
    ) -> Chemistry:
        """A copy counting with this cell's own OCV table (``sigma_v``: its 1-sigma per point,
        for a learned one); the plateau regions are re-derived from its slope (below 1 mV per
        %, where 4 mV of model error is > 4 % of SOC)."""
        soc, ocv = check_ocv_table(soc_pct, ocv_v)
        slope = np.diff(ocv) / np.diff(soc)
        return dataclasses.replace(
            self,
            ocv_soc_pct=tuple(float(x) for x in soc),
            ocv_v=tuple(float(x) for x in ocv),
            ocv_flat_regions_pct=flat_regions(soc, slope, FLAT_SLOPE_V_PER_PCT),
            ocv_source=source,
            ocv_sigma_v=() if sigma_v is None else tuple(float(x) for x in sigma_v),
        )


# NMC (LiNiMnCoO2 / graphite). OCV: the LG M50 NMC811 cell of Chen et al., "Development of
# Experimental Techniques for Parameterization of Multi-scale Lithium-ion Battery Models",
# J. Electrochem. Soc. 167 (2020) 080534, read at 10 % steps. Limits: typical NMC datasheets
# (2.5-4.2 V; charge 0-45 °C). Cycle life: ~3,000 cycles at 80 % DoD, Wöhler exponent 1.5 from
# Xu et al., "Modeling of Lithium-Ion Battery Degradation for Cell Life Assessment",
# IEEE Trans. Smart Grid 9 (2018) 1131. Self-heating onset ~ 120 °C (SEI decomposition,
# Feng et al., Energy Storage Materials 10 (2018) 246).
NMC = Chemistry(
    name="nmc",
    ocv_soc_pct=(0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
    ocv_v=(3.00, 3.36, 3.46, 3.56, 3.62, 3.67, 3.73, 3.81, 3.90, 3.99, 4.08, 4.18),
    nominal_voltage_v=3.65,
    cell_voltage_min_v=2.8,
    cell_voltage_max_v=4.2,
    charge_temp_min_c=0.0,
    charge_temp_max_c=45.0,
    discharge_temp_min_c=-20.0,
    discharge_temp_max_c=60.0,
    max_charge_c_rate=1.0,
    max_discharge_c_rate=2.0,
    r0_ohm_ah=0.08,
    r1_ohm_ah=0.04,
    tau1_s=40.0,
    r_temp_coeff_per_c=0.025,
    cycle_life_ref=3000.0,
    dod_ref=0.8,
    cycle_life_exponent=1.5,
    end_of_life_soh_pct=80.0,
    mass_kg_per_ah=0.0145,
    specific_heat_j_kg_k=1000.0,
    self_heating_onset_c=120.0,
    # Layered oxides on graphite: NMC of every ratio and NCA give similar curves, and a user
    # of an NCA cell picks this preset.
    positive_materials=("nmc", "nca"),
    negative_materials=("graphite",),
)

# LFP (LiFePO4 / graphite). OCV: the plateau shape of Prada et al., "A Simplified Electrochemical
# and Thermal Aging Model of LiFePO4-Graphite Li-ion Batteries", J. Electrochem. Soc. 160 (2013)
# A616, as 280 Ah prismatic stationary cells show it (3.2-3.35 V between 10 and 90 %). Limits:
# typical LFP datasheets (2.5-3.65 V; charge 0-55 °C). Cycle life: ~6,000 cycles at 80 % DoD,
# exponent 1.3 (Naumann et al., J. Energy Storage 17 (2018) 153 for calendar/cycle ageing of
# LFP). Self-heating onset ~ 150 °C (Feng et al. 2018, as above).
LFP = Chemistry(
    name="lfp",
    ocv_soc_pct=(0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 100),
    ocv_v=(
        2.50,
        2.95,
        3.12,
        3.20,
        3.24,
        3.26,
        3.28,
        3.29,
        3.30,
        3.31,
        3.32,
        3.34,
        3.38,
        3.45,
        3.60,
    ),
    nominal_voltage_v=3.2,
    cell_voltage_min_v=2.5,
    cell_voltage_max_v=3.65,
    charge_temp_min_c=0.0,
    charge_temp_max_c=55.0,
    discharge_temp_min_c=-20.0,
    discharge_temp_max_c=60.0,
    max_charge_c_rate=0.5,
    max_discharge_c_rate=1.0,
    r0_ohm_ah=0.07,
    r1_ohm_ah=0.035,
    tau1_s=60.0,
    r_temp_coeff_per_c=0.03,
    cycle_life_ref=6000.0,
    dod_ref=0.8,
    cycle_life_exponent=1.3,
    end_of_life_soh_pct=80.0,
    mass_kg_per_ah=0.0195,
    specific_heat_j_kg_k=1100.0,
    self_heating_onset_c=150.0,
    ocv_flat_regions_pct=((20.0, 90.0),),
    positive_materials=("lfp",),
    negative_materials=("graphite",),
)

# Lead-acid (flooded/VRLA, per 2 V cell). OCV ≈ electrolyte specific gravity + 0.84 V, which gives
# about 1.95 V empty to 2.12 V full (Linden's Handbook of Batteries, 4th ed., ch. 16). Limits:
# 1.75 V end-of-discharge, 2.40 V absorption. Cycle life: ~1,200 cycles at 50 % DoD, exponent
# 1.1 (Wenzl et al., J. Power Sources 144 (2005) 373, life-prediction of lead-acid in RE systems).
LEAD_ACID = Chemistry(
    name="lead_acid",
    ocv_soc_pct=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
    ocv_v=(1.95, 1.97, 1.98, 2.00, 2.02, 2.03, 2.05, 2.07, 2.08, 2.10, 2.12),
    nominal_voltage_v=2.0,
    cell_voltage_min_v=1.75,
    cell_voltage_max_v=2.45,
    charge_temp_min_c=-10.0,
    charge_temp_max_c=45.0,
    discharge_temp_min_c=-20.0,
    discharge_temp_max_c=50.0,
    max_charge_c_rate=0.2,
    max_discharge_c_rate=0.5,
    r0_ohm_ah=0.06,
    r1_ohm_ah=0.04,
    tau1_s=120.0,
    r_temp_coeff_per_c=0.015,
    cycle_life_ref=1200.0,
    dod_ref=0.5,
    cycle_life_exponent=1.1,
    end_of_life_soh_pct=80.0,
    mass_kg_per_ah=0.06,
    specific_heat_j_kg_k=900.0,
    self_heating_onset_c=70.0,  # thermal runaway of VRLA starts with charge at high temperature
    coulombic_efficiency=0.95,
)

PRESETS: dict[str, Chemistry] = {c.name: c for c in (NMC, LFP, LEAD_ACID)}


def get_chemistry(name: str, overrides: dict[str, Any] | None = None) -> Chemistry:
    """The preset called ``name`` (case-insensitive), with a device's overrides applied."""
    try:
        preset = PRESETS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown chemistry {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
    return preset.with_overrides(overrides) if overrides else preset


def override_problems(preset: Chemistry, overrides: dict[str, Any]) -> list[tuple[str, str]]:
    """(field or "", reason) for overrides that would only fail in the poll loop: a value not
    typed like the preset's field, not finite, or OCV tables that do not rise."""
    hints = typing.get_type_hints(Chemistry)
    problems: list[tuple[str, str]] = []
    for key, value in overrides.items():
        if key not in hints or key == "name":
            continue  # with_overrides names the unknown ones
        try:
            TypeAdapter(hints[key]).validate_python(_tuples(value), strict=True)
        except ValidationError:
            example = getattr(preset, key)
            problems.append((key, f"must be like the preset's {example!r} (got {value!r})"))
        else:
            if not all(math.isfinite(x) for x in _numbers(value)):
                problems.append((key, f"must be finite (got {value!r})"))
    if problems:
        return problems
    try:
        merged = preset.with_overrides(overrides)
    except (ValueError, TypeError) as exc:
        return [("", str(exc))]
    soc, ocv = merged.ocv_soc_pct, merged.ocv_v
    if len(soc) != len(ocv) or len(soc) < 2:
        problems.append(("", "ocv_soc_pct and ocv_v must have the same length, at least 2"))
    elif any(b <= a for table in (soc, ocv) for a, b in itertools.pairwise(table)):
        problems.append(("", "ocv_soc_pct and ocv_v must both rise strictly"))
    if merged.cell_voltage_min_v >= merged.cell_voltage_max_v:
        problems.append(("", "cell_voltage_min_v must be below cell_voltage_max_v"))
    return problems


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, list | tuple):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, int | float) else []


# A plateau is where the OCV rises less than this [V per %]: 4 mV of model error is then more
# than 4 % of SOC, and a voltage only says "on the plateau".
FLAT_SLOPE_V_PER_PCT = 0.001
# A flat stretch shorter than this [% SOC] is a kink of the table, not a plateau.
MIN_PLATEAU_PCT = 10.0


def flat_regions(
    soc_pct: FloatArray, slope_v_per_pct: FloatArray, below: float
) -> tuple[tuple[float, float], ...]:
    """SOC ranges [%] of consecutive table segments whose slope is below ``below``."""
    regions: list[tuple[float, float]] = []
    start = None
    for k, is_flat in enumerate([*(slope_v_per_pct < below), False]):
        if is_flat and start is None:
            start = k
        elif not is_flat and start is not None:
            if soc_pct[k] - soc_pct[start] >= MIN_PLATEAU_PCT:
                regions.append((float(soc_pct[start]), float(soc_pct[k])))
            start = None
    return tuple(regions)


def check_ocv_table(soc_pct: FloatArray, ocv_v: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The table as float arrays, or ValueError saying what is wrong with it."""
    soc = np.asarray(soc_pct, dtype=np.float64)
    ocv = np.asarray(ocv_v, dtype=np.float64)
    if soc.ndim != 1 or soc.shape != ocv.shape or soc.size < 3:
        raise ValueError("an OCV table needs at least 3 rows of soc_pct, ocv_v")
    if not (np.isfinite(soc).all() and np.isfinite(ocv).all()):
        raise ValueError("an OCV table must not have empty or non-numeric values")
    if np.any(np.diff(soc) <= 0) or soc[0] > 0.0 + 1e-9 or soc[-1] < 100.0 - 1e-9:
        raise ValueError("soc_pct must rise strictly and span 0 to 100 %")
    if np.any(np.diff(ocv) <= 0):
        raise ValueError("ocv_v must rise strictly with SOC (the SOC of a voltage must be unique)")
    if ocv[0] < 0.5 or ocv[-1] > 6.0:
        raise ValueError(f"ocv_v {ocv[0]:g}..{ocv[-1]:g} V is not the OCV of one cell")
    return soc, ocv


OCV_TABLE_HEADER = ("soc_pct", "ocv_v")


def read_ocv_table(path: str | Path) -> tuple[FloatArray, FloatArray]:
    """A per-cell OCV table from CSV: a ``soc_pct,ocv_v`` header, one row per point, ``#``
    comments allowed. ValueError names the file, the line and the reason."""
    soc: list[float] = []
    ocv: list[float] = []
    try:
        with open(path, newline="") as f:
            rows = csv.reader(line for line in f if not line.lstrip().startswith("#"))
            header = next(rows, None)
            if header is None or tuple(h.strip() for h in header) != OCV_TABLE_HEADER:
                raise ValueError(f"{path}: the first row must be the header soc_pct,ocv_v")
            for line, row in enumerate(rows, start=2):
                try:
                    a, b = (float(x) for x in row)
                except ValueError:
                    raise ValueError(f"{path}: row {line} is not two numbers: {row}") from None
                soc.append(a)
                ocv.append(b)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the OCV table: {exc.strerror}") from None
    try:
        return check_ocv_table(np.array(soc), np.array(ocv))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_ocv_table(path: str | Path) -> tuple[FloatArray, FloatArray]:
    """:func:`read_ocv_table`, read once per version of the file (its modification time and
    size): the config is loaded again at every reload and every threshold edit in the API, and
    checking it and building the device's chemistry each need the table. The arrays are
    read-only, being shared."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the OCV table: {exc.strerror}") from None
    return _ocv_table_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _ocv_table_version(path: str, mtime_ns: int, size: int) -> tuple[FloatArray, FloatArray]:
    soc, ocv = read_ocv_table(path)
    soc.setflags(write=False)
    ocv.setflags(write=False)
    return soc, ocv


def write_ocv_table(path: str | Path, soc_pct: FloatArray, ocv_v: FloatArray, note: str) -> None:
    """Write a table :func:`read_ocv_table` reads back; ``note`` goes in a comment line."""
    soc, ocv = check_ocv_table(soc_pct, ocv_v)
    with open(path, "w", newline="") as f:
        for line in note.splitlines():
            f.write(f"# {line}\n")
        writer = csv.writer(f)
        writer.writerow(OCV_TABLE_HEADER)
        for a, b in zip(soc, ocv, strict=True):
            writer.writerow([f"{a:.3f}", f"{b:.5f}"])
