"""Frames in, latest values out: the CAN decode path shared by the live driver and replay.

Each frame is decoded once by cantools and its mapped signals are copied into a preallocated
value list, together with the time the frame arrived. Building a :class:`Reading` is separate
and vectorised: the poller asks for one per poll interval, while frames arrive up to ~7,400/s on
a saturated 1 Mbit/s bus, so the per-frame path does as little as possible (no Reading, no
numpy, no logging). The signals of one frame (or one multiplexer block) share one timestamp.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any

import can
import numpy as np
from bess_edge.drivers.can_map import FLAG_FIELDS, DecodeOptions, Slot, load_dbc
from bess_edge.drivers.plausible import plausible_range
from cantools.database.can import Message, Signal
from cantools.database.utils import create_encode_decode_formats

from bess_edge.model import Quality, Reading

log = logging.getLogger(__name__)

Payload = bytes | bytearray  # python-can hands over a bytearray
LOG_EVERY_S = 10.0  # at most one log line per kind of bad frame in this interval
NEVER = -math.inf


@dataclass(slots=True)
class FrameCounters:
    """What arrived on the bus since the driver was created (they survive reconnects)."""

    frames: int = 0  # data frames received, good or bad
    decoded: int = 0  # frames of a mapped message decoded by the DBC
    unmapped: int = 0  # frames of DBC messages the mapping does not use (normal, not logged)
    unknown_id: int = 0  # frame ids the DBC does not know
    wrong_dlc: int = 0  # a mapped message with a length other than the DBC's
    undecodable: int = 0  # cantools refused the payload (e.g. a multiplexer id not in the DBC)
    error_frames: int = 0
    bus_off: int = 0  # error frames reporting bus-off (SocketCAN CAN_ERR_BUSOFF)
    bus_errors: int = 0  # exceptions raised by the interface while receiving
    reopens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where one frame (or one multiplexer block) of a message writes its mapped values."""

    group: int  # index of its timestamp
    start: int  # its raw values occupy positions start..end-1
    end: int
    unpack: Callable[[Payload], dict[str, Any]]  # cantools' compiled codec of these signals only
    get: Callable[[dict[str, Any]], Any]  # their raw values, in position order


@dataclass(frozen=True, slots=True)
class _Selector:
    """A multiplexer signal of a message and the blocks it selects."""

    name: str
    unpack: Callable[[Payload], dict[str, Any]]
    plans: dict[int, _Plan]  # mapped blocks by multiplexer id
    valid_ids: frozenset[int]  # every id the DBC defines (others are undecodable)


_CAN_ERR_BUSOFF = 0x040  # linux/can/error.h: error class bit in an error frame's id


