"""The wire format and the command parser as a cloud engineer relies on them (no broker needed).

Payloads are built from a real SQLite store through the same queries sync uses, then checked
against the JSON Schemas shipped in bess_edge/schemas/.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store
from bess_edge.sync import commands, payload
from bess_edge.sync.consumer import SeqSet, load_validators
from bess_edge.sync.payload import STREAMS, Encoder, decode, dumps, json_rows


def _reading(i: int, cells: int, rng: np.random.Generator, nan_cell: int | None = None) -> Reading:
    cell_v = np.round(3.3 + 0.01 * np.sin(np.arange(cells)) + rng.normal(0, 0.001, cells), 3)
    if nan_cell is not None:
        cell_v[nan_cell] = math.nan
    return Reading(
        "rack-1",
        ts_ms=1_700_000_000_000 + 1000 * i,
        pack_voltage_v=float(np.nansum(cell_v)),
        pack_current_a=-12.5,
        cell_voltage_v=cell_v,
        cell_temperature_c=np.round(25 + rng.normal(0, 0.05, max(1, cells // 8)), 2),
        extra={"max_charge_current_a": 100.0},
    )


@pytest.fixture
def store(tmp_path):
    """A store with 50 samples (one with a NaN cell), 50 diagnoses and an alert episode."""
    store = Store(tmp_path / "s.db", synchronous="normal")
    rng = np.random.default_rng(3)
    cycles = [
        Cycle(
            reading=_reading(i, 200, rng, nan_cell=7 if i == 10 else None),
            diagnosis={"soc_pct": 50.0 + i / 10, "weak_cells": [3]},
        )
        for i in range(50)
    ]
    cycles[5].alerts = [
        AlertTransition(1, "rack-1", "cell_overvoltage", "raised", 1_700_000_005_000,
                        severity="critical", message="cell 7 at 3.65 V", cell=7, value=3.65),
        AlertTransition(1, "rack-1", "cell_overvoltage", "acknowledged", 1_700_000_006_000,
                        actor="mqtt", note="on it"),
    ]  # fmt: skip
    store.commit_cycles(cycles)
    yield store
    store.close()


def _messages(store: Store, encoding: str, max_bytes: int = 256 * 1024):
    encoder = Encoder("bess", "site-a", encoding, max_bytes)
    return {s: list(encoder.messages(s, store.outbox_fetch(s, 0, 10_000))) for s in STREAMS}


@pytest.mark.parametrize("encoding", ["json", "compact"])
def test_every_stream_payload_validates_against_its_json_schema(store, encoding):
    validators = load_validators()
    for stream, messages in _messages(store, encoding).items():
        assert messages, stream
        for message in messages:
            assert message.topic == f"bess/site-a/rack-1/{stream}"
            doc = decode(message.payload)
            errors = [e.message for e in validators[stream].iter_errors(doc)]
            assert errors == [], (stream, errors[:3])


def test_each_item_carries_its_seq_and_the_envelope_names_the_range(store):
    by_stream = _messages(store, "json")
    (alerts,) = by_stream["alerts"]
    doc = json.loads(alerts.payload)
    assert [i["transition"] for i in doc["items"]] == ["raised", "acknowledged"]
    assert (doc["seq_first"], doc["seq_last"], doc["count"]) == (1, 2, 2)
    telemetry = [json.loads(m.payload) for m in by_stream["telemetry"]]
    seqs = [item["seq"] for doc in telemetry for item in doc["items"]]
    assert seqs == list(range(1, 51))
    first = telemetry[0]["items"][0]
    assert first["pack_current_a"] == -12.5  # discharging: current < 0
    assert len(first["cell_voltage_v"]) == 200


def test_batches_stay_under_max_message_bytes_and_lose_no_row(store):
    messages = _messages(store, "json", max_bytes=8 * 1024)["telemetry"]
    assert len(messages) > 5
    assert all(len(m.payload) <= 8 * 1024 for m in messages)
    ids = [i for m in messages for i in m.outbox_ids]
    assert len(ids) == len(set(ids)) == 50


def test_compact_round_trip_is_exact_to_one_millivolt_and_keeps_unread_cells_null(store):
    plain = [json.loads(m.payload) for m in _messages(store, "json")["telemetry"]]
    compact = [decode(m.payload) for m in _messages(store, "compact")["telemetry"]]
    a = [i for d in plain for i in d["items"]]
    b = [i for d in compact for i in d["items"]]
    assert len(a) == len(b) == 50
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x["cell_voltage_v"], y["cell_voltage_v"], strict=True):
            assert (u is None and v is None) or abs(u - v) < 0.0006
        assert {k: x[k] for k in x if not k.startswith("cell_")} == {
            k: y[k] for k in y if not k.startswith("cell_")
        }
    assert b[10]["cell_voltage_v"][7] is None
    assert b[11]["cell_voltage_v"][7] == pytest.approx(a[11]["cell_voltage_v"][7], abs=0.0006)


def test_compact_encoding_is_under_one_byte_per_cell_voltage(store):
    compact = _messages(store, "compact")["telemetry"]
    cells = sum(len(i["cell_voltage_v"]) for m in compact for i in decode(m.payload)["items"])
    total = sum(len(m.payload) for m in compact)
    assert total / cells <= 1.0
    assert compact[0].payload[:1] == b"\x78"
    assert json.loads(zlib.decompress(compact[0].payload))["encoding"] == "compact-1"


def test_seqset_counts_duplicates_and_finds_gaps():
    seen = SeqSet()
    for seq in [1, 2, 3, 7, 8, 5, 10]:
        assert seen.add(seq)
    assert not seen.add(2)
    assert len(seen) == 7
    assert seen.gaps(1, 12) == [(4, 4), (6, 6), (9, 9), (11, 12)]
    seen.add(4)
    seen.add(6)
    assert seen.starts == [1, 10] and seen.ends == [8, 10]
    assert 6 in seen and 9 not in seen


@pytest.mark.parametrize(
    ("verb", "payload", "error"),
    [
        ("ping", b"{not json", "not JSON"),
        ("ack", b'{"alert_id": "7"}', "alert_id"),
        ("ack", b'{"alert_id": 7, "sudo": true}', "sudo"),
        ("ack", b"[1, 2]", "JSON object"),
        ("selfdestruct", b"{}", "unknown verb"),
        ("republish", b'{"device": "rack-1"}', "give seq_first"),
        ("republish", b'{"device": "rack-1", "seq_first": 5}', "needs a stream"),
        ("republish", b'{"device": "../x", "stream": "alerts", "seq_first": 1}', "device"),
        ("republish", b'{"device": "r", "stream": "alerts", "seq_first": 9, "seq_last": 2}', ">="),
        ("republish", b'{"device": "r", "stream": "x' + b"y" * 5000 + b'"}', "exceeds"),
    ],
)
def test_malformed_commands_are_refused_with_the_reason(verb, payload, error):
    with pytest.raises(commands.CommandError, match=error):
        commands.parse(verb, payload)


def test_valid_commands_parse():
    assert isinstance(commands.parse("ping", b""), commands.Ping)
    ack = commands.parse("ack", b'{"alert_id": 3, "note": "crew on site", "id": "c1"}')
    assert (ack.alert_id, ack.actor, ack.note, ack.id) == (3, "mqtt", "crew on site", "c1")
    rep = commands.parse("republish", b'{"device": "rack-1", "since_ms": 0, "until_ms": 10}')
    assert rep.stream is None and rep.until_ms == 10


def test_republish_requeues_published_rows_once(store):
    ids = [r["outbox_id"] for r in store.outbox_fetch("telemetry", 0, 100)]
    store.outbox_delete(ids, 123)
    assert store.outbox_depth().get("telemetry", 0) == 0
    assert store.published_heads()["rack-1"]["telemetry"] == 50
    assert store.outbox_requeue("rack-1", "telemetry", seq_first=10, seq_last=19) == 10
    assert store.outbox_requeue("rack-1", "telemetry", seq_first=1, seq_last=19) == 9
    assert store.published_heads()["rack-1"]["telemetry"] == 0
    rows = store.outbox_fetch("telemetry", 0, 100)
    assert sorted(r["seq"] for r in rows) == list(range(1, 20))
    assert store.meta("last_sync_ts_ms") == "123"


def test_the_examples_in_docs_mqtt_md_validate_against_the_schemas():
    text = (Path(__file__).resolve().parent.parent / "docs" / "mqtt.md").read_text()
    examples = re.findall(r"```json (\w+)\n(.*?)```", text, flags=re.S)
    assert {name for name, _ in examples} >= {"telemetry", "diagnostics", "alerts", "state"}
    validators = load_validators()
    for name, body in examples:
        errors = [e.message for e in validators[name].iter_errors(json.loads(body))]
        assert errors == [], (name, errors)


@pytest.mark.parametrize(
    ("values", "decimals"),
    [
        (np.round(3.3 + 0.001 * np.random.default_rng(0).standard_normal(1000), 3), 4),
        (np.random.default_rng(1).normal(0, 80, 500), 2),  # temperatures, both signs, 1-3 digits
        (np.arange(-100, 100, dtype=np.float64), 4),  # integers: no decimal point at all
        (np.full(100, -0.00001), 4),  # rounds to zero: no "-0"
    ],
)
def test_numpy_formatted_json_arrays_parse_back_to_the_rounded_values(values, decimals):
    (text,) = json_rows(values[None, :], decimals)
    parsed = json.loads(text)
    assert parsed == pytest.approx(np.round(values, decimals).tolist(), abs=10**-decimals / 2)
    assert b"-0," not in text.replace(b" ", b"")


def test_a_live_round_of_twenty_racks_formats_its_cells_in_one_numpy_pass(tmp_path, monkeypatch):
    """At 1 Hz each rack's poll is its own message; a numpy pass per rack made JSON encoding
    most of a live message's CPU. Racks of 16 and 200 cells, and a rack whose cell count
    changes (a module swapped): one pass per cell count and array, every value intact."""
    store = Store(tmp_path / "live.db", synchronous="off")
    rng = np.random.default_rng(5)
    readings = [(f"rack-{k}", _reading(0, 16 if k < 15 else 200, rng)) for k in range(20)]
    readings += [("rack-0", _reading(1, 24, rng))]
    store.commit_cycles([Cycle(reading=dataclasses.replace(r, device_id=d)) for d, r in readings])
    passes = []

    def counted(values: np.ndarray, decimals: int) -> list[bytes]:
        passes.append(values.shape)
        return json_rows(values, decimals)

    monkeypatch.setattr(payload, "json_rows", counted)
    messages = list(Encoder("bess", "s", "json", 65536).messages(
        "telemetry", store.outbox_fetch("telemetry", 0, 100)))  # fmt: skip
    assert sorted(passes) == [(1, 3), (1, 24), (5, 25), (5, 200), (15, 2), (15, 16)]
    items = {m.topic.split("/")[2]: json.loads(m.payload)["items"] for m in messages}
    assert len(messages) == len(items) == 20  # rack-0's two polls in one message
    by_device: dict[str, list[Reading]] = {}
    for device, reading in readings:
        by_device.setdefault(device, []).append(reading)
    for device, device_readings in by_device.items():
        for item, reading in zip(items[device], device_readings, strict=True):
            assert item["cell_voltage_v"] == pytest.approx(
                reading.cell_voltage_v.tolist(), abs=1e-4
            )
            assert item["cell_temperature_c"] == pytest.approx(
                reading.cell_temperature_c.tolist(), abs=1e-2
            )


def test_a_diagnosis_goes_on_the_wire_as_stored_without_being_parsed_and_dumped_again(
    tmp_path, monkeypatch
):
    store = Store(tmp_path / "diag.db", synchronous="off")
    diagnosis = {"soc_pct": math.nan, "note": "Zelle 3 überhitzt", "cells": {"weak": [3, 7]},
                 "resistance_ohm": 0.00123456789}  # fmt: skip
    store.commit_cycles(
        [Cycle(reading=_reading(i, 16, np.random.default_rng(i)), diagnosis=diagnosis)
         for i in range(50)]
    )  # fmt: skip
    dumped = []
    monkeypatch.setattr(payload, "dumps", lambda value: dumped.append(value) or dumps(value))
    (message,) = Encoder("bess", "s", "json", 256 * 1024).messages(
        "diagnostics", store.outbox_fetch("diagnostics", 0, 100)
    )
    assert len(dumped) == 1  # the envelope only
    doc = json.loads(message.payload)
    assert [item["seq"] for item in doc["items"]] == list(range(1, 51))
    assert all(item["diagnosis"] == {**diagnosis, "soc_pct": None} for item in doc["items"])
    errors = [e.message for e in load_validators()["diagnostics"].iter_errors(doc)]
    assert errors == []
