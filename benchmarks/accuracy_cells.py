"""Ground truth for ``diagnostics_accuracy.py``: the validation cells, their duty and sensors.

Every cell is a PyBaMM SPMe model (with a contact resistance) from a published parameter set,
some aged through the parameters (loss of lithium inventory: less lithium in the electrodes at
the start; loss of active material: smaller active volume fraction), some at 15 or 35 °C. Each
is characterised as a commissioning test would (C/20 discharge from full: capacity and OCV
table; a 1-s 0.5C pulse at 50 % SOC: the DC pulse resistance), then driven through a BESS
duty and measured with sensors as they are.

PyBaMM is solved in two-hour chunks with only the knots where the current changes (a
drive-cycle ``Interpolant`` costs time in proportion to its number of knots at every
evaluation); a single cell's calibration charge is a CC-CV ``pybamm.Experiment`` to the cell's
own upper cut-off, so the current there is the cell's answer, not the duty's. Solutions are
cached as ``.npz`` under ``$BESS_EDGE_BENCH_CACHE`` (default: the temp dir), keyed by PyBaMM's
version, the cell, the solver settings, the exact current and the calibration charges.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
import pybamm

CHUNK_S = 7200
SOLVER = {"rtol": 1e-6, "atol": 1e-8}  # IDAKLU defaults (1e-4) leave ~2 mV of solver error
CACHE_VERSION = 3  # bump when solve() changes what it computes
VOLTAGE, DISCHARGED, OCV = (
    "Voltage [V]",
    "Discharge capacity [A.h]",
    "Bulk open-circuit voltage [V]",
)
CURRENT = "current_a"  # solve()'s own output: the current that flowed [A], > 0 charging
DAYS = 3
START_SOC_PCT = 55.0
# A calibration charge: CC at C/4, CV until C/20 as a BMS ends it, the hold capped at 3 h, in a
# window long enough for the CC from 30 % (2.8 h), the longest hold and a rest after.
CALIBRATION_C = 0.25
CALIBRATION_CUTOFF_C = 0.05
CALIBRATION_HOLD_S = 3 * 3600.0
CALIBRATION_WINDOW_S = 7 * 3600
# A calibration discharge (``duty(empty=...)``, not in the documented runs): C/10 of the label
# (what a BMS knows) from the day's regulation (~50 %) to the lower limit, 5-6 h, and a rest,
# in a 9-h window.
EMPTY_WINDOW_S = 9 * 3600


# Options a parameter set needs beyond SPMe with a contact resistance: MSMR_Example's electrodes
# are multi-species, multi-reaction (Verbrugge et al. 2017) curves, no published table.
MODEL_OPTIONS: dict[str, dict[str, object]] = {
    "MSMR_Example": {
        "open-circuit potential": "MSMR",
        "particle": "MSMR",
        "intercalation kinetics": "MSMR",
        "number of MSMR reactions": ("6", "4"),
    },
}


@dataclass(frozen=True)
class CellSpec:
    """One validation cell: a parameter set, how it aged and where it lives."""

    name: str
    parameter_set: str
    preset: str  # the bess-edge chemistry preset a user would pick
    temperature_c: float = 25.0
    lli: float = 0.0  # fraction of cyclable lithium lost
    lam_pe: float = 0.0  # fraction of positive active material lost (negative: more)
    lam_ne: float = 0.0
    contact_ohm: float = 0.002
    initial_soc: float = 1.0  # PyBaMM's SOC at the start of the duty (1 = full)

    def model(self) -> pybamm.BaseModel:
        options = {"contact resistance": "true", **MODEL_OPTIONS.get(self.parameter_set, {})}
        return pybamm.lithium_ion.SPMe(options=options)

    def parameters(self) -> pybamm.ParameterValues:
        p = pybamm.ParameterValues(self.parameter_set)
        kelvin = self.temperature_c + 273.15
        p.update(
            {
                "Ambient temperature [K]": kelvin,
                "Initial temperature [K]": kelvin,
                "Contact resistance [Ohm]": self.contact_ohm,
            },
            check_already_exists=False,
        )
        # Starting full and at rest sits on the cut-off; the duty stays below it anyway.
        p["Upper voltage cut-off [V]"] += 0.1
        p["Lower voltage cut-off [V]"] -= 0.1
        for electrode, loss in (("Positive", self.lam_pe), ("Negative", self.lam_ne)):
            key = f"{electrode} electrode active material volume fraction"
            p[key] = p[key] * (1.0 - loss)
        if self.lli:
            # PyBaMM derives the cyclable lithium from the initial concentrations when it sets
            # the initial SOC, so less lithium there is lithium lost (SEI growth, plating).
            for electrode in ("negative", "positive"):
                key = f"Initial concentration in {electrode} electrode [mol.m-3]"
                p[key] = p[key] * (1.0 - self.lli)
        return p

    @property
    def label_ah(self) -> float:
        """The nameplate capacity: what a user types into the config."""
        return float(pybamm.ParameterValues(self.parameter_set)["Nominal cell capacity [A.h]"])

    @property
    def upper_cutoff_v(self) -> float:
        """The parameter set's own charge limit (``parameters()`` raises it for the solver)."""
        return float(pybamm.ParameterValues(self.parameter_set)["Upper voltage cut-off [V]"])


