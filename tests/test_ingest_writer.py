"""The ingest's write path and gap repair against a real PostgreSQL, fed with the payloads a
gateway really publishes (built from a real SQLite store by the gateway's own Encoder)."""

from __future__ import annotations

import json
import math
import time
import zlib
from typing import Any

import numpy as np
import psycopg
import pytest

from bess_edge.cloud.config import IngestConfig
from bess_edge.cloud.messages import Parser, Refusal
from bess_edge.cloud.repair import Repairer, missing_ranges
from bess_edge.cloud.schema import migrate
from bess_edge.cloud.writer import Writer
from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store
from bess_edge.sync.payload import STREAMS, Encoder, dumps

NOW_MS = int(time.time() * 1000) - 60_000


def _reading(i: int, cells: int = 16) -> Reading:
    rng = np.random.default_rng(i)
    cell_v = np.round(3.3 + rng.normal(0, 0.002, cells), 3)
    cell_v[3] = np.nan if i == 7 else cell_v[3]
    return Reading(
        "rack-1",
        ts_ms=NOW_MS + 1000 * i,
        pack_voltage_v=float(np.nansum(cell_v)),
        pack_current_a=20.0 + i,
        cell_voltage_v=cell_v,
        cell_temperature_c=np.round(25 + rng.normal(0, 0.1, 4), 1),
    )


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "s.db", synchronous="normal")
    diagnoses = [{"soc_pct": 50.0 + i, "soh_pct": None, "weak_cells": [3]} for i in range(30)]
    cycles = [Cycle(reading=_reading(i), diagnosis=diagnoses[i]) for i in range(30)]
    cycles[5].alerts = [
        AlertTransition(1, "rack-1", "cell_overvoltage", "raised", NOW_MS + 5000,
                        severity="critical", message="cell 7 at 3.65 V", cell=7, value=3.65),
        AlertTransition(1, "rack-1", "cell_overvoltage", "acknowledged", NOW_MS + 6000,
                        actor="ops", note="on it"),
    ]  # fmt: skip
    store.commit_cycles(cycles)
    yield store
    store.close()


def _payloads(store: Store, encoding: str, site: str = "site-a") -> list[tuple[str, bytes]]:
    encoder = Encoder("bess", site, encoding, 4096)  # small: several messages per stream
    return [
        (m.topic, m.payload)
        for s in STREAMS
        for m in encoder.messages(s, store.outbox_fetch(s, 0, 10_000))
    ]


@pytest.fixture
def db(pg_url: str) -> Any:
    conn = psycopg.connect(pg_url, autocommit=True)
    migrate(conn)
    conn.execute("INSERT INTO sites (site, created_ms) VALUES ('site-a', 0)")
    yield conn
    conn.close()


def _writer(db: psycopg.Connection, **kw: Any) -> Writer:
    return Writer(db, worker="test", retention_days=30, **kw)


