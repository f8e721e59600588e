"""Register maps as data: a TOML file says where a BMS keeps each value and how to convert it.

A map has a ``[map]`` header (defaults for the whole device) and one table per value:
``[fields.<reading field>]`` for the canonical Reading fields, ``[extra.<name>]`` for values that
go to ``Reading.extra`` and ``[info.<name>]`` for identity strings read once at connection.
Every key is explained in ``docs/modbus.md``. :func:`load_map` validates a file with pydantic so a
typo is reported with its key path, and resolves it into :class:`Field` objects in SI units that
:mod:`bess_edge.drivers.modbus_decode` plans and decodes without knowing about TOML.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from bess_edge.drivers.plausible import READING_RANGES, plausible_range
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic import Field as PydanticField

RegisterType = Literal["u16", "s16", "u32", "s32", "f32", "string"]
Function = Literal["holding", "input"]
WordOrder = Literal["big", "little"]

# Registers per element of each type (Modbus registers are 16 bits).
TYPE_WIDTH: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "string": 1}

# Unit of the scaled value -> (quantity, factor to SI, offset to SI): si = value * factor + offset.
UNITS: dict[str, tuple[str, float, float]] = {
    "V": ("voltage", 1.0, 0.0),
    "mV": ("voltage", 1e-3, 0.0),
    "kV": ("voltage", 1e3, 0.0),
    "A": ("current", 1.0, 0.0),
    "mA": ("current", 1e-3, 0.0),
    "W": ("power", 1.0, 0.0),
    "kW": ("power", 1e3, 0.0),
    "Wh": ("energy", 1.0, 0.0),
    "kWh": ("energy", 1e3, 0.0),
    "Ah": ("charge", 1.0, 0.0),
    "mAh": ("charge", 1e-3, 0.0),
    "C": ("temperature", 1.0, 0.0),
    "K": ("temperature", 1.0, -273.15),
    "%": ("percent", 1.0, 0.0),
    "s": ("time", 1.0, 0.0),
    "h": ("time", 3600.0, 0.0),
    "": ("none", 1.0, 0.0),
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a canonical Reading field accepts: its quantity, shape and plausible SI range."""

    quantity: str
    array: bool
    valid_min: float
    valid_max: float


# Plausible ranges (drivers/plausible.py), not operating limits (those are per chemistry).
_QUANTITIES = {
    "pack_voltage_v": ("voltage", False),
    "pack_current_a": ("current", False),
    "pack_power_w": ("power", False),
    "bms_soc_pct": ("percent", False),
    "bms_soh_pct": ("percent", False),
    "status_flags": ("none", False),
    "fault_flags": ("none", False),
    "cell_voltage_v": ("voltage", True),
    "cell_temperature_c": ("temperature", True),
}
TARGETS: dict[str, Target] = {
    name: Target(quantity, array, *READING_RANGES[name])
    for name, (quantity, array) in _QUANTITIES.items()
}
FLAG_TARGETS = frozenset({"status_flags", "fault_flags"})


