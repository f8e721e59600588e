"""SunSpec model layouts, read from the official JSON model definitions that pysunspec2 ships.

Nothing here is retyped from the specification: :func:`layout` walks a model's JSON (points in
order, each with its SunSpec type and size in registers, scale-factor references, repeating
groups) and returns every point with its register offset from the model's ``ID`` register. A
repeating group's count follows from the model length the device reports (``L``), which is how
the SunSpec Information Model Specification defines it for variable-length models.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

# SunSpec Information Model Specification, "Unimplemented values": the register pattern a device
# sends for a point it does not implement, by type. float32 uses NaN; strings are all NUL.
NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000,
    "sunssf": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "count": 0xFFFF,
    "int32": 0x8000_0000,
    "uint32": 0xFFFF_FFFF,
    "enum32": 0xFFFF_FFFF,
    "bitfield32": 0xFFFF_FFFF,
}
# SunSpec types decoded as numbers, as the register-map type that holds them.
NUMERIC: dict[str, str] = {
    "int16": "s16",
    "uint16": "u16",
    "enum16": "u16",
    "bitfield16": "u16",
    "count": "u16",
    "acc16": "u16",
    "int32": "s32",
    "uint32": "u32",
    "enum32": "u32",
    "bitfield32": "u32",
    "acc32": "u32",
    "float32": "f32",
    "sunssf": "s16",
}
MARKER = (0x5375, 0x6E53)  # "SunS"
END_ID = 0xFFFF
BASE_ADDRESSES = (40000, 0, 50000)  # where the SunSpec specification says to look, in order


@dataclass(frozen=True, slots=True)
class Point:
    """One point of one model instance, at ``offset`` registers from the model's ID register."""

    name: str  # "SoC", or "string[1].StrSoC" inside a repeating group
    offset: int
    type: str  # the SunSpec type: uint16, int16, sunssf, string, ...
    size: int  # registers
    sf_offset: int | None = None  # offset of the scale-factor point, if the scale is a point
    sf_value: int | None = None  # a constant scale factor, if the model gives a number
    units: str = ""
    mandatory: bool = False


@functools.cache
def definition(model_id: int) -> dict[str, Any] | None:
    """The model's JSON definition from pysunspec2, or None for a model it does not know."""
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def model_name(model_id: int) -> str:
    model = definition(model_id)
    if model is None:
        return "unknown"
    return str(model["group"].get("label") or model["group"]["name"])


def _size(points: list[dict[str, Any]]) -> int:
    return sum(int(p.get("size", 1)) for p in points)


def layout(model_id: int, length: int) -> list[Point]:
    """Every point of a model instance whose device-reported length is ``length`` registers.

    Raises ValueError for a model pysunspec2 does not define or a length that does not fit it.
    """
    model = definition(model_id)
    if model is None:
        raise ValueError(f"SunSpec model {model_id} is not defined in pysunspec2")
    top = model["group"]
    points = _points(top, "", 0, {})
    fixed = _size(top["points"])
    top_sf = {p.name: p.offset for p in points}
    groups = top.get("groups", [])
    remaining = length + 2 - fixed
    if remaining < 0:
        raise ValueError(f"model {model_id}: length {length} is shorter than its fixed part")
    offset = fixed
    for group in groups:
        group_size = _size(group["points"])
        count = remaining // group_size if group is groups[-1] else _fixed_count(group)
        for i in range(count):
            points += _points(group, f"{group['name']}[{i}].", offset, top_sf)
            offset += group_size
            remaining -= group_size
    if remaining:
        raise ValueError(f"model {model_id}: length {length} leaves {remaining} registers over")
    return points


def _fixed_count(group: dict[str, Any]) -> int:
    count = group.get("count", 1)
    if not isinstance(count, int):
        raise ValueError(f"group {group['name']}: only the last repeating group may vary")
    return count


def _points(group: dict[str, Any], prefix: str, start: int, outer: dict[str, int]) -> list[Point]:
    """The group's own points; scale factors resolve in the group first, then the model."""
    own: dict[str, int] = {}
    offset = start
    for p in group["points"]:
        own[p["name"]] = offset
        offset += int(p.get("size", 1))
    result = []
    for p in group["points"]:
        sf = p.get("sf")
        sf_offset = own.get(sf, outer.get(sf)) if isinstance(sf, str) else None
        result.append(
            Point(
                name=prefix + p["name"],
                offset=own[p["name"]],
                type=p["type"],
                size=int(p.get("size", 1)),
                sf_offset=sf_offset,
                sf_value=sf if isinstance(sf, int) else None,
                units=str(p.get("units", "")),
                mandatory=p.get("mandatory") == "M",
            )
        )
    return result