@dataclass(frozen=True)
class Calibration:
    """A full charge from sample ``start`` (the last one before it) to ``end`` of a profile: CC
    at ``charge_a`` to ``limit_v``, that voltage held until the current falls to ``cutoff_a``
    (at most ``hold_s``), then a rest until ``end``. The profile holds NaN after ``start``.
    A negative ``charge_a`` is a discharge at that current to ``limit_v`` instead, no hold (a
    BMS's calibration discharge to its lower limit)."""

    start: int
    end: int
    charge_a: float
    cutoff_a: float
    limit_v: float
    hold_s: float


@dataclass(frozen=True)
class StringSpec:
    """Cells in series under one current (each simulated on its own)."""

    name: str
    cells: tuple[CellSpec, ...]
    weak_cell: int
    high_r_cell: int
    preset: str = "nmc"
    temperature_c: float = 25.0

    @property
    def label_ah(self) -> float:
        return self.cells[0].label_ah


def _string(name: str, parameter_set: str) -> StringSpec:
    # Positive active material lost (negative: more). Chen2020's C/20 capacity does not follow
    # the positive electrode alone (12 % of it lost: 5.141 Ah against 5.156-5.163 Ah), so the
    # weak cell 4 loses 12 % of both electrodes' material: 4.540 Ah, 12.0 % below the others.
    lam = (0.0, 0.02, -0.01, 0.03, 0.12, -0.02, 0.01, 0.0)
    soc = (0.97, 1.0, 0.99, 0.96, 1.0, 0.985, 0.95, 0.99)  # imbalance at the start
    # Contact resistances as a 5-Ah cell's (2 mΩ; cell 6: a loose busbar joint, 20 mΩ),
    # scaled to the cell's label: a smaller cell has a proportionally higher resistance.
    scale = 5.0 / float(pybamm.ParameterValues(parameter_set)["Nominal cell capacity [A.h]"])
    cells = tuple(
        CellSpec(
            f"string-{k}",
            parameter_set,
            "nmc",
            lam_pe=lam[k],
            lam_ne=lam[k] if k == 4 else 0.0,
            contact_ohm=(0.02 if k == 6 else 0.002) * scale,
            initial_soc=soc[k],
        )
        for k in range(8)
    )
    return StringSpec(name, cells, weak_cell=4, high_r_cell=6)


