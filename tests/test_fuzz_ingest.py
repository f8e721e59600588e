"""Fuzz: whatever arrives on the cloud ingest's topics, the parser returns a batch it validated or
a refusal with its reason, and a control message is a document or the reason it is refused.

A raise would stop the ingest's parse thread, and every message behind it would wait
unacknowledged. The payloads are hostile the ways a broken or malicious publisher can be: near
valid messages (plain JSON or compact zlib) with one value replaced, numbers rewritten as NaN,
Infinity, 1e400 or hundreds of digits, bytes that are not UTF-8 spliced in, zlib bombs, nesting
far deeper than the recursion limit, and plain noise.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bess_edge.cloud.messages import BIGINT_MAX, Batch, Parser, Refusal
from bess_edge.sync.payload import COMPACT, STREAMS

pytestmark = pytest.mark.fuzz

LIMIT = 1 << 16  # small, so that a bomb's bounded expansion stays cheap
PARSER = Parser("bess", LIMIT)
SITE, DEVICE = "site-a", "rack-1"
ITEM = {
    "seq": 1, "ts_ms": 1_765_000_000_000, "quality": 0, "quality_flags": [],
    "pack_voltage_v": 52.8, "pack_current_a": -3.5, "pack_power_w": None, "bms_soc_pct": 61.0,
    "bms_soh_pct": None, "cell_voltage_min_v": 3.29, "cell_voltage_max_v": 3.31,
    "cell_temperature_min_c": 25.0, "cell_temperature_max_c": 25.5, "status_flags": 0,
    "fault_flags": 0, "cell_voltage_v": [3.3, 3.31, 3.29], "cell_temperature_c": [25.0, 25.5],
    "extra": {}, "quality_notes": [],
}  # fmt: skip
COMPACT_ITEM = {
    **{k: v for k, v in ITEM.items() if k not in ("cell_voltage_v", "cell_temperature_c")},
    "cell_voltage_mv_delta": [3300, 10, -20],
    "cell_temperature_dc_delta": [250, 5],
}
ENVELOPE = {"schema": "bess-edge/telemetry/1", "site": SITE, "device": DEVICE,
            "stream": "telemetry", "seq_first": 1, "seq_last": 2, "count": 2}  # fmt: skip
REPLY = {"schema": "bess-edge/reply/1", "site": SITE, "verb": "ping", "id": "p-1", "ok": True,
         "ts_ms": 1, "result": {"published_heads": {DEVICE: {"telemetry": 7}}}}  # fmt: skip
STATE = {"schema": "bess-edge/state/1", "site": SITE, "state": "online", "reason": "connected",
         "client_id": "gw-1", "ts_ms": 1_765_000_000_000}  # fmt: skip

HUGE = [2**63, -(2**63) - 1, 10**300, 1e308, -1e308, float("nan"), float("inf"), -float("inf")]
LEAF = (
    st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE) | st.floats()
    | st.text(max_size=8)
)  # fmt: skip
VALUE = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
# What the text of a number can be rewritten to: JSON's forbidden literals, overflow, long digits.
LITERALS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9" * 400, b"-" + b"9" * 30,
            b"9" * 5000, b"1.0", b"0", b"-0", b"true", b"null", b'"1"']  # fmt: skip
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
BOMBS = [zlib.compress(b" " * (8 * LIMIT)), zlib.compress(b"[" * (4 * LIMIT)),
         zlib.compress(b'{"items":[' + b"0," * (4 * LIMIT))]  # fmt: skip


def _set(doc: Any, path: list[int], value: Any) -> None:
    """Replace one value inside ``doc``, the one ``path`` picks at each level (indices wrap)."""
    for step, index in enumerate(path):
        keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
        key = keys[index % len(keys)]
        if step == len(path) - 1 or not isinstance(doc[key], dict | list) or not doc[key]:
            doc[key] = value
            return
        doc = doc[key]


@st.composite
def near_valid(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` (a deep copy) with up to two values replaced, as JSON text (NaN as a literal),
    then with one number's text rewritten or a few bytes spliced in."""
    doc = json.loads(json.dumps(base))
    for path in draw(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=4), max_size=2)):
        _set(doc, path, draw(VALUE))
    try:
        raw = json.dumps(doc, separators=(",", ":")).encode()
    except ValueError:  # an int beyond the str-conversion limit: the rewrite below still makes it
        raw = json.dumps(base, separators=(",", ":")).encode()
    how = draw(st.sampled_from(["as is", "number", "splice"]))
    if how == "number":
        numbers = list(NUMBER.finditer(raw))
        if numbers:
            match = numbers[draw(st.integers(0, len(numbers) - 1))]
            raw = raw[: match.start()] + draw(st.sampled_from(LITERALS)) + raw[match.end() :]
    elif how == "splice":
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, 4))
        noise = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]) | st.binary(max_size=4)
        )
        raw = raw[:at] + noise + raw[at + cut :]
    return raw


