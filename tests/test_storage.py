"""The API's storage interface on a real daemon's SQLite file (sim device, daemon running)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from conftest import sim_device, wait_until

from bess_edge.storage import Storage
from bess_edge.storage.models import DIAGNOSIS_FIELDS, READING_FIELDS, AlertQuery
from bess_edge.storage.sqlite import SqliteStorage

# Raised at the first poll (a 16-cell LFP pack is ~52 V), never cleared: an alert to query.
PACK_RULE = {"name": "pack-high", "metric": "pack_voltage_v", "above": 1.0, "severity": "info"}


@pytest.fixture
def running(make_config, daemon, tmp_path):
    config = make_config(devices=[sim_device(poll_interval_s=0.1)], thresholds=[PACK_RULE])
    proc = daemon(config)
    db = tmp_path / "bess-edge.db"
    wait_until(lambda: db.exists() and _count(db, "diagnoses") >= 20, timeout=60)
    storage = SqliteStorage(db)
    yield proc, db, storage
    storage.close()


def _count(db: Path, table: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_sqlite_backend_implements_the_protocol(running):
    _, _, storage = running
    assert isinstance(storage, Storage)


def test_devices_show_comms_latest_reading_and_diagnosis(running):
    _, _, storage = running
    (dev,) = storage.devices()
    assert dev.device == "rack-1"
    assert dev.state is not None and dev.state.comms == "ok"
    assert dev.reading is not None and dev.reading.cell_count == 16
    assert 40 < dev.reading.pack_voltage_v < 60
    assert dev.diagnosis is not None and "soc_pct" in dev.diagnosis
    assert not any(k.startswith("cell_") for k in dev.diagnosis)  # per-cell arrays left out
    assert dev.active_alerts == 1
    assert storage.device("rack-1") == storage.device("rack-1")
    assert storage.device("rack-9") is None


def test_series_buckets_match_min_max_mean_of_the_raw_rows(running):
    _, db, storage = running
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT ts_ms, pack_voltage_v, cell_voltage_max_v FROM samples ORDER BY ts_ms"
    ).fetchall()
    conn.close()
    since, until = rows[0][0], rows[-1][0] + 1
    series = storage.series("rack-1", "readings", since, until, max_points=5)
    assert series is not None and list(series.fields) == list(READING_FIELDS)
    assert len(series.ts_ms) <= 5 and sum(series.count) == len(rows)
    bucket = series.bucket_ms
    assert bucket * 5 >= until - since
    for i, start in enumerate(series.ts_ms):
        values = [v for ts, v, _ in rows if start <= ts < start + bucket]
        assert series.count[i] == len(values)
        got = series.fields["pack_voltage_v"]
        # Exact to the 15 significant digits SQLite's json_array writes (base.py contract).
        assert math.isclose(got.min[i], min(values), rel_tol=1e-14)
        assert math.isclose(got.max[i], max(values), rel_tol=1e-14)
        assert math.isclose(got.mean[i], sum(values) / len(values), rel_tol=1e-9)


def test_series_of_a_subset_and_of_diagnoses(running):
    _, db, storage = running
    now = 2**41
    series = storage.series("rack-1", "readings", 0, now, 3, fields=["pack_current_a"])
    assert series is not None and list(series.fields) == ["pack_current_a"]
    mean = series.fields["pack_current_a"].mean
    assert all(math.isclose(m, 20.0, abs_tol=2.0) for m in mean if m is not None)  # 20 A charge
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (until,) = conn.execute("SELECT max(ts_ms) + 1 FROM diagnoses").fetchone()
    (rows,) = conn.execute("SELECT count(*) FROM diagnoses WHERE ts_ms < ?", (until,)).fetchone()
    conn.close()
    diag = storage.series("rack-1", "diagnoses", 0, until, 1000)
    assert diag is not None and list(diag.fields) == list(DIAGNOSIS_FIELDS)
    assert sum(diag.count) == rows  # few rows: every diagnosis is read
    # One bucket over >= 20 diagnoses: an evenly strided subset of at least 4 is read.
    strided = storage.series("rack-1", "diagnoses", 0, until, 1, fields=["soc_pct"])
    assert strided is not None and 4 <= sum(strided.count) <= 5
    soc = [v for v in diag.fields["soc_pct"].mean if v is not None]
    assert soc and all(0 <= v <= 100 for v in soc)
    assert storage.series("rack-9", "readings", 0, now, 10) is None


def test_cells_at_a_time_are_that_poll(running):
    _, _, storage = running
    latest = storage.cells("rack-1")
    assert latest is not None and len(latest.cell_voltage_v) == 16
    assert all(2.5 < v < 3.7 for v in latest.cell_voltage_v if v is not None)
    earlier = storage.cells("rack-1", at_ms=latest.ts_ms - 1)
    assert earlier is not None and earlier.ts_ms < latest.ts_ms and earlier.seq < latest.seq
    assert storage.cells("rack-1", at_ms=0) is None
    assert storage.cells("rack-9") is None


def test_alerts_filters_events_and_ack_through_the_daemon(running):
    _, _, storage = running
    (alert,) = storage.alerts(AlertQuery(state="active"))
    assert (alert.rule, alert.device, alert.severity) == ("pack-high", "rack-1", "info")
    assert [e.transition for e in alert.events] == ["raised"]
    assert storage.alerts(AlertQuery(state="cleared")) == []
    assert storage.alerts(AlertQuery(device="rack-9")) == []
    assert storage.alerts(AlertQuery(severity="critical")) == []
    assert storage.alerts(AlertQuery(since_ms=alert.raised_ts_ms + 1)) == []
    assert storage.alert(alert.id) == alert
    assert storage.alert(alert.id + 100) is None
    request = storage.request_ack(alert.id, "api:alice", "seen on site")
    done = wait_until(lambda: (r := storage.ack_request(request)) and r.done_ts_ms and r)
    assert done.result == "acknowledged"
    acked = storage.alert(alert.id)
    assert acked is not None and acked.acked_by == "api:alice" and acked.ack_note == "seen on site"
    events = storage.events(limit=10)
    assert [e.transition for e in events[:2]] == ["acknowledged", "raised"]
    assert events[0].actor == "api:alice" and events[0].rule == "pack-high"
    assert storage.events(device="rack-9") == []


def test_health_reports_fresh_data(running):
    _, _, storage = running
    health = storage.health()
    assert health.backend == "sqlite" and health.size_bytes and health.size_bytes > 0
    assert health.newest_sample_ts_ms is not None


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has the daemon run"):
        SqliteStorage(tmp_path / "none.db")


def test_trends_read_the_covering_index_not_the_sample_rows(running):
    _, _, storage = running
    statements: list[str] = []
    storage._r.conn.set_trace_callback(statements.append)
    storage.series("rack-1", "readings", 0, 2**41, 10, fields=["pack_voltage_v"])
    storage.series("rack-1", "readings", 0, 2**41, 10)
    storage._r.conn.set_trace_callback(None)
    trends = [s for s in statements if "json_array" in s]
    assert len(trends) == 2
    for sql in trends:
        plan = str(storage._r.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        assert "COVERING INDEX samples_trend" in plan and "TEMP B-TREE" not in plan, plan
