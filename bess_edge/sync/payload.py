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
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.model import Quality
from bess_edge.storage.cells import CELL_DTYPE

STREAMS = ("alerts", "diagnostics", "telemetry")  # drain order: alerts first
SCHEMA_IDS = {stream: f"bess-edge/{stream}/1" for stream in STREAMS}
STATE_SCHEMA = "bess-edge/state/1"
REPLY_SCHEMA = "bess-edge/reply/1"
COMPACT = "compact-1"
CONTENT_TYPE = {"json": "application/json", "compact": "application/x-bess-edge-compact+zlib"}

VOLTAGE_STEP_V = 0.001  # wire resolution of the compact cell arrays (see _CELL_FIELDS)
TEMPERATURE_STEP_C = 0.1
ZLIB_LEVEL = 3

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


def _event_item(stream: str, seq: int, data: dict[str, Any]) -> bytes:
    """A diagnostics or alerts outbox row's data (see ``Store.outbox_fetch``) as a JSON item.

    A diagnosis goes in as the store wrote it (compact JSON, no NaN): parsing it and dumping it
    again cost ~20 us of a live diagnostics message's CPU.
    """
    if stream == "diagnostics":
        diagnosis = data["diagnosis_json"].encode()
        return b'{"seq":%d,"ts_ms":%d,"diagnosis":%s}' % (seq, data["ts_ms"], diagnosis)
    item = {"seq": seq, "ts_ms": data["ts_ms"]}
    item.update((k, data[k]) for k in _ALERT_FIELDS)
    return dumps(item)


def _telemetry_head(seq: int, row: dict[str, Any]) -> dict[str, Any]:
    """A telemetry item without its cell arrays, which :class:`Batch` formats for many items
    at once."""
    quality = int(row["quality"])
    item: dict[str, Any] = {"seq": seq, "ts_ms": row["ts_ms"], "quality": quality}
    item["quality_flags"] = list(_quality_names(quality))
    for key in _SAMPLE_SCALARS:
        item[key] = row[key]
    item["status_flags"] = row["status_flags"]
    item["fault_flags"] = row["fault_flags"]
    item["extra"] = json.loads(row["extra"]) if row["extra"] else {}
    item["quality_notes"] = json.loads(row["quality_notes"]) if row["quality_notes"] else []
    return item


@functools.lru_cache(maxsize=256)
def _quality_names(quality: int) -> tuple[str, ...]:
    return tuple(Quality(quality).names())  # enum iteration: ~100 µs, once per distinct value


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# -- numbers formatted by numpy -----------------------------------------------------------------
#
# Python formats a float in ~0.6 µs; a 1,000-cell rack has a thousand per sample, which made JSON
# encoding the bottleneck of a backlog drain. Here a whole block of cell arrays is formatted at
# once: each value becomes a fixed-width field of ASCII (right-aligned, space-padded, followed
# by a comma), looked up in a table of all numbers of that width when it is small enough, and
# the padding is removed from each row's bytes at the end.

_NULL = np.frombuffer(b"null,", dtype=np.uint8)
_TABLE_MAX_ENTRIES = 1 << 18  # 256 k entries of <= 8 bytes: 2 MB at most, cached