def _count(db: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("encoding", ["json", "compact"])
def test_every_item_lands_exactly_once_when_delivered_twice(store, db, encoding):
    parser = Parser("bess", 1 << 20)
    messages = [parser.parse(t, p) for t, p in _payloads(store, encoding)]
    assert len(messages) > 6 and not any(isinstance(m, Refusal) for m in messages)
    writer = _writer(db)
    first = writer.write(messages)  # type: ignore[arg-type]
    again = writer.write(messages[::-1])  # type: ignore[arg-type]  # redelivered, any order
    assert first.inserted == {"telemetry": 30, "diagnostics": 30, "alerts": 2}
    assert sum(again.inserted.values()) == 0
    assert _count(db, "SELECT count(DISTINCT seq) = 30 AND count(*) = 30 FROM telemetry")
    assert _count(db, "SELECT count(*) FROM battery_diagnostics WHERE soc_pct = 50 + seq - 1") == 30
    cells, seq7 = db.execute(
        "SELECT cell_voltage_v, cell_voltage_v[4] IS NULL FROM telemetry WHERE seq = 8"
    ).fetchone()  # type: ignore[misc]
    expected = _reading(7).cell_voltage_v
    assert seq7 and len(cells) == 16  # the unread cell stays NULL, not 0
    assert np.allclose(
        [c for c in cells if c is not None], expected[~np.isnan(expected)], atol=1e-3
    )
    state = db.execute("SELECT state, actor, raised_ms FROM alerts_current").fetchall()
    assert state == [("acknowledged", "ops", NOW_MS + 5000)]
    assert _count(db, "SELECT count(*) FROM dead_letter") == 0


def test_an_older_transition_arriving_late_does_not_undo_the_newer_one(store, db):
    parser = Parser("bess", 1 << 20)
    alerts = [parser.parse(t, p) for t, p in _payloads(store, "json") if t.endswith("alerts")]
    doc = json.loads(_payloads(store, "json")[0][1])  # alerts first: the two transitions
    raised, acked = doc["items"]
    writer = _writer(db)
    for item in (acked, raised):  # republished out of order
        body = {**doc, "items": [item], "seq_first": item["seq"], "seq_last": item["seq"],
                "count": 1}  # fmt: skip
        writer.write([parser.parse("bess/site-a/rack-1/alerts", dumps(body))])  # type: ignore[list-item]
    assert alerts
    assert db.execute("SELECT state FROM alerts_current").fetchall() == [("acknowledged",)]
    assert _count(db, "SELECT count(*) FROM alert_history") == 2


def test_bad_input_is_dead_lettered_with_its_reason_and_good_items_still_land(store, db):
    parser = Parser("bess", 1 << 20)
    good_topic, good = next((t, p) for t, p in _payloads(store, "json") if "telemetry" in t)
    doc = json.loads(good)
    far = {**doc, "items": [{**doc["items"][0], "seq": 10**12}], "seq_first": 10**12,
           "seq_last": 10**12, "count": 1}  # fmt: skip
    old_items = [dict(item) for item in doc["items"]]
    old_items[1]["ts_ms"] = NOW_MS - 40 * 86_400_000  # past the 30-day retention
    old = {**doc, "items": old_items}
    cases = {
        "not JSON": (good_topic, b"{not json"),
        "schema violation": (good_topic, dumps({**doc, "items": [{"seq": 1}]})),
        "wrong version": (good_topic, dumps({**doc, "schema": "bess-edge/telemetry/2"})),
        "10 MB": (good_topic, b"{" + b" " * 10_000_000 + b"}"),
        "zlib bomb": (good_topic, zlib.compress(b"{" + b" " * 50_000_000 + b"}")),
        "unknown site": (
            "bess/site-x/rack-1/telemetry",
            dumps({**doc, "site": "site-x"}),
        ),
        "topic mismatch": ("bess/site-a/rack-2/telemetry", good),
        "unknown stream": ("bess/site-a/rack-1/logs", good),
        "nested": (good_topic, b"[" * 100_000),
    }
    messages = [parser.parse(t, p) for t, p in cases.values()]
    messages += [parser.parse(good_topic, dumps(far)), parser.parse(good_topic, dumps(old))]
    result = _writer(db).write(messages)  # type: ignore[arg-type]
    reasons = [r for (r,) in db.execute("SELECT reason FROM dead_letter ORDER BY id")]
    assert result.refused == len(reasons) == len(cases) + 2, reasons
    text = "\n".join(reasons)
    for expected in ("not a bess-edge payload", "schema telemetry", "bess-edge/telemetry/1",
                     "over the 1048576 byte limit", "expands beyond", "unknown site 'site-x'",
                     "does not match the topic", "unknown stream 'logs'",
                     "more than 1000000 ahead", "outside the accepted window"):  # fmt: skip
        assert expected in text, (expected, text)
    # The old message's other items, and the far one's neighbours, are kept.
    assert _count(db, "SELECT count(*) FROM telemetry") == len(doc["items"]) - 1
    assert _count(db, "SELECT max(payload_bytes) FROM dead_letter") == 10_000_002
    assert _count(db, "SELECT max(length(payload)) FROM dead_letter") == 65536


def test_a_fleet_rule_raises_once_and_clears_with_hysteresis(store, db):
    db.execute(
        "INSERT INTO alert_thresholds (name, metric, op, threshold, clear, severity) "
        "VALUES ('pack current high', 'pack_current_a', '>', 40, 35, 'critical')"
    )
    parser = Parser("bess", 1 << 20)
    writer = _writer(db)
    telemetry = [(t, p) for t, p in _payloads(store, "json") if t.endswith("telemetry")]
    for topic, payload in telemetry:  # current 20..49 A: raised once past 40 A
        writer.write([parser.parse(topic, payload)])  # type: ignore[list-item]
    doc = json.loads(telemetry[-1][1])
    last = doc["items"][-1]
    calm = {**last, "seq": last["seq"] + 1, "ts_ms": last["ts_ms"] + 1000, "pack_current_a": 36.0}
    body = {**doc, "items": [calm], "seq_first": calm["seq"], "seq_last": calm["seq"], "count": 1}
    writer.write([parser.parse(telemetry[0][0], dumps(body))])  # type: ignore[list-item]
    assert _count(db, "SELECT count(*) FROM cloud_alerts WHERE cleared_ms IS NULL") == 1  # 36 > 35
    calm2 = {**calm, "seq": calm["seq"] + 1, "ts_ms": calm["ts_ms"] + 1000, "pack_current_a": 30.0}
    body = {**body, "items": [calm2], "seq_first": calm2["seq"], "seq_last": calm2["seq"]}
    writer.write([parser.parse(telemetry[0][0], dumps(body))])  # type: ignore[list-item]
    history = db.execute(
        "SELECT transition, source, severity FROM alert_history WHERE source = 'cloud' ORDER BY id"
    ).fetchall()
    assert history == [("raised", "cloud", "critical"), ("cleared", "cloud", "critical")]


def test_missing_ranges_between_runs_and_up_to_the_gateway_head():
    assert missing_ranges(0, [(1, 5), (8, 10)], 0) == (5, 10, [(6, 7)])
    assert missing_ranges(0, [(3, 5)], 9) == (0, 5, [(1, 2), (6, 9)])
    assert missing_ranges(5, [], 5) == (5, 5, [])
    assert missing_ranges(5, [(6, 9)], 7) == (9, 9, [])


def test_gap_repair_asks_once_per_stream_and_the_view_empties_when_the_gap_closes(store, db):
    parser = Parser("bess", 1 << 20)
    writer = _writer(db)
    telemetry = [(t, p) for t, p in _payloads(store, "json") if t.endswith("telemetry")]
    doc = json.loads(telemetry[0][1])
    items = [item for _, p in telemetry for item in json.loads(p)["items"]][:10]

    def publish(selected: list[dict[str, Any]]) -> None:
        body = {**doc, "items": selected, "seq_first": selected[0]["seq"],
                "seq_last": selected[-1]["seq"], "count": len(selected)}  # fmt: skip
        writer.write([parser.parse(telemetry[0][0], dumps(body))])  # type: ignore[list-item]

    publish(items[:5])
    publish(items[7:])  # seqs 6 and 7 lost by the broker
    sent: list[tuple[str, str, dict[str, Any]]] = []
    cfg = IngestConfig(database_url="x", grace_s=0, retry_s=60, ping_s=60)
    repairer = Repairer(db, cfg, lambda *cmd: sent.append(cmd))
    assert repairer.tick()
    assert repairer.tick()  # in flight: not asked twice
    republish = [c for c in sent if c[1] == "republish"]
    assert republish == [("site-a", "republish", {"device": "rack-1", "stream": "telemetry",
                                                  "seq_first": 6, "seq_last": 7})]  # fmt: skip
    assert any(c[1] == "ping" for c in sent)
    gaps = db.execute("SELECT site, device, stream, seq_first, seq_last, missing FROM gaps")
    assert gaps.fetchall() == [("site-a", "rack-1", "telemetry", 6, 7, 2)]
    assert repairer.open_seqs == 2

    other = psycopg.connect(db.info.dsn, autocommit=True)  # a second worker: not the leader
    try:
        assert not Repairer(other, cfg, lambda *cmd: sent.append(cmd)).tick()
    finally:
        other.close()

    publish(items[5:7])  # the republished range arrives
    repairer.tick()
    assert db.execute("SELECT * FROM gaps").fetchall() == []
    assert _count(db, "SELECT contiguous_seq FROM stream_progress WHERE stream = 'telemetry'") == 10
    assert repairer.open_seqs == 0


def test_the_repair_leader_drops_days_past_the_retention_and_keeps_the_rest(db):
    from bess_edge.cloud.partitions import Partitions, day_of, partition_name

    today = day_of(NOW_MS)
    days = {today - 95, today - 91, today - 89, today}
    Partitions().ensure(db, days)
    cfg = IngestConfig(database_url="x", retention_days=90)
    Repairer(db, cfg, lambda *cmd: None).tick()
    tables = {r for (r,) in db.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND "
                                       "relname LIKE 'telemetry_%'")}  # fmt: skip
    assert tables == {partition_name("telemetry", d) for d in (today - 89, today)}