class MapError(ValueError):
    """A register map that cannot be used; the message names the file and key path."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MapHeader(_Spec):
    name: str
    description: str = ""
    source: str = ""  # where the layout comes from (vendor document, project), for the operator
    function: Function = "holding"
    word_order: WordOrder = "big"  # of 32-bit values: "big" = high word at the lower address
    max_registers: int = PydanticField(125, ge=1, le=125)  # Modbus allows 125 per read
    max_gap: int = PydanticField(0, ge=0, le=124)  # unused registers a read may span


class FieldSpec(_Spec):
    address: int = PydanticField(ge=0, le=0xFFFF)
    type: RegisterType = "u16"
    count: int = PydanticField(1, ge=1, le=4096)  # elements (array fields) or registers (string)
    function: Function | None = None
    word_order: WordOrder | None = None
    scale: float = 1.0
    scale_register: int | None = PydanticField(None, ge=0, le=0xFFFF)  # s16 power of ten
    offset: float = 0.0  # added after scaling, in ``unit``
    unit: str = ""
    invert: bool = False  # the device counts current/power positive when discharging
    valid_min: float | None = None
    valid_max: float | None = None
    missing: int | None = None  # raw value the device sends for "not available"

    @model_validator(mode="after")
    def _known_unit(self) -> FieldSpec:
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; known: {', '.join(map(repr, UNITS))}")
        return self


class MapSpec(_Spec):
    map: MapHeader
    fields: dict[str, FieldSpec] = {}
    extra: dict[str, FieldSpec] = {}
    info: dict[str, FieldSpec] = {}


@dataclass(frozen=True, slots=True)
class Field:
    """One value to read, resolved to absolute registers and an SI conversion.

    ``name`` is a Reading field, ``extra.<name>`` or ``info.<name>``. Decoding computes
    ``si = ((raw * scale * 10**sf) + offset) * factor + si_offset``, negated when ``invert``.
    """

    name: str
    function: Function
    address: int
    type: RegisterType
    count: int = 1
    word_order: WordOrder = "big"
    scale: float = 1.0
    scale_address: int | None = None
    offset: float = 0.0
    factor: float = 1.0
    si_offset: float = 0.0
    invert: bool = False
    valid_min: float = -math.inf
    valid_max: float = math.inf
    missing: int | None = None
    flag_missing: bool = True  # a "not available" value is a data-quality problem here

    @property
    def width(self) -> int:
        """Registers per element."""
        return TYPE_WIDTH[self.type]

    @property
    def register_count(self) -> int:
        return self.width * self.count


@dataclass(frozen=True, slots=True)
class RegisterMap:
    header: MapHeader
    fields: tuple[Field, ...]  # polled every read
    info: tuple[Field, ...]  # identity strings, read once


def shipped_maps() -> list[str]:
    """Names of the maps installed with bess-edge (``map = "<name>"`` in a device's options)."""
    files = resources.files("bess_edge.drivers.maps").iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def map_path(name_or_path: str) -> Path:
    """A shipped map's file by name, else the path as given."""
    if "/" not in name_or_path and not name_or_path.endswith(".toml"):
        shipped = resources.files("bess_edge.drivers.maps") / f"{name_or_path}.toml"
        if shipped.is_file():
            return Path(str(shipped))
        raise MapError(
            f"no shipped register map {name_or_path!r}; shipped: {', '.join(shipped_maps())} "
            "(or give a path to a .toml file)"
        )
    return Path(name_or_path)


def load_map(name_or_path: str) -> RegisterMap:
    """Read and validate a map by shipped name or path; MapError says what is wrong and where."""
    path = map_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapError(f"{path}: register map not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MapError(f"{path}: {exc}") from None
    try:
        spec = MapSpec.model_validate(raw)
        return resolve(spec)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise MapError("\n".join(lines)) from None
    except MapError as exc:
        raise MapError(f"{path}: {exc}") from None


def resolve(spec: MapSpec) -> RegisterMap:
    """Check each field against its target and turn the specs into :class:`Field` objects."""
    for name in spec.fields:
        if name not in TARGETS:
            raise MapError(f"fields.{name}: not a Reading field; known: {', '.join(TARGETS)}")
    fields = [_resolve(spec.map, name, f, TARGETS[name]) for name, f in spec.fields.items()]
    fields += [_resolve(spec.map, f"extra.{n}", f, None) for n, f in spec.extra.items()]
    if not fields:
        raise MapError("the map has no [fields.*] or [extra.*] table: nothing to poll")
    info = [_resolve(spec.map, f"info.{n}", f, None) for n, f in spec.info.items()]
    for field in fields:
        if field.type == "string":
            raise MapError(f"{field.name}: strings belong in [info.*] tables")
    for field in info:
        if field.type != "string":
            raise MapError(f"{field.name}: [info.*] tables hold strings only")
    return RegisterMap(spec.map, tuple(fields), tuple(info))


def _resolve(header: MapHeader, name: str, spec: FieldSpec, target: Target | None) -> Field:
    quantity, factor, si_offset = UNITS[spec.unit]
    if target is not None:
        if target.quantity != quantity:
            raise MapError(f"{name}: unit {spec.unit!r} is not a {target.quantity}")
        if spec.count > 1 and not target.array:
            raise MapError(f"{name}: count > 1 is only for cell arrays")
        if name in FLAG_TARGETS and spec.type not in ("u16", "u32"):
            raise MapError(f"{name}: flags must be u16 or u32")
    elif spec.count > 1 and spec.type != "string":
        raise MapError(f"{name}: extra values are scalars (count must be 1)")
    if target is not None:
        lo, hi = target.valid_min, target.valid_max
    elif name.startswith("extra."):
        lo, hi = plausible_range(name.removeprefix("extra."))
    else:  # identity strings
        lo, hi = -math.inf, math.inf
    return Field(
        name=name,
        function=spec.function or header.function,
        address=spec.address,
        type=spec.type,
        count=spec.count,
        word_order=spec.word_order or header.word_order,
        scale=spec.scale,
        scale_address=spec.scale_register,
        offset=spec.offset,
        factor=factor,
        si_offset=si_offset,
        invert=spec.invert,
        valid_min=lo if spec.valid_min is None else spec.valid_min,
        valid_max=hi if spec.valid_max is None else spec.valid_max,
        missing=spec.missing,
    )