def json_rows(values: np.ndarray, decimals: int) -> list[bytes]:
    """Each row of a (k × n) array as a JSON array of numbers with at most ``decimals`` decimals.

    Decimals are trimmed while every value of the block ends in 0 (a 1 mV BMS gives ``3.301``,
    not ``3.3010``); NaN and infinite values (cells that could not be read) are ``null``.
    """
    k, n = values.shape
    if n == 0:
        return [b"[]"] * k
    finite = np.isfinite(values)
    q = np.rint(np.where(finite, values, 0.0) * 10.0**decimals).astype(np.int64)
    while decimals > 0 and not (q % 10).any():
        q //= 10
        decimals -= 1
    text = _number_text(q.ravel(), finite.ravel(), decimals).reshape(k, -1)
    text[:, -1] = ord("]")  # the last value's comma
    kept = text != ord(" ")
    ends = np.cumsum(np.count_nonzero(kept, axis=1)).tolist()
    raw = text[kept].tobytes()  # one pass drops the padding of every row
    return [b"[" + raw[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _number_text(q: np.ndarray, finite: np.ndarray, decimals: int) -> np.ndarray:
    """(len(q), width) ASCII of ``q / 10**decimals``, each followed by a comma; null where not
    ``finite``."""
    int_digits = len(str(int(np.abs(q).max()) // 10**decimals))
    signed = bool((q < 0).any())
    if (1 + signed) * 10 ** (int_digits + decimals) <= _TABLE_MAX_ENTRIES:
        table, first = _number_table(decimals, int_digits, signed)
        rows = table.view(f"V{table.shape[1]}").ravel()  # a gather of whole fields, not bytes
        return rows[np.where(finite, q - first, len(rows) - 1)].view(np.uint8).reshape(q.size, -1)
    text = _fixed_width(q, decimals)
    text[~finite] = _null_field(text.shape[1])
    return text


@functools.lru_cache(maxsize=16)
def _number_table(decimals: int, int_digits: int, signed: bool) -> tuple[np.ndarray, int]:
    """Every number of that many digits as a fixed-width field, and null as the last row."""
    limit = 10 ** (int_digits + decimals)
    first = 1 - limit if signed else 0
    numbers = _fixed_width(np.arange(first, limit, dtype=np.int64), decimals)
    return np.vstack([numbers, _null_field(numbers.shape[1])]), first


def _null_field(width: int) -> np.ndarray:
    return np.concatenate([np.full(max(0, width - _NULL.size), ord(" "), np.uint8), _NULL])


def _fixed_width(q: np.ndarray, decimals: int) -> np.ndarray:
    """The integers ``q`` as decimal numbers with ``decimals`` decimals, one right-aligned field
    (at least null's width) per value followed by a comma; no "-0"."""
    magnitude = np.abs(q)
    integer, fraction = np.divmod(magnitude, 10**decimals)
    int_digits = len(str(int(integer.max())))
    negative = q < 0
    sign = 1 if negative.any() else 0
    point = 1 if decimals else 0
    number_width = sign + int_digits + point + decimals
    pad = max(0, _NULL.size - 1 - number_width)
    out = np.full((q.size, pad + number_width + 1), ord(" "), dtype=np.uint8)
    digits_used = np.ones(q.size, dtype=np.int64)
    first_col = pad + sign
    for k in range(int_digits):
        col = first_col + int_digits - 1 - k
        shown = (integer >= 10**k) | (k == 0)
        out[:, col] = np.where(shown, (integer // 10**k) % 10 + ord("0"), ord(" "))
        if k:
            digits_used += integer >= 10**k
    if sign:
        rows = np.flatnonzero(negative)
        out[rows, first_col + int_digits - 1 - digits_used[rows]] = ord("-")
    if decimals:
        out[:, first_col + int_digits] = ord(".")
        for k in range(decimals):
            digit = (fraction // 10 ** (decimals - 1 - k)) % 10 + ord("0")
            out[:, first_col + int_digits + 1 + k] = digit
    out[:, -1] = ord(",")
    return out


# -- batches ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One MQTT publish: a batch of one device's stream and the outbox rows it settles."""

    topic: str
    payload: bytes
    stream: str
    outbox_ids: list[int]
    seqs: list[int]


# Cell arrays: JSON name, decimals kept in JSON (the store holds float32 cells, ~0.2 mV at 4 V),
# compact name and compact step. The BMS sensors resolve 1 mV (sim.py quantises to 1 mV like most
# BMS AFEs, e.g. TI BQ76952 datasheet: 1 mV LSB) and 0.1 °C.
_CELL_FIELDS = (
    ("cell_voltage_v", 4, "cell_voltage_mv_delta", VOLTAGE_STEP_V),
    ("cell_temperature_c", 2, "cell_temperature_dc_delta", TEMPERATURE_STEP_C),
)


@dataclass(slots=True)
class Batch:
    """Consecutive items of one device's stream: each item's JSON without its cell arrays, and
    the cell arrays of all items stacked (items × cells), so that numpy formats them at once."""

    outbox_ids: list[int]
    seqs: list[int]
    heads: list[bytes]
    cells: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.seqs)

    def texts(self, start: int, stop: int, compact: bool) -> list[bytes]:
        """Items ``start:stop`` as JSON; compact: cells as deltas, the first against zero."""
        fields = []
        for key, decimals, delta_key, step in _CELL_FIELDS:
            if key in self.cells:
                block = self.cells[key][start:stop]
                name, rows = (
                    (delta_key, json_rows(_deltas(block, step), 0))
                    if compact
                    else (key, json_rows(block, decimals))
                )
                fields.append((b',"%s":' % name.encode(), rows))
        heads = self.heads[start:stop]
        if not fields:
            return heads
        return [
            b"".join([head[:-1], *(name + rows[i] for name, rows in fields), b"}"])
            for i, head in enumerate(heads)
        ]


def _deltas(values: np.ndarray, step: float) -> np.ndarray:
    """Row-to-row differences of a (items × cells) block in units of ``step``, the first row
    against zero; a missing (NaN) cell stays NaN and keeps its last good value as reference."""
    q = np.rint(values / step)
    ref = q
    missing = np.isnan(q)
    if missing.any():
        rows = np.where(missing, -1, np.arange(len(q))[:, None])
        last_good = np.maximum.accumulate(rows, axis=0)
        ref = np.where(last_good >= 0, np.take_along_axis(q, np.maximum(last_good, 0), axis=0), 0)
    deltas = np.empty_like(q)
    deltas[0] = q[0]
    np.subtract(q[1:], ref[:-1], out=deltas[1:])
    return deltas


def _batches(stream: str, rows: Sequence[dict[str, Any]]) -> Iterator[Batch]:
    """Rows of one device as compact batches; telemetry splits where a cell array changes length
    (its cells are deltas against the previous item)."""
    if stream != "telemetry":
        yield Batch(
            [r["outbox_id"] for r in rows],
            [r["seq"] for r in rows],
            [_event_item(stream, r["seq"], r["data"]) for r in rows],
            {},
        )
        return
    shapes = [_cell_shape(r) for r in rows]
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or shapes[i] != shapes[start]:
            yield _telemetry_batch(rows[start:i])
            start = i


def _json_items(stream: str, rows: Sequence[dict[str, Any]]) -> list[bytes]:
    """Each row as its JSON item, whichever its device.

    A numpy pass costs ~15 us whatever its size, up to thousands of values: the cell arrays of
    every row with the same cell counts go in one pass, not one per device, which made most of
    a live telemetry message's encoding (20 racks at 1 Hz: 90 us a message, now 25).
    """
    if stream != "telemetry":
        return [_event_item(stream, r["seq"], r["data"]) for r in rows]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_cell_shape(row), []).append(i)
    texts = [b""] * len(rows)
    for indices in groups.values():
        batch = _telemetry_batch([rows[i] for i in indices])
        for i, text in zip(indices, batch.texts(0, len(batch), compact=False), strict=True):
            texts[i] = text
    return texts


def _cell_shape(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(len(row["data"][key] or b"") for key, *_ in _CELL_FIELDS)


def _telemetry_batch(rows: Sequence[dict[str, Any]]) -> Batch:
    """Telemetry rows with equal cell counts: their heads, and their cells stacked."""
    return Batch(
        [r["outbox_id"] for r in rows],
        [r["seq"] for r in rows],
        [dumps(_telemetry_head(r["seq"], r["data"])) for r in rows],
        {key: _stack([r["data"][key] for r in rows]) for key, *_ in _CELL_FIELDS},
    )


def _stack(blobs: list[bytes | None]) -> np.ndarray:
    """Cell BLOBs of equal length as one (items × cells) float64 array."""
    joined = b"".join(blob or b"" for blob in blobs)
    return np.frombuffer(joined, dtype=CELL_DTYPE).astype(np.float64).reshape(len(blobs), -1)


class Encoder:
    """Turns outbox rows into size-limited batch messages for one site and encoding."""

    def __init__(
        self,
        prefix: str,
        site: str,
        encoding: str,
        max_message_bytes: int,
        device_info: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.prefix = prefix
        self.site = site
        # Each device's identity strings (manufacturer, model, serial_number, firmware), kept
        # current by the daemon; telemetry envelopes carry them as device_info.
        self.device_info = device_info if device_info is not None else {}
        self.encoding = encoding
        self.max_message_bytes = max_message_bytes
        # Learned compressed bytes per item, per stream: sizes the next compact batch.
        self._compact_item_bytes: dict[str, float] = {}

    def messages(self, stream: str, rows: Sequence[dict[str, Any]]) -> Iterator[Message]:
        """Batches in outbox order, one device per message, each at most max_message_bytes.

        A single item larger than the limit still goes alone (the broker may refuse it, which
        the drainer logs): splitting one sample across messages would break the seq contract.
        """
        by_device: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row["data"] is not None:
                by_device.setdefault(row["device"], []).append(row)
        if self.encoding == "compact":  # cells as deltas within a message: device by device
            for device, device_rows in by_device.items():
                for batch in _batches(stream, device_rows):
                    yield from self._compact_chunks(stream, device, batch)
            return
        texts = iter(_json_items(stream, [r for rs in by_device.values() for r in rs]))
        for device, device_rows in by_device.items():
            items = [next(texts) for _ in device_rows]
            ids, seqs = [r["outbox_id"] for r in device_rows], [r["seq"] for r in device_rows]
            yield from self._json_chunks(stream, device, Batch(ids, seqs, items, {}))

    def _json_chunks(self, stream: str, device: str, batch: Batch) -> Iterator[Message]:
        budget = self.max_message_bytes - 400  # room for the envelope
        raws = batch.texts(0, len(batch), compact=False)
        start, size = 0, 0
        for i, raw in enumerate(raws):
            if i > start and size + len(raw) + 1 > budget:
                yield self._message(stream, device, batch, start, i, raws[start:i])
                start, size = i, 0
            size += len(raw) + 1
        if start < len(raws):
            yield self._message(stream, device, batch, start, len(raws), raws[start:])

    def _compact_chunks(self, stream: str, device: str, batch: Batch) -> Iterator[Message]:
        """Compressed size is only known after compressing: size each batch from the last
        one's bytes per item, and halve a batch that still comes out too large."""
        start = 0
        while start < len(batch):
            per_item = self._compact_item_bytes.get(stream, 2048.0)
            count = max(1, int(0.9 * self.max_message_bytes / per_item))
            while True:
                stop = min(len(batch), start + count)
                texts = batch.texts(start, stop, compact=True)
                message = self._message(stream, device, batch, start, stop, texts, compact=True)
                if len(message.payload) <= self.max_message_bytes or stop - start == 1:
                    break
                count = (stop - start) // 2
            self._compact_item_bytes[stream] = max(1.0, len(message.payload) / (stop - start))
            yield message
            start = stop

    def _message(
        self,
        stream: str,
        device: str,
        batch: Batch,
        start: int,
        stop: int,
        texts: list[bytes],
        compact: bool = False,
    ) -> Message:
        """Items already serialised, spliced into their envelope rather than encoded again."""
        seqs = batch.seqs[start:stop]
        doc = envelope(self.site, device, stream, seqs)
        if stream == "telemetry" and self.device_info.get(device):
            doc["device_info"] = self.device_info[device]
        head = dumps(doc)[:-1]
        encoding = b',"encoding":"%s"' % COMPACT.encode() if compact else b""
        document = b"".join([head, encoding, b',"items":[', b",".join(texts), b"]}"])
        return Message(
            topic=data_topic(self.prefix, self.site, device, stream),
            payload=zlib.compress(document, ZLIB_LEVEL) if compact else document,
            stream=stream,
            outbox_ids=batch.outbox_ids[start:stop],
            seqs=seqs,
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


def decode_compact(doc: dict[str, Any]) -> dict[str, Any]:
    """The canonical document of a decompressed compact one (cells back in V and °C)."""
    refs: dict[str, np.ndarray] = {}
    items = []
    for item in doc["items"]:
        out = dict(item)
        for key, _, delta_key, step in _CELL_FIELDS:
            if delta_key not in out:
                continue
            raw = out.pop(delta_key)
            deltas = np.array([0 if d is None else d for d in raw], dtype=np.int64)
            ref = refs.get(key)
            if ref is None or ref.size != deltas.size:
                ref = np.zeros(deltas.size, dtype=np.int64)
            total = ref + deltas
            # numpy wraps int64 silently: a sum whose sign differs from both addends' wrapped.
            if ((ref ^ total) & (deltas ^ total) < 0).any():
                raise OverflowError(f"{delta_key} sums past int64")
            ref = refs[key] = total
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