def _telemetry(compact: bool) -> dict[str, Any]:
    items = [{**(COMPACT_ITEM if compact else ITEM), "seq": n} for n in (1, 2)]
    return {**ENVELOPE, "items": items, **({"encoding": COMPACT} if compact else {})}


DEEP = st.builds(
    lambda opener, depth: opener * depth,
    st.sampled_from([b"[", b'{"a":', b'{"items":[']),
    st.integers(1, 50_000),
)
DATA = st.one_of(
    near_valid(_telemetry(compact=False)),
    near_valid(_telemetry(compact=True)).map(zlib.compress),
    near_valid(_telemetry(compact=False)).map(zlib.compress),
    DEEP,
    DEEP.map(zlib.compress),
    st.sampled_from(BOMBS),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"\x78" + b),
    st.binary(max_size=64).map(zlib.compress),
)
TOPIC = st.sampled_from([f"bess/{SITE}/{DEVICE}/{s}" for s in STREAMS] + [
    f"bess/{SITE}/other/telemetry", f"bess/{SITE}/cmd/ping", f"bess/{SITE}/{DEVICE}/nope",
    f"bess/{SITE}/{DEVICE}", "bess", "", "other/a/b/telemetry", f"bess/{SITE}/{DEVICE}/telemetry/x",
])  # fmt: skip


@given(topic=TOPIC, payload=DATA)
def test_any_payload_is_a_validated_batch_or_a_refusal_with_its_reason(topic: str, payload: bytes):
    result = PARSER.parse(topic, payload)
    parts = PARSER.topic_parts(topic)
    if parts is not None and parts[1] == "cmd":
        assert result is None
        return
    if isinstance(result, Refusal):
        assert result.reason and result.topic == topic and result.payload_bytes == len(payload)
        assert result.payload == payload[:65536]
        return
    assert isinstance(result, Batch), result
    assert (result.site, result.device, result.stream) == parts
    assert result.items and all(isinstance(item, dict) for item in result.items)
    assert all(type(item["seq"]) is int and item["seq"] >= 1 for item in result.items)


def _ping(head: Any) -> dict[str, Any]:
    return {**REPLY, "result": {"published_heads": {DEVICE: {"telemetry": head}}}}


CONTROL = st.one_of(
    near_valid(REPLY), (st.integers() | st.sampled_from(HUGE)).map(_ping).flatmap(near_valid),
    near_valid({**REPLY, "verb": "ack", "id": "ack-12"}), near_valid(STATE),
    DEEP, st.binary(max_size=64), st.sampled_from(BOMBS),
)  # fmt: skip
CONTROL_TOPIC = st.sampled_from(
    [f"bess/{SITE}/reply", f"bess/{SITE}/state", "bess/other/reply", "bess/other/state", "bess", ""]
)


@given(topic=CONTROL_TOPIC, payload=CONTROL)
def test_any_control_message_is_a_document_for_its_site_or_the_reason_it_is_refused(
    topic: str, payload: bytes
):
    result = PARSER.control(topic, payload)
    if isinstance(result, str):
        assert result
        return
    kind, doc = result
    assert kind in ("reply", "state") and topic == f"bess/{doc['site']}/{kind}"
    heads = (doc.get("result") or {}).get("published_heads") if kind == "reply" else None
    if heads is not None:  # what the writer stores as bigint seqs
        assert all(
            type(h) is int and 0 <= h <= BIGINT_MAX for s in heads.values() for h in s.values()
        )
