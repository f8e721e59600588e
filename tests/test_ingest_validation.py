"""The ingest's schema check: the quick check of a message's items (bess_edge/cloud/quickcheck.py)
may only ever vouch for what the published schema accepts; everything else is refused with the
full validator's reason and lands in ``dead_letter``."""

from __future__ import annotations

import copy
import json
import zlib
from importlib import resources
from typing import Any

import fastjsonschema
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bess_edge.cloud.messages import Batch, Parser, Refusal, _inline_refs
from bess_edge.cloud.quickcheck import items_check
from bess_edge.cloud.schema import migrate
from bess_edge.cloud.writer import Writer
from bess_edge.sync.payload import COMPACT

TOPIC = "bess/site-a/rack-1/telemetry"
ITEM = {
    "seq": 1, "ts_ms": 1_765_000_000_000, "quality": 0, "quality_flags": ["stale"],
    "pack_voltage_v": 52.8, "pack_current_a": -3, "pack_power_w": None, "bms_soc_pct": 61.0,
    "bms_soh_pct": None, "cell_voltage_min_v": 3.29, "cell_voltage_max_v": 3.31,
    "cell_temperature_min_c": 25.0, "cell_temperature_max_c": 25.5, "status_flags": 0,
    "fault_flags": 2**40, "cell_voltage_v": [3.3, None, 3.29, 3, float("nan")],
    "cell_temperature_c": [25.0, 25.5], "extra": {"balancing_a": 0.1, "fan": None},
    "quality_notes": ["cell 2 not read"],
}  # fmt: skip


def _doc(items: list[Any]) -> dict[str, Any]:
    return {"schema": "bess-edge/telemetry/1", "site": "site-a", "device": "rack-1",
            "stream": "telemetry", "seq_first": 1, "seq_last": 1, "count": len(items),
            "items": items}  # fmt: skip