CELLS: tuple[CellSpec, ...] = (
    CellSpec("nmc", "Chen2020", "nmc"),
    CellSpec("nmc-aged-35c", "Chen2020", "nmc", temperature_c=35.0, lli=0.08, lam_ne=0.05),
    CellSpec("nmc532-15c", "Mohtat2020", "nmc", temperature_c=15.0),
    CellSpec("nca", "NCA_Kim2011", "nmc"),
    CellSpec("lfp", "Prada2013", "lfp"),
    CellSpec("lfp-aged-35c", "Prada2013", "lfp", temperature_c=35.0, lli=0.06, lam_pe=0.04),
)
STRINGS: tuple[StringSpec, ...] = (_string("nmc-string", "Chen2020"),)
# Cells kept out of the validation set: no estimator choice was made looking at them, so they
# show how the diagnostics do on physics they were not tuned on (``--held-out``).
HELD_OUT: tuple[CellSpec, ...] = (
    CellSpec("nmc-ecker", "Ecker2015", "nmc"),  # Kokam NMC/graphite pouch
    CellSpec("nmc-msmr", "MSMR_Example", "nmc"),  # half-cell curves of no published table
    CellSpec("nmc-5c", "Chen2020", "nmc", temperature_c=5.0),  # an unheated container in winter
)
HELD_OUT_STRINGS: tuple[StringSpec, ...] = (_string("ecker-string", "Ecker2015"),)


def _cache_path(
    spec: CellSpec,
    t_s: np.ndarray,
    current_a: np.ndarray,
    variables,
    calibrations: tuple[Calibration, ...],
) -> Path:
    key = hashlib.sha256()
    for part in (CACHE_VERSION, pybamm.__version__, spec, SOLVER, CHUNK_S, variables, calibrations):
        key.update(repr(part).encode())
    key.update(np.ascontiguousarray(t_s, dtype=np.float64).tobytes())
    key.update(np.ascontiguousarray(current_a, dtype=np.float64).tobytes())
    cache_dir = Path(os.environ.get("BESS_EDGE_BENCH_CACHE", tempfile.gettempdir()))
    return cache_dir / "bess-edge-pybamm" / f"{spec.name}-{key.hexdigest()[:24]}.npz"


def _pieces(
    n: int, calibrations: tuple[Calibration, ...]
) -> list[tuple[int, int, Calibration | None]]:
    """Samples 0..n-1 as (first, last, calibration or None): chunks of at most CHUNK_S
    between the calibration charges, each of those whole."""
    out: list[tuple[int, int, Calibration | None]] = []
    at = 0
    for cal in (*sorted(calibrations, key=lambda c: c.start), None):
        stop = cal.start if cal is not None else n - 1
        out += [(a, min(a + CHUNK_S, stop), None) for a in range(at, stop, CHUNK_S)]
        if cal is not None:
            out.append((cal.start, cal.end, cal))
            at = cal.end
    return out


def _current_driven(
    model: pybamm.BaseModel,
    params: pybamm.ParameterValues,
    t_s: np.ndarray,
    current_a: np.ndarray,
    initial_soc: float | None,
) -> pybamm.Solution:
    """PyBaMM driven by ``current_a`` at ``t_s`` (the first sample is the state's)."""
    # Knots only where the current changes: the piecewise-linear signal is the same.
    change = np.flatnonzero(np.diff(current_a))
    knots = np.unique(np.concatenate([[0, current_a.size - 1], change, change + 1]))
    chunk = params.copy()
    chunk["Current function [A]"] = pybamm.Interpolant(t_s[knots], -current_a[knots], pybamm.t)
    sim = pybamm.Simulation(model, parameter_values=chunk, solver=pybamm.IDAKLUSolver(**SOLVER))
    # The knots are stops: from a rest the solver's step grows to hours, and one step from a
    # rest to a rest would pass over a discharge between them (measured: a 0.5C, 40-min
    # discharge inside a 2-h chunk that moved no charge).
    return sim.solve(t_eval=t_s[knots], t_interp=t_s, initial_soc=initial_soc)


def _cc_cv(
    model: pybamm.BaseModel,
    params: pybamm.ParameterValues,
    cal: Calibration,
    initial_soc: float | None,
) -> pybamm.Solution:
    """The CC and CV phases of a calibration charge (or the CC discharge of a calibration
    discharge), timed from 0 at its start."""
    steps: tuple[str, ...] = (
        (f"Discharge at {-cal.charge_a} A until {cal.limit_v} V",)
        if cal.charge_a < 0
        else (
            f"Charge at {cal.charge_a} A until {cal.limit_v} V",
            f"Hold at {cal.limit_v} V for {cal.hold_s} seconds or until {cal.cutoff_a} A",
        )
    )
    experiment = pybamm.Experiment([steps], period="1 second")
    sim = pybamm.Simulation(
        model, parameter_values=params, experiment=experiment,
        solver=pybamm.IDAKLUSolver(**SOLVER),
    )  # fmt: skip
    return sim.solve(initial_soc=initial_soc)


