"""The CAN device options and how they bind ``Reading`` fields to DBC signals.

A CAN BMS is a DBC plus a ``signals`` table in config; no Python per BMS. The table maps a
``Reading`` field (or an ``extra`` name with its SI unit in it) to one of four shapes:

``pack_voltage_v = "Msg.Signal"``
    one signal, converted to SI from the DBC's unit (mV → V, kW → W, ...);
``pack_current_a = {signal = "Msg.Signal", scale = -1.0, offset = 0.0}``
    the same with a correction applied after the unit conversion;
``cell_voltage_v = {pattern = "Msg.CellVoltage_{i:03d}", count = 384, start = 0}``
    a per-cell array, one signal per index, typically in a multiplexed message;
``fault_flags = {bits = ["Msg.OverVoltage", "Msg.UnderVoltage"]}``
    a bit field: bit *k* is set while the *k*-th signal is non-zero.

:func:`bind` checks every name against the DBC and returns flat :class:`Slot` rows, so a typo
is a config error naming the key, not a NaN at run time. The decoder and the simulator's
encoder both work from these rows, which keeps the two directions in step.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Database, Message, Signal
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from bess_edge.resources import data_dir, shipped_file

SIGNAL_REF = r"^[^.\s]+\.[^.\s]+$"
SCALAR_FIELDS = ("pack_voltage_v", "pack_current_a", "pack_power_w", "bms_soc_pct", "bms_soh_pct")
ARRAY_FIELDS = ("cell_voltage_v", "cell_temperature_c")
FLAG_FIELDS = ("status_flags", "fault_flags")
EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# DBC unit → (SI unit suffix used in our field names, factor to SI). Units not listed (or empty)
# are taken as already right; the mapping's ``scale`` covers DBCs with missing or odd units.
_UNITS: dict[str, tuple[str, float]] = {
    "V": ("v", 1.0),
    "mV": ("v", 1e-3),
    "kV": ("v", 1e3),
    "A": ("a", 1.0),
    "mA": ("a", 1e-3),
    "kA": ("a", 1e3),
    "W": ("w", 1.0),
    "kW": ("w", 1e3),
    "Wh": ("wh", 1.0),
    "kWh": ("wh", 1e3),
    "Ah": ("ah", 1.0),
    "mAh": ("ah", 1e-3),
    "degC": ("c", 1.0),
    "°C": ("c", 1.0),
    "C": ("c", 1.0),
    "Ohm": ("ohm", 1.0),
    "mOhm": ("ohm", 1e-3),
    "kOhm": ("ohm", 1e3),
    "%": ("pct", 1.0),
    "s": ("s", 1.0),
    "ms": ("s", 1e-3),
}


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalMapping(_Table):
    signal: str = Field(pattern=SIGNAL_REF)
    scale: float = 1.0  # applied after the DBC unit's conversion to SI
    offset: float = 0.0


class CellArrayMapping(_Table):
    pattern: str = Field(pattern=r"^[^.\s]+\.[^.\s]*\{i[^}]*\}[^.\s]*$")
    count: int = Field(ge=1, le=20_000)
    start: int = Field(0, ge=0)  # the index of the first cell in the signal names
    scale: float = 1.0
    offset: float = 0.0


class FlagBitsMapping(_Table):
    bits: list[str] = Field(min_length=1, max_length=64)


Mapping = str | SignalMapping | CellArrayMapping | FlagBitsMapping


class DecodeOptions(_Table):
    """What turns frames into a Reading: the DBC and the mapping (shared by can and replay)."""

    dbc: str  # a path, or the file name of a DBC shipped in dbc/
    signals: dict[str, Mapping] = Field(min_length=1)
    signal_timeout_s: float = Field(5.0, gt=0)  # older → STALE; a silent bus this long → error
    invert_current: bool = False  # for BMSs that report discharge as positive

    @model_validator(mode="after")
    def _signals_exist_in_dbc(self) -> DecodeOptions:
        bind(load_dbc(self.dbc), self.signals)
        return self

    @property
    def reports_cell_voltages(self) -> bool:
        return "cell_voltage_v" in self.signals

    def slots(self) -> list[Slot]:
        return bind(load_dbc(self.dbc), self.signals)


SLCAN_SLEEP_AFTER_OPEN_S = 2.0  # python-can's default for can.interfaces.slcan


class CanOptions(DecodeOptions):
    """``[devices.options]`` of a ``driver = "can"`` device (see docs/can.md)."""

    interface: str = "socketcan"  # any python-can interface name
    channel: str | None = None  # "can0", "/dev/ttyACM0", "socket://127.0.0.1:5000", ...
    bitrate: int | None = Field(500_000, gt=0)
    bus_options: dict[str, Any] = {}  # passed on to can.Bus (e.g. sleep_after_open for slcan)

    @model_validator(mode="after")
    def _slcan_opens_within_the_timeout(self, info: ValidationInfo) -> CanOptions:
        """python-can's slcan sleeps after opening the port (adapters that reset on open); an
        open longer than the device's timeout_s would fail every time, for ever."""
        timeout_s = (info.context or {}).get("timeout_s")
        if self.interface == "slcan" and timeout_s is not None:
            sleep_s = float(self.bus_options.get("sleep_after_open", SLCAN_SLEEP_AFTER_OPEN_S))
            if sleep_s >= timeout_s:
                raise ValueError(
                    f"slcan sleeps {sleep_s:g} s after opening the port, not less than the "
                    f"device's timeout_s ({timeout_s:g} s): raise timeout_s or set "
                    "bus_options.sleep_after_open"
                )
        return self


