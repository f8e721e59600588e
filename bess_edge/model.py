"""The canonical data model: what a driver hands to the rest of the daemon.

Every driver, whatever its wire format, produces a :class:`Reading` in SI units (V, A, °C, W,
percent for state of charge/health) with **current > 0 while charging**. Diagnostics, alerts, the
store and sync only ever see Readings, never registers or frames.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def now_ms() -> int:
    """Wall-clock time as integer milliseconds since the Unix epoch (UTC), as stored and sent."""
    return time.time_ns() // 1_000_000


def empty_cells() -> FloatArray:
    return np.empty(0, dtype=np.float64)


class Quality(enum.IntFlag):
    """Data-quality flags of one Reading; combined with ``|``. Zero means clean."""

    OK = 0
    MISSING = 1  # a field the device should report was not read (NaN)
    OUT_OF_RANGE = 2  # a value outside what the physics allows (e.g. a 9 V Li-ion cell)
    STALE = 4  # a value older than its timeout (CAN signal not refreshed)
    FROZEN = 8  # a sensor that has not changed for far longer than noise allows
    PARTIAL = 16  # part of the device could not be read (one register block failed)
    DECODE_ERROR = 32  # a frame or register block could not be decoded
    JUMP = 64  # a sudden, physically implausible step (open sense wire)
    INCONSISTENT = 128  # two sources disagree (BMS SOC vs our estimate, sum of cells vs pack)

    def names(self) -> list[str]:
        """Flag names, lowercase, for logs and payloads (``["stale", "partial"]``)."""
        if not self:  # a clean Reading, every poll but a few: no walk over the members
            return []
        return [f.name.lower() for f in Quality if f.value and f in self and f.name]


@dataclass(slots=True)
class Reading:
    """One poll of one device, in SI units.

    Scalars a device does not report are NaN; per-cell arrays are empty when absent and hold
    NaN for individual cells that could not be read. ``cell_temperature_c`` has one entry per
    temperature sensor, which need not match the number of cells.
    """

    device_id: str
    ts_ms: int = field(default_factory=now_ms)
    pack_voltage_v: float = math.nan
    pack_current_a: float = math.nan  # > 0 charging
    pack_power_w: float = math.nan  # > 0 charging
    bms_soc_pct: float = math.nan  # the BMS's own estimate, if it reports one
    bms_soh_pct: float = math.nan
    cell_voltage_v: FloatArray = field(default_factory=empty_cells)
    cell_temperature_c: FloatArray = field(default_factory=empty_cells)
    status_flags: int = 0  # device-specific status bits, passed through
    fault_flags: int = 0  # device-specific fault/alarm bits, passed through
    # The device's own cell-voltage extremes, for a device that reports them without a per-cell
    # array (SunSpec 802 CellVMax/CellVMin); with an array, the array's extremes are used.
    cell_voltage_min_v: float = math.nan
    cell_voltage_max_v: float = math.nan
    quality: Quality = Quality.OK
    quality_notes: list[str] = field(default_factory=list)
    # Mapped values without a dedicated field (e.g. "max_charge_current_a"), SI units in the name.
    extra: dict[str, float] = field(default_factory=dict)
    # The device's identity strings (manufacturer, model, serial_number, firmware), on the first
    # Reading after a driver read them; the store keeps the latest per device.
    identity: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Drivers mostly hand float64 arrays already: checked in Python, as np.asarray costs
        # ~2 µs per call in a poll loop (caches are cold after each I/O wait).
        if not _is_float64_array(self.cell_voltage_v):
            self.cell_voltage_v = np.asarray(self.cell_voltage_v, dtype=np.float64)
        if not _is_float64_array(self.cell_temperature_c):
            self.cell_temperature_c = np.asarray(self.cell_temperature_c, dtype=np.float64)
        if math.isnan(self.pack_power_w) and not (
            math.isnan(self.pack_voltage_v) or math.isnan(self.pack_current_a)
        ):
            # Rounded to 1 mW, far below any sensor's resolution: the bare product carries
            # float noise (52.56 V x -0.02 A = -1.0512000000000001 W) into SQLite and payloads.
            self.pack_power_w = round(self.pack_voltage_v * self.pack_current_a, 3)

    def flag(self, quality: Quality, note: str) -> None:
        """Mark a data-quality problem; the note says which field and why, for the operator."""
        self.quality |= quality
        self.quality_notes.append(note)

    @property
    def cell_count(self) -> int:
        return int(self.cell_voltage_v.size)

    def cell_stats(self) -> dict[str, float]:
        """Min/max/mean/spread of cell voltages and temperatures, ignoring NaN cells."""
        voltage = _stats(self.cell_voltage_v, "cell_voltage", "v")
        lo, hi = self.cell_voltage_min_v, self.cell_voltage_max_v
        if math.isnan(voltage["cell_voltage_min_v"]) and not (math.isnan(lo) and math.isnan(hi)):
            voltage["cell_voltage_min_v"], voltage["cell_voltage_max_v"] = lo, hi
            voltage["cell_voltage_spread_v"] = hi - lo
        return {**voltage, **_stats(self.cell_temperature_c, "cell_temperature", "c")}

    def scalars(self) -> dict[str, Any]:
        """The pack-level values as a flat dict (NaN where absent), for rules and payloads."""
        return {
            "pack_voltage_v": self.pack_voltage_v,
            "pack_current_a": self.pack_current_a,
            "pack_power_w": self.pack_power_w,
            "bms_soc_pct": self.bms_soc_pct,
            "bms_soh_pct": self.bms_soh_pct,
            **self.cell_stats(),
            **self.extra,
        }


_FLOAT64 = np.dtype(np.float64)


def _is_float64_array(value: object) -> bool:
    return type(value) is np.ndarray and value.dtype is _FLOAT64


def _stats(values: FloatArray, name: str, unit: str) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        nan = math.nan
        return {
            f"{name}_min_{unit}": nan,
            f"{name}_max_{unit}": nan,
            f"{name}_mean_{unit}": nan,
            f"{name}_spread_{unit}": nan,
        }
    lo, hi = float(finite.min()), float(finite.max())
    return {
        f"{name}_min_{unit}": lo,
        f"{name}_max_{unit}": hi,
        f"{name}_mean_{unit}": float(finite.sum() / finite.size),  # = mean(), bit for bit
        f"{name}_spread_{unit}": hi - lo,
    }


class CommsState(enum.StrEnum):
    """Availability of a device as seen by its poll task (the coordinator pattern)."""

    UNKNOWN = "unknown"  # not polled yet
    OK = "ok"
    DEGRADED = "degraded"  # answering, but with data-quality flags
    LOST = "comms_lost"  # failed polls in a row; retried with back-off