def dumps(doc: dict[str, Any]) -> bytes:
    """As a gateway sends it, but with NaN as JSON's NaN literal (json.loads reads it)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def _full_validator() -> Any:
    raw = json.loads(resources.files("bess_edge").joinpath("schemas/telemetry.json").read_text())
    return fastjsonschema.compile(_inline_refs(raw, raw["$defs"]))


FULL = _full_validator()
PARSER = Parser("bess", 1 << 20)


def _verdict(validate: Any, doc: dict[str, Any]) -> str:
    try:
        validate(doc)
    except fastjsonschema.JsonSchemaException as exc:
        return exc.message
    return "valid"


def test_the_telemetry_items_get_a_quick_check_that_vouches_for_a_valid_message_only():
    schema = json.loads(resources.files("bess_edge").joinpath("schemas/telemetry.json").read_text())
    check = items_check(_inline_refs(schema, schema["$defs"])["properties"]["items"]["items"])
    assert check is not None
    assert check([ITEM, {**ITEM, "seq": 2}])
    for bad in ({**ITEM, "cell_voltage_v": [3.3, "3.3"]}, {**ITEM, "seq": 0},
                {**ITEM, "extra": {"x": True}}, {**ITEM, "quality_flags": ["nope"]},
                {k: v for k, v in ITEM.items() if k != "extra"}, {**ITEM, "more": 1},
                {**ITEM, "seq": 2.0}):  # fmt: skip
        assert not check([ITEM, bad]), bad


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ([3.3, 3.31, "3.32"], "cell_voltage_v[2] must be number or null"),
        ([3.3, 3.31, True], "cell_voltage_v[2] must be number or null"),
        ([3.3, 3.31, [3.32]], "cell_voltage_v[2] must be number or null"),
        ([3.3, 3.31, {"v": 3.32}], "cell_voltage_v[2] must be number or null"),
        ("3.3,3.31", "cell_voltage_v must be array"),
    ],
)
def test_a_cell_array_with_a_string_a_bool_or_a_nested_list_is_refused_with_the_reason(
    cells: Any, reason: str
) -> None:
    second = {**ITEM, "seq": 2, "cell_voltage_v": cells}
    refusal = PARSER.parse(TOPIC, dumps(_doc([ITEM, second])))
    assert isinstance(refusal, Refusal)
    assert refusal.reason == f"schema telemetry: data.items[1].{reason}"


def test_an_integer_valued_float_seq_is_the_full_validators_call_not_refused_by_the_quick_one():
    doc = _doc([{**ITEM, "seq": 5.0}])
    assert _verdict(PARSER.validators["telemetry"], doc) == _verdict(FULL, doc) == "valid"


@pytest.mark.parametrize("delta", [b"1" + b"0" * 20, b"1e400", b"-Infinity"])
def test_a_compact_cell_delta_beyond_int64_is_refused_not_raised(delta: bytes) -> None:
    # Raised, it stopped the ingest's parse thread and every message behind it waited.
    item = {**ITEM, "cell_voltage_mv_delta": [3300, 0]}
    del item["cell_voltage_v"]
    doc = {**_doc([item]), "encoding": COMPACT}
    good = dumps(doc)
    assert isinstance(PARSER.parse(TOPIC, zlib.compress(good)), Batch)
    bad = good.replace(b"[3300,0]", b"[3300," + delta + b"]")
    refusal = PARSER.parse(TOPIC, zlib.compress(bad))
    assert isinstance(refusal, Refusal)
    assert refusal.reason.startswith("not a bess-edge payload: bad compact encoding: OverflowError")


@pytest.mark.parametrize("head", [2**63, 10**30])
def test_a_ping_reply_whose_head_is_no_bigint_seq_is_refused(head: int) -> None:
    # Accepted, PostgreSQL refused it in the write thread, which retried that batch forever.
    heads = {"rack-1": {"telemetry": 7}}
    reply = {"schema": "bess-edge/reply/1", "site": "site-a", "verb": "ping", "id": "p-1",
             "ok": True, "ts_ms": 1, "result": {"published_heads": heads}}  # fmt: skip
    assert PARSER.control("bess/site-a/reply", json.dumps(reply).encode()) == ("reply", reply)
    heads["rack-1"]["telemetry"] = head
    refused = PARSER.control("bess/site-a/reply", json.dumps(reply).encode())
    assert refused == "reply: published_heads is not {device: {stream: seq}} (seq 0 to 2**63 - 1)"


def test_refused_cell_arrays_land_in_dead_letter_with_their_reason(pg_url: str) -> None:
    messages = [
        PARSER.parse(TOPIC, dumps(_doc([{**ITEM, "cell_voltage_v": [3.3, value]}])))
        for value in ("3.3", False, [3.3])
    ]
    good = PARSER.parse(TOPIC, dumps(_doc([ITEM])))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO sites (site, created_ms) VALUES ('site-a', 0)")
        writer = Writer(conn, worker="test", retention_days=36500)
        result = writer.write([*messages, good])  # type: ignore[list-item]
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letter ORDER BY id")]
        stored = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    assert result.refused == 3 and stored == (1,)
    reason = "schema telemetry: data.items[0].cell_voltage_v[1] must be number or null"
    assert reasons == [reason] * 3


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["stale", "missing", "nope"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
KEYS = st.sampled_from([*ITEM, "other"])
# One change to a valid item: a property replaced, removed or added, or one element of an
# array (or one value of ``extra``) replaced.
CHANGE = st.tuples(st.sampled_from(["set", "delete", "element"]), KEYS, VALUES, st.integers(0, 9))


@pytest.mark.fuzz
@given(changes=st.lists(CHANGE, max_size=3), which=st.integers(0, 2))
def test_the_quick_check_and_the_published_schema_agree_on_any_change_to_a_valid_message(
    changes: list[tuple[str, str, Any, int]], which: int
) -> None:
    items = [copy.deepcopy({**ITEM, "seq": n}) for n in (1, 2, 3)]
    item = items[which]
    for action, key, value, index in changes:
        if action == "set":
            item[key] = value
        elif action == "delete":
            item.pop(key, None)
        elif isinstance(item.get(key), list) and item[key]:
            item[key][index % len(item[key])] = value
        elif isinstance(item.get(key), dict):
            item[key][str(index)] = value
    doc = _doc(items)
    assert _verdict(PARSER.validators["telemetry"], doc) == _verdict(FULL, doc)


def test_compact_cell_deltas_that_sum_past_int64_are_refused_not_wrapped() -> None:
    # Each delta fits int64, their running sum does not: numpy's addition wrapped it silently
    # and the ingest stored a cell voltage of about -9.2e15 V.
    half = 2**62
    first = {**ITEM, "cell_voltage_mv_delta": [half, 0]}
    second = {**ITEM, "seq": 2, "cell_voltage_mv_delta": [half, 0]}
    for item in (first, second):
        del item["cell_voltage_v"]
    refusal = PARSER.parse(
        TOPIC, zlib.compress(dumps({**_doc([first, second]), "encoding": COMPACT}))
    )
    assert isinstance(refusal, Refusal)
    assert refusal.reason == (
        "not a bess-edge payload: bad compact encoding: "
        "OverflowError('cell_voltage_mv_delta sums past int64')"
    )