def test_copy_text_round_trips_through_postgresql(db):
    from psycopg.types.json import Jsonb

    from bess_edge.cloud.copytext import copy_text

    db.execute("CREATE TEMP TABLE t (i bigint, x real, a real[], j jsonb, s text)")
    doc = {"note": 'tab\there, new\nline, back\\slash, quote " and ünïcode', "n": [1, None]}
    rows = [
        (2**40, -1.25e-7, [3.301, None, -0.5, 4], Jsonb(doc), "a\tb\\c\nd"),
        (None, None, [], None, None),
        (0, float("nan"), [float("nan")], Jsonb([]), ""),
    ]
    with db.cursor().copy("COPY t FROM STDIN") as copy:
        copy.write(copy_text(rows))
    back = db.execute("SELECT i, x, a, j, s FROM t").fetchall()
    assert back[0][0] == 2**40 and back[0][1] == pytest.approx(-1.25e-7)
    cells = back[0][2]
    assert cells[1] is None and np.allclose([cells[i] for i in (0, 2, 3)], [3.301, -0.5, 4])
    assert back[0][3] == doc and back[0][4] == "a\tb\\c\nd"
    assert back[1] == (None, None, [], None, None)
    assert math.isnan(back[2][1]) and math.isnan(back[2][2][0]) and back[2][3] == []


