"""A simulated BMS: a series string of equivalent-circuit cells, the daemon's default device.

Each cell is OCV(SOC) + R0 + one RC pair with its own capacity, resistance and initial SOC drawn
around the chemistry preset; a lumped thermal model per cell exchanges heat with the ambient and
its neighbours. Faults are injected from config at a simulated time, so the demo, the tests and
the benchmarks exercise the real pipeline with nothing but a config file.

:class:`SimulatedString` is the physics alone (no I/O) so that the CAN and Modbus simulators
can publish the same state on a wire.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from bess_edge.drivers.base import Driver, DriverError
from pydantic import BaseModel, ConfigDict, Field

from bess_edge.chemistry import Chemistry
from bess_edge.model import FloatArray, Reading, now_ms


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_s: float = Field(0.0, ge=0)  # simulated seconds after start


class SelfDischargeFault(_Fault):
    kind: Literal["self_discharge"]
    cell: int = Field(ge=0)
    current_a: float = Field(gt=0)  # internal leak current of that cell


class ResistanceRiseFault(_Fault):
    kind: Literal["resistance_rise"]
    cell: int = Field(ge=0)
    per_hour: float = Field(gt=0)  # R0 grows by this fraction of its value per simulated hour


class OverTemperatureFault(_Fault):
    kind: Literal["over_temperature"]
    cell: int = Field(ge=0)
    heat_w: float = Field(gt=0)  # extra heat released inside that cell


class StuckSensorFault(_Fault):
    kind: Literal["stuck_sensor"]
    cell: int = Field(ge=0)
    sensor: Literal["voltage", "temperature"] = "voltage"


class CommsDropoutFault(_Fault):
    kind: Literal["comms_dropout"]
    duration_s: float = Field(gt=0)
    # "block": the read blocks the whole event loop (a synchronous call without a timeout, the
    # classic driver bug) until the drop-out ends; what the systemd watchdog exists to catch.
    mode: Literal["error", "hang", "garbage", "block"] = "error"


Fault = Annotated[
    SelfDischargeFault
    | ResistanceRiseFault
    | OverTemperatureFault
    | StuckSensorFault
    | CommsDropoutFault,
    Field(discriminator="kind"),
]


class SimOptions(BaseModel):
    """``[devices.options]`` of a ``driver = "sim"`` device."""

    model_config = ConfigDict(extra="forbid")

    cells: int = Field(16, ge=1, le=20_000)
    temperature_sensors: int | None = Field(None, ge=1)  # default: one per cell
    profile: Literal["idle", "constant", "daily", "regulation"] = "daily"
    current_a: float = 0.0  # the "constant" profile's current, > 0 charging
    c_rate: float = Field(0.2, ge=0, le=5)  # amplitude of "daily" and "regulation", 1/h
    day_length_s: float = Field(86_400.0, gt=0)  # one "daily" cycle, simulated seconds
    initial_soc_pct: float = Field(50.0, ge=0, le=100)
    soc_spread_pct: float = Field(1.0, ge=0)
    capacity_spread_pct: float = Field(1.5, ge=0)
    resistance_spread_pct: float = Field(5.0, ge=0)
    ambient_c: float = 25.0
    time_scale: float = Field(1.0, gt=0)  # simulated seconds per wall-clock second
    voltage_noise_v: float = Field(0.001, ge=0)
    current_noise_a: float = Field(0.05, ge=0)
    current_offset_a: float = 0.0  # a biased current sensor
    temperature_noise_c: float = Field(0.05, ge=0)
    seed: int | None = None
    faults: list[Fault] = []


class SimulatedString:
    """The physics of N series cells: :meth:`advance` integrates, :meth:`measure` reads."""

    def __init__(self, options: SimOptions, chemistry: Chemistry, capacity_ah: float) -> None:
        self.options = options
        self.chemistry = chemistry
        n = options.cells
        for fault in options.faults:
            if not isinstance(fault, CommsDropoutFault) and fault.cell >= n:
                raise ValueError(f"fault {fault.kind} names cell {fault.cell}; the string has {n}")
        self.rng = np.random.default_rng(options.seed)
        spread = self.rng.standard_normal
        self.capacity_ah: FloatArray = capacity_ah * (
            1 + options.capacity_spread_pct / 100 * spread(n)
        )
        self.r0_ohm: FloatArray = chemistry.r0_ohm(capacity_ah) * (
            1 + options.resistance_spread_pct / 100 * spread(n)
        )
        self.r1_ohm: FloatArray = chemistry.r1_ohm_ah / capacity_ah * np.ones(n)
        self.soc: FloatArray = np.clip(
            options.initial_soc_pct + options.soc_spread_pct * spread(n), 0.0, 100.0
        )
        self.v_rc: FloatArray = np.zeros(n)
        self.temperature_c: FloatArray = np.full(n, options.ambient_c)
        heat_capacity = chemistry.mass_kg_per_ah * capacity_ah * chemistry.specific_heat_j_kg_k
        self.heat_capacity_j_k = heat_capacity
        self.cooling_w_k = heat_capacity / 3600.0  # a one-hour thermal time constant to ambient
        self.neighbour_w_k = heat_capacity / 1800.0
        self.current_a = 0.0
        self.t_s = 0.0
        self._stuck: dict[tuple[str, int], float] = {}

    def profile_current(self) -> float:
        """The current [A] the site controller asks for at the present simulated time."""
        o = self.options
        amplitude = o.c_rate * float(np.mean(self.capacity_ah))
        if o.profile == "constant":
            return o.current_a
        if o.profile == "daily":
            phase = (self.t_s % o.day_length_s) / o.day_length_s
            if 0.08 <= phase < 0.28:
                return amplitude
            if 0.70 <= phase < 0.90:
                return -amplitude
            return 0.0
        if o.profile == "regulation":
            # Ornstein-Uhlenbeck current around a slow pull back to 50 % SOC, like a
            # frequency-regulation signal with state-of-charge management.
            theta = 60.0
            pull = 0.02 * (50.0 - float(np.mean(self.soc))) * amplitude
            return (
                pull
                + (self.current_a - pull) * math.exp(-1 / theta)
                + amplitude
                * 0.6
                * math.sqrt(1 - math.exp(-2 / theta))
                * float(self.rng.standard_normal())
            )
        return 0.0

    def advance(self, dt_s: float) -> None:
        """Integrate the string over ``dt_s`` simulated seconds (sub-steps of at most 1 s)."""
        steps = max(1, min(math.ceil(dt_s), 600))
        for _ in range(steps):
            self._step(dt_s / steps)

    def _step(self, dt: float) -> None:
        chem = self.chemistry
        current = self._protected(self.profile_current())
        self.current_a = current
        t_factor = np.exp(chem.r_temp_coeff_per_c * (25.0 - self.temperature_c))
        r0 = self._faulted_r0() * t_factor
        leak = np.zeros_like(self.soc)
        extra_heat = np.zeros_like(self.soc)
        for f in self.options.faults:
            if self.t_s < f.at_s:
                continue
            if isinstance(f, SelfDischargeFault):
                leak[f.cell] += f.current_a
            elif isinstance(f, OverTemperatureFault):
                extra_heat[f.cell] += f.heat_w
        efficiency = chem.coulombic_efficiency if current > 0 else 1.0
        self.soc = np.clip(
            self.soc + 100.0 * (current * efficiency - leak) * dt / 3600.0 / self.capacity_ah,
            0.0,
            100.0,
        )
        decay = math.exp(-dt / chem.tau1_s)
        self.v_rc = self.v_rc * decay + self.r1_ohm * t_factor * (1 - decay) * current
        heat = current**2 * r0 + self.v_rc**2 / (self.r1_ohm * t_factor) + extra_heat
        neighbours = np.zeros_like(self.temperature_c)
        neighbours[1:] += self.temperature_c[:-1] - self.temperature_c[1:]
        neighbours[:-1] += self.temperature_c[1:] - self.temperature_c[:-1]
        self.temperature_c = self.temperature_c + dt / self.heat_capacity_j_k * (
            heat
            - self.cooling_w_k * (self.temperature_c - self.options.ambient_c)
            + self.neighbour_w_k * neighbours
        )
        self.t_s += dt

    def _faulted_r0(self) -> FloatArray:
        r0 = self.r0_ohm.copy()
        for f in self.options.faults:
            if isinstance(f, ResistanceRiseFault) and self.t_s >= f.at_s:
                r0[f.cell] *= 1 + f.per_hour * (self.t_s - f.at_s) / 3600.0
        return r0

    def _protected(self, current: float) -> float:
        """What a BMS lets through: no charge when full, no discharge when empty."""
        if current > 0 and float(self.soc.max()) >= 99.5:
            return 0.0
        if current < 0 and float(self.soc.min()) <= 0.5:
            return 0.0
        return current

    def cell_voltages(self) -> FloatArray:
        """True terminal voltage of each cell [V] at the present current."""
        t_factor = np.exp(self.chemistry.r_temp_coeff_per_c * (25.0 - self.temperature_c))
        return (
            self.chemistry.ocv(self.soc)
            + self.current_a * self._faulted_r0() * t_factor
            + self.v_rc
        )

    def measure(self, ts_ms: int, device_id: str) -> Reading:
        """What the BMS reports now: the true state plus sensor noise and quantisation."""
        o = self.options
        noise = self.rng.standard_normal
        n = o.cells
        true_v = self.cell_voltages()
        cell_v = np.round(true_v + o.voltage_noise_v * noise(n), 3)  # 1 mV resolution
        sensors = o.temperature_sensors or n
        if sensors == n:  # a sensor per cell: each block is its cell (array_split costs ~50 us)
            block_c = self.temperature_c
        else:
            block_c = np.array([b.mean() for b in np.array_split(self.temperature_c, sensors)])
        temps = block_c + o.temperature_noise_c * noise(sensors)
        temps = np.round(temps, 1)  # 0.1 °C resolution
        for f in o.faults:
            if isinstance(f, StuckSensorFault) and self.t_s >= f.at_s:
                target = cell_v if f.sensor == "voltage" else temps
                index = min(f.cell, target.size - 1)
                key = (f.sensor, index)
                target[index] = self._stuck.setdefault(key, float(target[index]))
        current = round(self.current_a + o.current_offset_a + o.current_noise_a * float(noise()), 2)
        return Reading(
            device_id=device_id,
            ts_ms=ts_ms,
            pack_voltage_v=round(float(true_v.sum()) + 0.01 * float(noise()), 2),
            pack_current_a=current,
            bms_soc_pct=round(float(self.soc.mean()), 1),
            cell_voltage_v=cell_v,
            cell_temperature_c=temps,
        )

    def readings(
        self, duration_s: float, poll_s: float, device_id: str = "sim", start_ms: int = 0
    ) -> Iterator[Reading]:
        """Poll the string every ``poll_s`` simulated seconds for ``duration_s``, faster than
        real time: hours of operation in seconds, for tests and benchmarks."""
        polls = int(duration_s // poll_s)
        for k in range(1, polls + 1):
            self.advance(poll_s)
            yield self.measure(start_ms + round(k * poll_s * 1000), device_id)

    def active_dropout(self) -> CommsDropoutFault | None:
        for f in self.options.faults:
            if isinstance(f, CommsDropoutFault) and f.at_s <= self.t_s < f.at_s + f.duration_s:
                return f
        return None


class SimDriver(Driver):
    """``driver = "sim"``: the simulated string, advanced by wall-clock time × ``time_scale``."""

    Options = SimOptions
    options: SimOptions

    def __init__(self, device, options) -> None:  # type: ignore[no-untyped-def]
        super().__init__(device, options)
        self.string = SimulatedString(self.options, device.chemistry_preset(), device.capacity_ah)
        self._last_mono: float | None = None

    async def read(self) -> Reading:
        now = time.monotonic()
        if self._last_mono is not None:
            self.string.advance((now - self._last_mono) * self.options.time_scale)
        self._last_mono = now
        dropout = self.string.active_dropout()
        if dropout is not None:
            if dropout.mode == "hang":
                await asyncio.sleep(3600)  # the poll task's timeout must cut this short
            elif dropout.mode == "error":
                raise DriverError("simulated communication drop-out")
            elif dropout.mode == "block":
                remaining_s = dropout.at_s + dropout.duration_s - self.string.t_s
                time.sleep(remaining_s / self.options.time_scale)
                raise DriverError("simulated blocking call returned late")
            else:
                return self._garbage()
        return self.string.measure(now_ms(), self.device_id)

    def _garbage(self) -> Reading:
        """A reply full of nonsense, as a BMS with a corrupt frame buffer might send."""
        n = self.options.cells
        raw = self.string.rng.integers(0, 65535, size=n).astype(np.float64) / 1000.0
        return Reading(
            device_id=self.device_id,
            pack_voltage_v=float(self.string.rng.uniform(-1e4, 1e4)),
            pack_current_a=float("nan"),
            cell_voltage_v=raw,
            cell_temperature_c=np.full(self.options.temperature_sensors or n, -273.0),
        )
