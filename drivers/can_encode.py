"""A Reading → the CAN frames that carry it, through the same DBC and mapping the driver decodes.

The simulator (``bess-edge simulate can``), the tests and the benchmark use it, so the whole CAN
path runs end to end with nothing but a DBC and a config: what is encoded here is what the
driver must decode, within the DBC's resolution.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bess_edge.drivers.can_map import FLAG_FIELDS, Slot
from cantools.database.can import Message, Signal

from bess_edge.model import Reading


@dataclass(frozen=True, slots=True)
class Frame:
    frame_id: int
    data: bytes
    is_extended: bool


class FrameEncoder:
    """Encodes every message (and multiplexer block) that carries at least one mapped signal."""

    def __init__(self, slots: list[Slot], invert_current: bool = False) -> None:
        self.invert_current = invert_current
        groups: dict[tuple[int, int | None], list[Slot]] = defaultdict(list)
        for slot in slots:
            ids = slot.signal.multiplexer_ids
            groups[(slot.message.frame_id, ids[0] if ids else None)].append(slot)
        self._groups = [
            (members[0].message, _template(members[0].message, mux_id), members)
            for (_, mux_id), members in sorted(
                groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
            )
        ]

    def frames(self, reading: Reading) -> list[Frame]:
        """One frame per mapped message block, in frame-id and multiplexer order."""
        out = []
        for message, template, slots in self._groups:
            values = dict(template)
            for slot in slots:
                value = self._value(reading, slot)
                if math.isfinite(value):
                    values[slot.signal.name] = _clamp(slot.signal, slot.to_dbc(value))
            data = message.encode(values, scaling=True, padding=False, strict=False)
            out.append(Frame(message.frame_id, data, message.is_extended_frame))
        return out

    def _value(self, reading: Reading, slot: Slot) -> float:
        field = slot.field
        if slot.kind == "array":
            cells = getattr(reading, field)
            return float(cells[slot.index]) if slot.index < cells.size else math.nan
        if slot.kind == "bit":
            return float((getattr(reading, field) >> slot.index) & 1)
        if field in FLAG_FIELDS:
            return float(getattr(reading, field))
        value = float(getattr(reading, field, reading.extra.get(field, math.nan)))
        if self.invert_current and field in ("pack_current_a", "pack_power_w"):
            value = -value
        return value


def _template(message: Message, mux_id: int | None) -> dict[str, Any]:
    """Every signal the block needs for cantools to encode it, at a neutral value."""
    values: dict[str, Any] = {}
    for signal in message.signals:
        ids = signal.multiplexer_ids
        if ids and mux_id not in ids:
            continue
        if signal.is_multiplexer:
            values[signal.name] = mux_id if mux_id is not None else 0
        else:
            initial = signal.initial if isinstance(signal.initial, int | float) else 0
            values[signal.name] = _clamp(signal, float(initial))
    return values


def _clamp(signal: Signal, value: float) -> float:
    """Into what the signal can carry: its DBC range and its bit width."""
    raw_lo, raw_hi = (
        (-(2 ** (signal.length - 1)), 2 ** (signal.length - 1) - 1)
        if signal.is_signed
        else (0, 2**signal.length - 1)
    )
    lo, hi = sorted((raw_lo * signal.scale + signal.offset, raw_hi * signal.scale + signal.offset))
    if signal.minimum is not None:
        lo = max(lo, signal.minimum)
    if signal.maximum is not None:
        hi = min(hi, signal.maximum)
    return min(max(value, lo), hi)
