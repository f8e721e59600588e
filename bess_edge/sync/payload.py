"""Wire format: outbox rows → MQTT payloads, and back (for the reference subscriber).

Every data message is a *batch* of one device's stream: an envelope (``schema``, ``site``,
``device``, ``stream``, ``seq_first``/``seq_last``, ``count``) and ``items``, each with its own
``seq``, so a subscriber de-duplicates per seq and sees gaps whatever the batching. Units are SI,
times integer ms since the Unix epoch (UTC). docs/mqtt.md documents it; the JSON Schemas in
``bess_edge/schemas/`` are what the tests validate every published payload against.

The compact encoding (``encoding = "compact"``) is the same document with the cell arrays as
integer deltas (1 mV, 0.1 °C) against the previous item's cells, zlib-compressed: consecutive
readings of a rack differ by sensor noise, so most deltas are a few mV and compress to well
under a byte. zlib is in the standard library; it beat nothing-at-all by far and a binary
container would make the payload opaque to ``mosquitto_sub | zcat``-style debugging.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.model import Quality
from bess_edge.store import unpack_cells

STREAMS = ("alerts", "diagnostics", "telemetry")  # drain order: alerts first
SCHEMA_IDS = {stream: f"bess-edge/{stream}/1" for stream in STREAMS}
STATE_SCHEMA = "bess-edge/state/1"
REPLY_SCHEMA = "bess-edge/reply/1"
COMPACT = "compact-1"
CONTENT_TYPE = {"json": "application/json", "compact": "application/x-bess-edge-compact+zlib"}

# Wire resolution of the compact cell arrays: the BMS sensors resolve 1 mV (sim.py quantises to
# 1 mV like most BMS AFEs, e.g. TI BQ76952 datasheet: 1 mV LSB) and 0.1 °C.
VOLTAGE_STEP_V = 0.001
TEMPERATURE_STEP_C = 0.1
# JSON keeps 0.1 mV and 0.01 °C at most: the store holds float32 cells, ~0.2 mV at 4 V.
_CELL_DECIMALS = {"cell_voltage_v": 4, "cell_temperature_c": 2}

_SAMPLE_SCALARS = (
    "pack_voltage_v", "pack_current_a", "pack_power_w", "bms_soc_pct", "bms_soh_pct",
    "cell_voltage_min_v", "cell_voltage_max_v", "cell_temperature_min_c", "cell_temperature_max_c",
)  # fmt: skip
_ALERT_FIELDS = (
    "alert_id", "transition", "rule", "severity", "message", "cell", "value", "actor", "note",
)  # fmt: skip


def data_topic(prefix: str, site: str, device: str, stream: str) -> str:
    return f"{prefix}/{site}/{device}/{stream}"


def state_topic(prefix: str, site: str) -> str:
    return f"{prefix}/{site}/state"


def command_topic(prefix: str, site: str, verb: str = "#") -> str:
    return f"{prefix}/{site}/cmd/{verb}"


def reply_topic(prefix: str, site: str, verb: str) -> str:
    return f"{prefix}/{site}/cmd/{verb}/reply"


def item_from_row(stream: str, seq: int, data: dict[str, Any]) -> dict[str, Any]:
    """One outbox row's data (see ``Store.outbox_fetch``) as a canonical JSON item."""
    if stream == "telemetry":
        return _telemetry_item(seq, data)
    if stream == "diagnostics":
        return {"seq": seq, "ts_ms": data["ts_ms"], "diagnosis": data["diagnosis"]}
    item = {"seq": seq, "ts_ms": data["ts_ms"]}
    item.update((k, data[k]) for k in _ALERT_FIELDS)
    return item


def _telemetry_item(seq: int, row: dict[str, Any]) -> dict[str, Any]:
    """The cell arrays stay numpy arrays here: :func:`dumps_item` formats them in bulk."""
    item: dict[str, Any] = {"seq": seq, "ts_ms": row["ts_ms"]}
    quality = int(row["quality"])
    item["quality"] = quality
    item["quality_flags"] = list(_quality_names(quality))
    for key in _SAMPLE_SCALARS:
        item[key] = row[key]
    item["status_flags"] = row["status_flags"]
    item["fault_flags"] = row["fault_flags"]
    item["cell_voltage_v"] = unpack_cells(row["cell_voltage_v"])
    item["cell_temperature_c"] = unpack_cells(row["cell_temperature_c"])
    item["extra"] = json.loads(row["extra"]) if row["extra"] else {}
    item["quality_notes"] = json.loads(row["quality_notes"]) if row["quality_notes"] else []
    return item