def solve(
    spec: CellSpec,
    t_s: np.ndarray,
    current_a: np.ndarray,
    initial_soc: float,
    variables: tuple[str, ...] = (VOLTAGE, DISCHARGED),
    use_cache: bool = True,
    calibrations: tuple[Calibration, ...] = (),
) -> dict[str, np.ndarray]:
    """PyBaMM SPMe driven by ``current_a`` (> 0 charging, our convention) at 1-s times ``t_s``,
    and by voltage in the ``calibrations``: each of ``variables`` and CURRENT at each time
    (fewer if the cell hit a voltage limit)."""
    path = _cache_path(spec, t_s, current_a, (initial_soc, variables), calibrations)
    names = (*variables, CURRENT)
    if use_cache and path.exists():
        with np.load(path) as cached:
            return {name: cached[name] for name in names}
    params = spec.parameters()
    model = spec.model()
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    sol = None
    for start, end, cal in _pieces(t_s.size, calibrations):
        if sol is not None:
            model = model.set_initial_conditions_from(sol, inplace=False)
        soc0 = initial_soc if sol is None else None
        first = 0 if sol is None else 1  # a piece starts where the last one ended
        times = t_s[start : end + 1]
        if cal is None:
            amps = current_a[start : end + 1].copy()
            if sol is not None:
                amps[0] = out[CURRENT][-1][-1]  # what flowed there (NaN in a calibration)
            sol = _current_driven(model, params, times, amps, soc0)
            for name in variables:
                out[name].append(sol[name].entries[first:])
            solved = start + out[variables[0]][-1].size + first
            out[CURRENT].append(current_a[start + first : solved])
            if sol.t[-1] < t_s[end]:
                break  # a voltage limit ended the simulation
            continue
        charged = _cc_cv(model, params, cal, soc0)
        t_end = t_s[start] + float(charged.t[-1])
        if t_end >= t_s[end]:
            raise ValueError(f"{spec.name}: the calibration charge outlasts its window")
        during = times[first:][times[first:] <= t_end]
        for name in variables:
            out[name].append(np.interp(during, t_s[start] + charged.t, charged[name].entries))
        amps = -charged["Current [A]"].entries
        out[CURRENT].append(np.interp(during, t_s[start] + charged.t, amps))
        # The rest to the window's end, from where the CV phase stopped.
        model = model.set_initial_conditions_from(charged, inplace=False)
        rest_t = np.concatenate([[t_end], times[times > t_end]])
        sol = _current_driven(model, params, rest_t, np.zeros(rest_t.size), None)
        for name in variables:
            out[name].append(sol[name].entries[1:])
        out[CURRENT].append(np.zeros(out[variables[0]][-1].size))
        if sol.t[-1] < t_s[end]:
            break  # a voltage limit ended the simulation
    result = {name: np.concatenate(parts) for name, parts in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, **result)
    os.replace(partial, path)
    return result


@dataclass
class Truth:
    """What characterising a cell on a test bench gives."""

    capacity_ah: float  # C/20 from full to the lower cut-off
    grid_pct: np.ndarray
    ocv_v: np.ndarray  # OCV table on grid_pct (the electrodes' equilibrium voltage)
    r0_1s_ohm: float  # 1-s 0.5C discharge pulse at 50 % SOC
    extra: dict = field(default_factory=dict)