class FrameDecoder:
    """Latest mapped values of one device, fed frame by frame, read as Readings.

    Decoding uses cantools' own compiled codec (``create_encode_decode_formats``, the bitstruct
    formats behind ``Message.decode``), built per multiplexer block for the *mapped* signals
    only, and keeps raw values: the DBC's scale and offset are applied with the mapping's in one
    vectorised step per Reading. foxBMS's cell-voltage block, for instance, carries 4 voltages
    and 4 flags, and the flags are not decoded unless mapped. Only one level of multiplexing is
    supported (no DBC shipped or tested uses more).
    """

    def __init__(
        self,
        slots: list[Slot],
        timeout_s: float,
        invert_current: bool = False,
        device_id: str = "",
        dbc_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.device_id = device_id
        self.dbc_ids = dbc_ids
        self.timeout_s = timeout_s
        self.invert_current = invert_current
        self.counters = FrameCounters()
        self.last_frame_ts = NEVER
        self._last_log: dict[str, float] = {}
        # Group the slots by the frame (and multiplexer block) that carries them.
        by_group: dict[tuple[int, str | None, int | None], list[Slot]] = defaultdict(list)
        for slot in slots:
            sig = slot.signal
            mux_id = sig.multiplexer_ids[0] if sig.multiplexer_ids else None
            by_group[(slot.message.frame_id, sig.multiplexer_signal, mux_id)].append(slot)
        ordered: list[Slot] = []
        group_of: list[int] = []
        messages: dict[int, Message] = {}
        plain_of: dict[int, _Plan] = {}
        muxed_of: dict[int, dict[str, dict[int, _Plan]]] = defaultdict(dict)
        for group, ((frame_id, selector, mux_id), members) in enumerate(by_group.items()):
            start = len(ordered)
            ordered.extend(members)
            group_of.extend([group] * len(members))
            message = messages.setdefault(frame_id, members[0].message)
            signals = [s.signal for s in members]
            plan = _Plan(
                group,
                start,
                len(ordered),
                _unpacker(signals, message.length),
                _getter([s.name for s in signals]),
            )
            if selector is None:
                plain_of[frame_id] = plan
            else:
                muxed_of[frame_id].setdefault(selector, {})[mux_id or 0] = plan
        # frame id -> (message, its length, plan of its plain signals, its selectors)
        self._handlers: dict[int, tuple[Message, int, _Plan | None, list[_Selector]]] = {
            frame_id: (
                m,
                m.length,
                plain_of.get(frame_id),
                [_selector(m, name, plans) for name, plans in muxed_of[frame_id].items()],
            )
            for frame_id, m in messages.items()
        }
        self.slots = ordered
        self._values: list[float] = [math.nan] * len(ordered)
        self._stamps: list[float] = [NEVER] * len(by_group)
        self._slot_group = np.asarray(group_of, dtype=np.intp)
        # value_si = (raw * dbc_scale + dbc_offset) * factor + offset, folded into one affine map
        self._scale = np.array([s.factor * s.signal.scale for s in ordered])
        self._offset = np.array([s.factor * s.signal.offset + s.offset for s in ordered])
        ranges = np.array([valid_range(s) for s in ordered]).reshape(-1, 2)
        self._lo, self._hi = ranges[:, 0], ranges[:, 1]
        self._rejected_before = 0  # wrong_dlc + undecodable when the last Reading was made
        self._last_rejected = ""
        self._fields = _field_layout(ordered)

    @classmethod
    def for_options(cls, options: DecodeOptions, device_id: str) -> FrameDecoder:
        ids = frozenset(m.frame_id for m in load_dbc(options.dbc).messages)
        return cls(
            options.slots(), options.signal_timeout_s, options.invert_current, device_id, ids
        )

    def feed(self, msg: can.Message, ts: float) -> None:
        """One python-can message: a data frame is decoded, an error frame counted."""
        if msg.is_error_frame:
            self.error_frame(msg.arbitration_id)
        elif not msg.is_remote_frame:
            self.ingest(msg.arbitration_id, msg.data, ts)

    def ingest(self, frame_id: int, data: Payload, ts: float) -> None:
        """Decode one data frame received at ``ts`` (seconds on the caller's clock)."""
        counters = self.counters
        counters.frames += 1
        self.last_frame_ts = ts
        handler = self._handlers.get(frame_id)
        if handler is None:
            if frame_id in self.dbc_ids:
                counters.unmapped += 1
            else:
                counters.unknown_id += 1
                self.complain("unknown_id", f"frame id 0x{frame_id:X} is not in the DBC")
            return
        message, length, plain, selectors = handler
        if len(data) != length:
            self._reject("wrong_dlc", f"{message.name}: {len(data)} bytes, the DBC says {length}")
            return
        values, stamps = self._values, self._stamps
        # A value's timestamp is written only once the value itself is: a payload that fails
        # to unpack must leave the previous values (or none) marked as old, not fresh.
        try:
            if plain is not None:
                values[plain.start : plain.end] = plain.get(plain.unpack(data))
                stamps[plain.group] = ts
            for selector in selectors:
                mux = selector.unpack(data)[selector.name]
                plan = selector.plans.get(mux)
                if plan is not None:
                    values[plan.start : plan.end] = plan.get(plan.unpack(data))
                    stamps[plan.group] = ts
                elif mux not in selector.valid_ids:
                    self._reject("undecodable", f"{message.name}: multiplexer id {mux} not in DBC")
                    return
        except Exception as exc:  # a corrupt payload must never stop the receive path
            self._reject("undecodable", f"{message.name}: {exc!r}")
            return
        counters.decoded += 1

    def _reject(self, kind: str, detail: str) -> None:
        """A frame of a mapped message that could not be decoded: counted, logged, and flagged
        DECODE_ERROR on the next Reading."""
        if kind == "wrong_dlc":
            self.counters.wrong_dlc += 1
        else:
            self.counters.undecodable += 1
        self._last_rejected = detail
        self.complain(kind, detail)

    def error_frame(self, frame_id: int) -> None:
        """Count an error frame; SocketCAN reports bus-off as a bit of the error frame's id."""
        self.counters.error_frames += 1
        if frame_id & _CAN_ERR_BUSOFF:
            self.counters.bus_off += 1
            self.complain("bus_off", "the controller reports bus-off")
        else:
            self.complain("error_frame", f"error frame, class 0x{frame_id:X}")

    def reading(self, device_id: str, now: float, ts_ms: int) -> Reading:
        """The latest values as a Reading; ``now`` is on the same clock as the frames' ``ts``."""
        value = np.array(self._values) * self._scale + self._offset
        stamps = np.array(self._stamps)[self._slot_group]
        never = stamps == NEVER
        stale = (now - stamps > self.timeout_s) & ~never
        with np.errstate(invalid="ignore"):
            implausible = ~never & ~((value >= self._lo) & (value <= self._hi))
        reading = Reading(device_id=device_id, ts_ms=ts_ms)
        for field, kind, positions in self._fields:
            if kind == "scalar":  # one position: plain Python is cheaper than numpy here
                pos = int(positions[0])
                x = float(value[pos])
                if implausible[pos]:
                    reading.flag(
                        Quality.OUT_OF_RANGE,
                        f"{field}={x:g} outside {self._lo[pos]:g}..{self._hi[pos]:g}",
                    )
                    x = math.nan
                _set_scalar(reading, field, x, bool(never[pos]))
                _flag_one(reading, field, bool(never[pos]), bool(stale[pos]))
                continue
            v, nv, st = value[positions], never[positions], stale[positions]
            bad = implausible[positions]
            if kind == "array":
                setattr(reading, field, np.where(nv | bad, math.nan, v))
            else:  # bits
                bits = (v != 0) & ~nv & ~st & ~bad
                setattr(reading, field, int(np.sum(bits.astype(np.int64) << np.arange(v.size))))
            if nv.any() or st.any():
                _flag(reading, field, nv, st)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                reading.flag(
                    Quality.OUT_OF_RANGE,
                    f"{field}: {int(bad.sum())} of {bad.size} values outside their range "
                    f"(e.g. {v[first]:g} at {first})",
                )
        rejected = self.counters.wrong_dlc + self.counters.undecodable
        if rejected > self._rejected_before:
            reading.flag(
                Quality.DECODE_ERROR,
                f"{rejected - self._rejected_before} frames not decodable since the last "
                f"Reading (last: {self._last_rejected})",
            )
            self._rejected_before = rejected
        if self.invert_current:
            reading.pack_current_a = -reading.pack_current_a
            reading.pack_power_w = -reading.pack_power_w
        if math.isnan(reading.pack_power_w):  # Reading derives it from V·I only at creation
            reading.pack_power_w = reading.pack_voltage_v * reading.pack_current_a
        return reading

    def complain(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, NEVER) >= LOG_EVERY_S:
            self._last_log[kind] = now
            counts: dict[str, object] = dict(self.counters.as_dict())
            log.warning(
                "bad CAN traffic (logged at most every %g s per kind)",
                LOG_EVERY_S,
                extra={"device": self.device_id, "kind": kind, "detail": detail, **counts},
            )


def _unpacker(signals: list[Signal], length: int) -> Callable[[Payload], dict[str, Any]]:
    """Raw values of ``signals`` from a payload, with the formats cantools compiles for them."""
    # cantools lays out little-endian formats assuming signals sorted by start bit, as a
    # Message keeps them; a mapping lists them in its own order.
    # A signal mapped twice (a status bit and an extra, say) is unpacked once: cantools'
    # formats would otherwise expect its bits twice and refuse every frame as "Short data".
    unique = list({s.name: s for s in signals}.values())
    formats = create_encode_decode_formats(sorted(unique, key=lambda s: s.start), length)
    big, little = formats.big_endian.unpack, formats.little_endian.unpack
    orders = {s.byte_order for s in signals}
    if orders == {"little_endian"}:
        return lambda data: little(data[::-1])
    if orders == {"big_endian"}:
        return big
    return lambda data: {**big(data), **little(data[::-1])}


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A tuple of the named values, even for one name (for a slice assignment)."""
    if len(names) > 1:
        return itemgetter(*names)
    get = itemgetter(names[0])
    return lambda raw: (get(raw),)


def _selector(message: Message, name: str, plans: dict[int, _Plan]) -> _Selector:
    signal = message.get_signal_by_name(name)
    valid = {
        i for s in message.signals if s.multiplexer_signal == name for i in s.multiplexer_ids or ()
    }
    return _Selector(name, _unpacker([signal], message.length), plans, frozenset(valid))


def _field_layout(slots: list[Slot]) -> list[tuple[str, str, np.ndarray]]:
    """Per mapped field: its kind and the value positions of its slots, in index order."""
    positions: dict[str, list[tuple[int, int]]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for pos, slot in enumerate(slots):
        positions[slot.field].append((slot.index, pos))
        kinds[slot.field] = slot.kind
    return [
        (field, kinds[field], np.array([pos for _, pos in sorted(pairs)], dtype=np.intp))
        for field, pairs in positions.items()
    ]


def valid_range(slot: Slot) -> tuple[float, float]:
    """The SI range a slot's value may take: the field's plausible range, narrowed by the
    DBC's own [min|max] of the signal when it declares one. Bits are 0 or 1 by nature."""
    if slot.kind == "bit" or slot.field in FLAG_FIELDS:
        return -math.inf, math.inf
    lo, hi = plausible_range(slot.field)
    sig = slot.signal
    if sig.minimum is not None and sig.maximum is not None and sig.minimum < sig.maximum:
        ends = sorted(
            (slot.factor * sig.minimum + slot.offset, slot.factor * sig.maximum + slot.offset)
        )
        lo, hi = max(lo, ends[0]), min(hi, ends[1])
    return lo, hi


def _set_scalar(reading: Reading, field: str, value: float, never: bool) -> None:
    if field in FLAG_FIELDS:
        setattr(reading, field, 0 if never or math.isnan(value) else int(value))
    elif hasattr(reading, field):
        setattr(reading, field, value)
    else:
        reading.extra[field] = value


def _flag_one(reading: Reading, field: str, never: bool, stale: bool) -> None:
    if never:
        reading.flag(Quality.MISSING, f"{field}: signal never received")
    elif stale:
        reading.flag(Quality.STALE, f"{field}: signal not refreshed within the timeout")


def _flag(reading: Reading, field: str, never: np.ndarray, stale: np.ndarray) -> None:
    n_never, n_stale, size = int(never.sum()), int(stale.sum()), never.size
    if n_never:
        what = f"{n_never} of {size} signals" if size > 1 else "signal"
        reading.flag(Quality.MISSING, f"{field}: {what} never received")
    if n_stale:
        what = f"{n_stale} of {size} signals" if size > 1 else "signal"
        reading.flag(Quality.STALE, f"{field}: {what} not refreshed within the timeout")