@functools.lru_cache(maxsize=256)
def _quality_names(quality: int) -> tuple[str, ...]:
    return tuple(Quality(quality).names())  # enum iteration: ~100 µs, once per distinct value


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def dumps_item(item: dict[str, Any]) -> bytes:
    """An item as JSON; its numpy cell arrays are formatted by :func:`json_array`."""
    arrays = [(k, v) for k, v in item.items() if isinstance(v, np.ndarray)]
    if not arrays:
        return dumps(item)
    rest = dumps({k: v for k, v in item.items() if not isinstance(v, np.ndarray)})
    parts = [b',"%s":%s' % (k.encode(), json_array(v, _CELL_DECIMALS[k])) for k, v in arrays]
    return rest[:-1] + b"".join(parts) + b"}"


def json_array(values: np.ndarray, decimals: int) -> bytes:
    """A JSON array of numbers with at most ``decimals`` decimals, formatted by numpy.

    Python formats a float in ~0.6 µs; a 1,000-cell rack has a thousand per sample, which
    made JSON encoding the bottleneck of a backlog drain. Here each value is a fixed-width
    field of ASCII digits (padded with spaces, which JSON allows between tokens); decimals are
    trimmed while every value ends in 0 (a 1 mV BMS gives ``3.301``, not ``3.3010``).
    Short arrays and arrays with NaN (unread cells, ``null`` on the wire) go through json.
    """
    if values.size < 64 or not np.isfinite(values).all():
        return dumps(_rounded(values, decimals))  # few values: numpy's fixed cost dominates
    q = np.rint(np.abs(values) * 10.0**decimals).astype(np.int64)
    while decimals > 0 and not (q % 10).any():
        q //= 10
        decimals -= 1
    integer, fraction = np.divmod(q, 10**decimals)
    int_digits = len(str(int(integer.max())))
    negative = (values < 0) & (q > 0)
    sign = 1 if negative.any() else 0
    point = 1 if decimals else 0
    width = sign + int_digits + point + decimals + 1
    out = np.full((values.size, width), ord(" "), dtype=np.uint8)
    digits_used = np.ones(values.size, dtype=np.int64)
    for k in range(int_digits):
        col = sign + int_digits - 1 - k
        digit = (integer // 10**k) % 10 + ord("0")
        shown = (integer >= 10**k) | (k == 0)
        out[:, col] = np.where(shown, digit, ord(" "))
        if k:
            digits_used += integer >= 10**k
    if sign:
        rows = np.flatnonzero(negative)
        out[rows, sign + int_digits - 1 - digits_used[rows]] = ord("-")
    if decimals:
        out[:, sign + int_digits] = ord(".")
        for k in range(decimals):
            out[:, sign + int_digits + 1 + k] = (fraction // 10 ** (decimals - 1 - k)) % 10 + 48
    out[:, -1] = ord(",")
    return b"[" + out.tobytes()[:-1] + b"]"


def _rounded(values: np.ndarray, decimals: int) -> list[float | None]:
    out = np.round(values, decimals).tolist()
    if np.isnan(values).any():  # a cell that could not be read is null on the wire
        return [None if math.isnan(v) else v for v in out]
    return out


@dataclass(slots=True)
class Message:
    """One MQTT publish: a batch of one device's stream and the outbox rows it settles."""

    topic: str
    payload: bytes
    stream: str
    outbox_ids: list[int]
    seqs: list[int]


Entry = tuple[int, dict[str, Any]]  # (outbox id, item)


class Encoder:
    """Turns outbox rows into size-limited batch messages for one site and encoding."""

    def __init__(self, prefix: str, site: str, encoding: str, max_message_bytes: int) -> None:
        self.prefix = prefix
        self.site = site
        self.encoding = encoding
        self.max_message_bytes = max_message_bytes
        # Learned compressed bytes per item, per stream: sizes the next compact batch.
        self._compact_item_bytes: dict[str, float] = {}

    def messages(self, stream: str, rows: Sequence[dict[str, Any]]) -> Iterator[Message]:
        """Batches in outbox order, one device per message, each at most max_message_bytes.

        A single item larger than the limit still goes alone (the broker may refuse it, which
        the drainer logs): splitting one sample across messages would break the seq contract.
        """
        by_device: dict[str, list[Entry]] = {}
        for row in rows:
            if row["data"] is not None:
                item = item_from_row(stream, row["seq"], row["data"])
                by_device.setdefault(row["device"], []).append((row["outbox_id"], item))
        chunks = self._compact_chunks if self.encoding == "compact" else self._json_chunks
        for device, entries in by_device.items():
            yield from chunks(stream, device, entries)

    def _json_chunks(self, stream: str, device: str, entries: list[Entry]) -> Iterator[Message]:
        budget = self.max_message_bytes - 400  # room for the envelope
        raws = [dumps_item(item) for _, item in entries]
        start, size = 0, 0
        for i, raw in enumerate(raws):
            if i > start and size + len(raw) + 1 > budget:
                yield self._json_message(stream, device, entries[start:i], raws[start:i])
                start, size = i, 0
            size += len(raw) + 1
        if start < len(entries):
            yield self._json_message(stream, device, entries[start:], raws[start:])

    def _json_message(
        self, stream: str, device: str, entries: list[Entry], raws: list[bytes]
    ) -> Message:
        head = envelope(self.site, device, stream, [item["seq"] for _, item in entries])
        # Items are already serialised (to measure them): splice instead of encoding twice.
        payload = dumps(head)[:-1] + b',"items":[' + b",".join(raws) + b"]}"
        return self._message(stream, device, entries, payload)

    def _compact_chunks(self, stream: str, device: str, entries: list[Entry]) -> Iterator[Message]:
        """Compressed size is only known after compressing: size each batch from the last
        one's bytes per item, and halve a batch that still comes out too large."""
        start = 0
        while start < len(entries):
            per_item = self._compact_item_bytes.get(stream, 2048.0)
            count = max(1, int(0.9 * self.max_message_bytes / per_item))
            while True:
                chunk = entries[start : start + count]
                head = envelope(self.site, device, stream, [item["seq"] for _, item in chunk])
                payload = encode_compact(head, [item for _, item in chunk])
                if len(payload) <= self.max_message_bytes or len(chunk) == 1:
                    break
                count = len(chunk) // 2
            self._compact_item_bytes[stream] = max(1.0, len(payload) / len(chunk))
            yield self._message(stream, device, chunk, payload)
            start += len(chunk)

    def _message(self, stream: str, device: str, entries: list[Entry], payload: bytes) -> Message:
        return Message(
            topic=data_topic(self.prefix, self.site, device, stream),
            payload=payload,
            stream=stream,
            outbox_ids=[outbox_id for outbox_id, _ in entries],
            seqs=[item["seq"] for _, item in entries],
        )


def envelope(site: str, device: str, stream: str, seqs: Sequence[int]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_IDS[stream],
        "site": site,
        "device": device,
        "stream": stream,
        "seq_first": min(seqs),
        "seq_last": max(seqs),
        "count": len(seqs),
    }


# -- compact encoding -------------------------------------------------------------------------

_CELL_FIELDS = (
    ("cell_voltage_v", "cell_voltage_mv_delta", VOLTAGE_STEP_V),
    ("cell_temperature_c", "cell_temperature_dc_delta", TEMPERATURE_STEP_C),
)


def encode_compact(head: dict[str, Any], items: list[dict[str, Any]]) -> bytes:
    """zlib(JSON) with cell arrays as integer deltas against the previous item's cells."""
    out_items = []
    refs: dict[str, np.ndarray] = {}
    for item in items:
        out = dict(item)
        for key, delta_key, step in _CELL_FIELDS:
            if key in out:
                values = np.array(out.pop(key), dtype=np.float64)  # null -> NaN
                out[delta_key] = _deltas(values, step, refs, key)
        out_items.append(out)
    doc = {**head, "encoding": COMPACT, "items": out_items}
    return zlib.compress(dumps(doc), 6)  # level 9: ~8 % smaller, ten times slower here


def _deltas(
    values: np.ndarray, step: float, refs: dict[str, np.ndarray], key: str
) -> list[int | None]:
    ref = refs.get(key)
    if ref is None or ref.size != values.size:
        ref = np.zeros(values.size, dtype=np.int64)  # first item, or the cell count changed
    good = ~np.isnan(values)
    q = np.where(good, np.rint(values / step), 0).astype(np.int64)
    deltas = q - ref
    refs[key] = np.where(good, q, ref)  # a missing cell keeps its last good value as reference
    if good.all():
        return deltas.tolist()
    return [d if ok else None for d, ok in zip(deltas.tolist(), good.tolist(), strict=True)]


def decode_compact(doc: dict[str, Any]) -> dict[str, Any]:
    """The canonical document of a decompressed compact one (cells back in V and °C)."""
    refs: dict[str, np.ndarray] = {}
    items = []
    for item in doc["items"]:
        out = dict(item)
        for key, delta_key, step in _CELL_FIELDS:
            if delta_key not in out:
                continue
            raw = out.pop(delta_key)
            deltas = np.array([0 if d is None else d for d in raw], dtype=np.int64)
            ref = refs.get(key)
            if ref is None or ref.size != deltas.size:
                ref = np.zeros(deltas.size, dtype=np.int64)
            ref = refs[key] = ref + deltas
            values = np.round(ref * step, 4).tolist()
            out[key] = [None if d is None else v for d, v in zip(raw, values, strict=True)]
        items.append(out)
    canonical = {k: v for k, v in doc.items() if k != "encoding"}
    canonical["items"] = items
    return canonical


def decode(payload: bytes) -> dict[str, Any]:
    """A payload as its canonical document, whichever encoding; ValueError if it is neither.

    JSON starts with ``{``; a zlib stream with 0x78 (RFC 1950 CMF byte for deflate, 32 KiB).
    """
    if payload[:1] == b"{":
        return json.loads(payload)
    if payload[:1] == b"\x78":
        doc = json.loads(zlib.decompress(payload))
        return decode_compact(doc) if doc.get("encoding") == COMPACT else doc
    raise ValueError("payload is neither JSON nor zlib-compressed JSON")