def resolve_dbc(name: str) -> Path:
    """A DBC path as given (absolute or relative to the working directory), else shipped in dbc/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_file("dbc", name)
    if shipped is not None:
        return shipped
    names = ", ".join(sorted(p.name for p in data_dir("dbc").glob("*.dbc")))
    raise ValueError(f"DBC {name!r} not found (neither a file nor one of the shipped {names})")


def load_dbc(name: str) -> Database:
    """The parsed DBC; cached per file and modification time (foxBMS's takes ~0.5 s)."""
    path = resolve_dbc(name).resolve()
    return _load(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load(path: Path, _mtime_ns: int) -> Database:
    try:
        db = cantools.database.load_file(str(path), database_format="dbc")
    except Exception as exc:  # cantools raises parser-specific errors
        raise ValueError(f"cannot parse DBC {path}: {exc}") from None
    assert isinstance(db, Database)
    return db


@dataclass(frozen=True, slots=True)
class Slot:
    """One DBC signal feeding one place of a Reading: ``field[index]`` or ``field`` bit ``index``.

    ``value_si = raw_dbc_value * factor + offset`` where ``raw_dbc_value`` is already scaled
    by the DBC and ``factor`` folds the unit conversion and the mapping's own scale.
    """

    field: str
    index: int
    kind: str  # "scalar", "array", "bit"
    message: Message
    signal: Signal
    factor: float
    offset: float

    def to_dbc(self, value_si: float) -> float:
        """The inverse: the DBC's physical value that decodes to ``value_si``."""
        return (value_si - self.offset) / self.factor


def bind(db: Database, signals: dict[str, Mapping]) -> list[Slot]:
    """Every mapping resolved against the DBC; ValueError names the key and the problem."""
    slots: list[Slot] = []
    for field, mapping in signals.items():
        where = f"signals.{field}"
        if field in ARRAY_FIELDS:
            if not isinstance(mapping, CellArrayMapping):
                raise ValueError(f"{where}: a per-cell array needs {{pattern = ..., count = ...}}")
            for k in range(mapping.count):
                ref = mapping.pattern.format(i=mapping.start + k)
                slots.append(
                    _slot(db, where, field, k, "array", ref, mapping.scale, mapping.offset)
                )
        elif isinstance(mapping, CellArrayMapping):
            raise ValueError(f"{where}: only {' and '.join(ARRAY_FIELDS)} take a pattern")
        elif isinstance(mapping, FlagBitsMapping):
            if field not in FLAG_FIELDS:
                raise ValueError(f"{where}: only {' and '.join(FLAG_FIELDS)} take bits")
            slots.extend(
                _slot(db, where, field, k, "bit", ref) for k, ref in enumerate(mapping.bits)
            )
        else:
            if field not in SCALAR_FIELDS + FLAG_FIELDS and not EXTRA_NAME.match(field):
                raise ValueError(f"{where}: not a Reading field nor a lowercase extra name")
            ref, scale, offset = (
                (mapping, 1.0, 0.0)
                if isinstance(mapping, str)
                else (mapping.signal, mapping.scale, mapping.offset)
            )
            slots.append(_slot(db, where, field, 0, "scalar", ref, scale, offset))
    return slots


def _slot(
    db: Database,
    where: str,
    field: str,
    index: int,
    kind: str,
    ref: str,
    scale: float = 1.0,
    offset: float = 0.0,
) -> Slot:
    message_name, _, signal_name = ref.partition(".")
    try:
        message = db.get_message_by_name(message_name)
    except KeyError:
        raise ValueError(f"{where}: no message {message_name!r} in the DBC") from None
    try:
        signal = message.get_signal_by_name(signal_name)
    except KeyError:
        raise ValueError(f"{where}: message {message_name} has no signal {signal_name!r}") from None
    if len(signal.multiplexer_ids or ()) > 1:
        raise ValueError(f"{where}: {ref} is in several multiplexer blocks; map one per block")
    unit_factor = 1.0
    if kind != "bit" and signal.unit in _UNITS:
        suffix, unit_factor = _UNITS[signal.unit]
        if field.rsplit("_", 1)[-1] != suffix and field not in FLAG_FIELDS:
            raise ValueError(
                f"{where}: {ref} is in {signal.unit}, which does not fit the unit of {field!r}"
            )
    return Slot(field, index, kind, message, signal, unit_factor * scale, offset)