def test_a_value_postgresql_refuses_is_dead_lettered_alone_and_the_batch_still_lands(store, db):
    parser = Parser("bess", 1 << 20)
    topic, payload = next((t, p) for t, p in _payloads(store, "json") if "telemetry" in t)
    doc = json.loads(payload)
    items = [dict(item) for item in doc["items"]]
    items[1]["cell_voltage_v"] = [1e300, *items[1]["cell_voltage_v"][1:]]  # beyond real[]
    items[2]["status_flags"] = 2**70  # beyond bigint
    bad = parser.parse(topic, dumps({**doc, "items": items}))
    other = next(parser.parse(t, p) for t, p in _payloads(store, "json") if "diagnostics" in t)
    result = _writer(db).write_isolating([bad, other])  # type: ignore[list-item]
    assert result.refused == 2
    assert result.inserted["telemetry"] == len(items) - 2 and result.inserted["diagnostics"] > 0
    refused = db.execute("SELECT seq, reason FROM dead_letter ORDER BY seq").fetchall()
    assert [seq for seq, _ in refused] == [items[1]["seq"], items[2]["seq"]]
    assert all("database refused it" in reason for _, reason in refused)


def test_gap_repair_reads_a_complete_streams_recent_partitions_only(store, db):
    from bess_edge.cloud.partitions import Partitions, day_of, partition_name

    parser = Parser("bess", 1 << 20)
    writer = _writer(db)
    telemetry = [(t, p) for t, p in _payloads(store, "json") if t.endswith("telemetry")]
    doc = json.loads(telemetry[0][1])
    items = [item for _, p in telemetry for item in json.loads(p)["items"]]

    def publish(selected: list[dict[str, Any]]) -> None:
        body = {**doc, "items": selected, "seq_first": selected[0]["seq"],
                "seq_last": selected[-1]["seq"], "count": len(selected)}  # fmt: skip
        writer.write([parser.parse(telemetry[0][0], dumps(body))])  # type: ignore[list-item]

    def contiguous() -> int:
        return _count(db, "SELECT contiguous_seq FROM stream_progress WHERE stream = 'telemetry'")

    old_day = day_of(NOW_MS) - 20
    Partitions().ensure(db, {old_day})
    publish(items[:10])
    cfg = IngestConfig(database_url="x", grace_s=0, retry_s=60, ping_s=60)
    repairer = Repairer(db, cfg, lambda *cmd: None)
    assert repairer.tick() and contiguous() == 10  # the first look reads every partition

    # A day 20 days back is locked by someone else: reading it would wait.
    other = psycopg.connect(db.info.dsn)
    try:
        other.execute(f"LOCK TABLE {partition_name('telemetry', old_day)} IN ACCESS EXCLUSIVE MODE")
        db.execute("SET lock_timeout = '3s'")
        publish(items[10:20])
        assert repairer.tick() and contiguous() == 20
    finally:
        other.close()
        db.execute("RESET lock_timeout")

    # A gateway clock stepped back 3 days: seq 21 is out of sight until its head is known.
    publish([{**items[20], "ts_ms": NOW_MS - 3 * 86_400_000}])
    repairer.tick()
    assert contiguous() == 20
    writer.record_heads("site-a", {"rack-1": {"telemetry": 21}})
    repairer.tick()
    assert contiguous() == 21 and db.execute("SELECT * FROM gaps").fetchall() == []


def test_integral_floats_where_the_schema_says_integer_land_as_integers(store, db):
    """JSON Schema counts 5.0 as an integer, so a gateway (or a hand-written publisher) that
    writes seq, ts_ms or a flag word as a float is valid; PostgreSQL's bigint refuses "5.0"."""
    parser = Parser("bess", 1 << 20)
    topic, payload = next((t, p) for t, p in _payloads(store, "json") if "telemetry" in t)
    doc = json.loads(payload)
    items = [
        {**item, "seq": float(item["seq"]), "ts_ms": float(item["ts_ms"]), "status_flags": 3.0}
        for item in doc["items"]
    ]
    batch = parser.parse(
        topic, dumps({**doc, "items": items, "seq_first": float(doc["seq_first"])})
    )
    assert not isinstance(batch, Refusal), batch
    result = _writer(db).write_isolating([batch])  # type: ignore[list-item]
    assert result.refused == 0 and result.inserted["telemetry"] == len(items)
    assert _count(db, "SELECT count(*) FROM dead_letter") == 0
    assert _count(db, "SELECT count(*) FROM telemetry WHERE status_flags = 3") == len(items)