def characterise(spec: CellSpec, use_cache: bool) -> Truth:
    full = CellSpec(**{**spec.__dict__, "initial_soc": 1.0})
    t = np.arange(0.0, 26 * 3600.0, 10.0)
    guess = spec.label_ah * 1.3
    sol = solve(full, t, np.full(t.size, -guess / 20.0), 1.0, (DISCHARGED, OCV), use_cache)
    discharged, ocv = sol[DISCHARGED], sol[OCV]
    capacity = float(discharged[-1])
    soc = 100.0 * (1.0 - discharged / capacity)
    grid = np.linspace(0.0, 100.0, 41)
    table = np.interp(grid, soc[::-1], ocv[::-1])
    table = np.maximum.accumulate(table + np.arange(grid.size) * 1e-6)  # strictly increasing
    t = np.arange(0.0, 121.0, 1.0)
    pulse = np.where(t >= 61.0, -0.5 * capacity, 0.0)
    v = solve(full, t, pulse, 0.5, (VOLTAGE,), use_cache)[VOLTAGE]
    r0 = float((v[60] - v[61]) / (0.5 * capacity))  # the ramp ends at t = 61 s
    return Truth(capacity, grid, table, r0)


class _Duty:
    """Builds a 1-Hz current profile while tracking the SOC it implies."""

    def __init__(self, capacity_ah: float, soc_pct: float, rng: np.random.Generator) -> None:
        self.c = capacity_ah
        self.soc = soc_pct
        self.rng = rng
        self.blocks: list[np.ndarray] = []
        self.seconds = 0

    def add(self, current: np.ndarray) -> None:
        self.blocks.append(current)
        self.seconds += current.size
        self.soc += 100.0 * float(np.sum(current)) / 3600.0 / self.c

    def hold(self, seconds: float, c_rate: float) -> None:
        n = int(seconds)
        n += (self.seconds + n) % 2  # the next step starts at an even second (see duty)
        self.add(np.full(n, c_rate * self.c))

    def to_soc(self, target_pct: float, c_rate: float) -> None:
        self.hold(3600.0 * abs(target_pct - self.soc) / 100.0 / abs(c_rate), c_rate)

    def variable(self, seconds: int, mean_c: float, spread_c: float, setpoint_s: int) -> None:
        """Setpoints every ``setpoint_s`` around a mean (solar clouds, regulation), pulled
        back towards 50 % SOC when mean_c is zero."""
        out = np.empty(seconds)
        level = mean_c
        for k in range(0, seconds, setpoint_s):
            pull = 0.02 * (50.0 - self.soc) if mean_c == 0 else 0.0
            level = mean_c + pull + 0.7 * (level - mean_c - pull)
            level += spread_c * math.sqrt(1 - 0.49) * self.rng.standard_normal()
            out[k : k + setpoint_s] = level * self.c
            self.soc += 100.0 * level * min(setpoint_s, seconds - k) / 3600.0
        self.blocks.append(out)
        self.seconds += seconds

    def solar(self, target_pct: float) -> None:
        while self.soc < target_pct:
            self.variable(300, 0.25, 0.08, 60)

    def calibrate(self, limit_v: float) -> Calibration:
        """A CC-CV full charge in a fixed window (solve() finds its current); full after."""
        cal = Calibration(
            self.seconds - 1, self.seconds + CALIBRATION_WINDOW_S - 1, CALIBRATION_C * self.c,
            CALIBRATION_CUTOFF_C * self.c, limit_v, CALIBRATION_HOLD_S,
        )  # fmt: skip
        self.blocks.append(np.full(CALIBRATION_WINDOW_S, np.nan))
        self.seconds += CALIBRATION_WINDOW_S
        self.soc = 100.0
        return cal

    def discharge_to_empty(self, limit_v: float, current_a: float) -> Calibration:
        """A discharge at ``current_a`` to ``limit_v`` and a rest (solve() finds where it
        ends); the duty counts the cell as empty after it."""
        cal = Calibration(
            self.seconds - 1, self.seconds + EMPTY_WINDOW_S - 1, -current_a, 0.0, limit_v, 0.0
        )
        self.blocks.append(np.full(EMPTY_WINDOW_S, np.nan))
        self.seconds += EMPTY_WINDOW_S
        self.soc = 0.0
        return cal


def duty(
    capacity_ah: float,
    rng: np.random.Generator,
    low_pct: float = 15.0,
    high_pct: float = 85.0,
    calibration_pct: float = 99.0,
    limit_v: float | None = None,
    empty: tuple[int, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int, tuple[Calibration, ...]]:
    """Current [A] at 1 Hz from full: a C/4 discharge to START_SOC_PCT, then DAYS of a
    stationary-storage day; the index where the estimator starts and the calibration charges
    (for ``solve()``) are returned too.

    A day: a 2-h rest, a 0.5C morning discharge to 30 %, a rest, a cloudy solar charge to the
    day's top, a rest, 3 h of frequency regulation (10-s setpoints), an evening discharge, a
    3-h rest, a night charge back to START_SOC_PCT and regulation for the rest of the day. Every
    other day the top is a calibration charge: with ``limit_v``, CC at C/4 to that voltage, CV
    until C/20 (at most CALIBRATION_HOLD_S) and a rest, in a window of CALIBRATION_WINDOW_S;
    without (a string: one current through cells that reach the limit at different times),
    C/4 to 95 %, then C/10 and C/25 steps towards ``calibration_pct`` as a BMS's last steps.
    With ``empty`` (day, limit V, current A) that day's evening discharge is a calibration
    discharge instead: at that current to that voltage, and a rest (see EMPTY_WINDOW_S).
    Steps ramp from an odd to an even second, so a 2-s poll at even seconds sees the voltage
    before and right after each step: the 1-s response that ``characterise`` measures as the
    truth.
    """
    d = _Duty(capacity_ah, 100.0, rng)
    d.hold(600, 0.0)
    d.to_soc(START_SOC_PCT, -0.25)
    start = d.seconds
    d.hold(1200, 0.0)
    calibrations = []
    for day in range(DAYS):
        day_start = d.seconds
        d.hold(2 * 3600, 0.0)
        d.to_soc(30.0, -0.5)
        d.hold(3600, 0.0)
        if day % 2 == 1 and limit_v is not None:
            calibrations.append(d.calibrate(limit_v))
        elif day % 2 == 1:
            d.to_soc(95.0 * calibration_pct / 99.0, 0.25)
            d.to_soc(calibration_pct - 1.5, 0.1)
            d.to_soc(calibration_pct, 0.04)
        else:
            d.solar(high_pct)
        d.hold(5400, 0.0)
        d.variable(3 * 3600, 0.0, 0.2, 10)
        if empty is not None and day == empty[0]:
            calibrations.append(d.discharge_to_empty(empty[1], empty[2]))
        else:
            d.to_soc(low_pct, -0.4)
        d.hold(3 * 3600, 0.0)
        d.to_soc(START_SOC_PCT, 0.2)
        left = 24 * 3600 - (d.seconds - day_start)
        left -= left % 2
        if left > 0:
            d.variable(left, 0.0, 0.2, 10)
    current = np.concatenate(d.blocks)
    return np.arange(current.size, dtype=np.float64), current, start, tuple(calibrations)


@dataclass(frozen=True)
class Sensors:
    """A BMS's measurement chain (fractions of 1C for current)."""

    offset_c: float
    gain: float  # relative error of the current reading
    noise_c: float = 0.003
    resolution_c: float = 0.001
    voltage_noise_v: float = 0.001
    voltage_resolution_v: float = 0.001

    def current(self, true_a: np.ndarray, capacity_ah: float, rng) -> np.ndarray:
        i = true_a * (1.0 + self.gain) + self.offset_c * capacity_ah
        i = i + self.noise_c * capacity_ah * rng.standard_normal(true_a.size)
        step = self.resolution_c * capacity_ah
        return np.round(i / step) * step

    def voltage(self, true_v: np.ndarray, rng) -> np.ndarray:
        v = true_v + self.voltage_noise_v * rng.standard_normal(true_v.shape)
        return np.round(v / self.voltage_resolution_v) * self.voltage_resolution_v


def sensors_for(index: int) -> Sensors:
    """Offsets of ±2 % of 1C and gain errors of ±1 %, signs varying across the set."""
    return Sensors(offset_c=0.02 * (1 if index % 2 == 0 else -1), gain=0.01 * (-1) ** (index // 2))
