"""The API's storage interface over the cloud database: the same answers as on the gateway,
per site, and an acknowledgement from the cloud that reaches the gateway over cmd/ack."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import Mosquitto, sim_device, wait_until
from test_ingest_e2e import BROKER_CONF, Worker, add_sites, cloud_config
from test_ingest_writer import NOW_MS, _payloads, _reading, store  # noqa: F401  (fixture)
from test_sync_mqtt import mqtt_section

from bess_edge.cloud.config import IngestConfig
from bess_edge.cloud.messages import Parser, Refusal
from bess_edge.cloud.repair import Repairer
from bess_edge.cloud.schema import migrate
from bess_edge.cloud.storage import Fleet, PostgresStorage
from bess_edge.cloud.writer import Writer
from bess_edge.storage import Storage
from bess_edge.storage.models import AlertQuery
from bess_edge.sync.payload import dumps


@pytest.fixture
def filled(store, pg_url):  # noqa: F811  (store is the imported fixture)
    """site-a holds the store's 30 samples, diagnoses and alert; site-b is empty."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO sites (site, name, created_ms) VALUES ('site-a', 'A', 0), "
                      "('site-b', 'B', 0)")  # fmt: skip
        parser = Parser("bess", 1 << 20)
        Writer(conn, worker="t", retention_days=30).write(
            [parser.parse(t, p) for t, p in _payloads(store, "json")]  # type: ignore[misc]
        )
    storage = PostgresStorage(pg_url, "site-a")
    yield storage
    storage.close()


def test_a_site_reads_like_the_gateway(filled):
    storage = filled
    assert isinstance(storage, Storage)
    (dev,) = storage.devices()
    assert dev.device == "rack-1" and dev.state is None  # poll state stays on the gateway
    assert dev.reading is not None and dev.reading.seq == 30 and dev.reading.cell_count == 16
    assert dev.reading.pack_current_a == pytest.approx(49.0)
    assert dev.diagnosis == {"soc_pct": 79.0, "soh_pct": None, "weak_cells": [3]}
    assert dev.active_alerts == 1
    assert (
        storage.device("rack-9") is None and storage.series("rack-9", "readings", 0, 1, 1) is None
    )

    series = storage.series("rack-1", "readings", NOW_MS, NOW_MS + 30_000, 3,
                            ["pack_current_a"])  # fmt: skip
    assert series is not None and series.bucket_ms == 10_000 and series.count == [10, 10, 10]
    current = series.fields["pack_current_a"]
    assert current.min == [20.0, 30.0, 40.0] and current.max == [29.0, 39.0, 49.0]
    assert current.mean == pytest.approx([24.5, 34.5, 44.5])
    diag = storage.series("rack-1", "diagnoses", NOW_MS, NOW_MS + 30_000, 1, ["soc_pct"])
    assert diag is not None and diag.fields["soc_pct"].mean == pytest.approx([64.5])

    cells = storage.cells("rack-1", at_ms=NOW_MS + 7_500)
    assert cells is not None and cells.seq == 8 and cells.cell_voltage_v[3] is None
    expected = _reading(7).cell_voltage_v
    got = np.array([np.nan if v is None else v for v in cells.cell_voltage_v])
    assert np.allclose(got, expected, atol=1e-3, equal_nan=True)
    assert cells.weak_cells == [3]

    (alert,) = storage.alerts(AlertQuery(state="active"))
    assert (alert.rule, alert.cell, alert.acked_by, alert.ack_note) == (
        "cell_overvoltage",
        7,
        "ops",
        "on it",
    )
    assert [e.transition for e in alert.events] == ["raised", "acknowledged"]
    assert storage.alert(alert.id) == alert and storage.alert(999) is None
    assert storage.alerts(AlertQuery(state="cleared")) == []
    assert [e.transition for e in storage.events()] == ["acknowledged", "raised"]
    health = storage.health()
    assert health.backend == "postgresql" and health.newest_sample_ts_ms == NOW_MS + 29_000


def test_the_fleet_lists_sites_and_keeps_them_apart(filled, pg_url):
    fleet = Fleet(pg_url)
    try:
        sites = {s.site: s for s in fleet.sites()}
        assert sites["site-a"].devices == 1 and sites["site-a"].active_alerts == 1
        assert sites["site-b"].devices == 0
        other = fleet.site("site-b")
        assert other is not None and other.devices() == [] and other.device("rack-1") is None
        assert other.alerts(AlertQuery()) == []
        assert fleet.site("site-zz") is None
    finally:
        fleet.close()


def test_an_ack_from_the_cloud_reaches_the_gateway_and_comes_back(
    make_config, daemon, pg_url, tmp_path
):
    broker = Mosquitto(tmp_path, BROKER_CONF).start()
    config = cloud_config(tmp_path / "cloud.toml", pg_url, broker.port)
    add_sites(config, "site-a")
    worker = Worker(config, "w1", tmp_path).start()
    rule = {"name": "pack-high", "metric": "pack_voltage_v", "above": 1.0, "severity": "info"}
    gateway = make_config(
        [sim_device("rack-1", poll_interval_s=0.2)], site={"id": "site-a"},
        thresholds=[rule], mqtt=mqtt_section(broker.port),
    )  # fmt: skip
    proc = daemon(gateway)
    storage = PostgresStorage(pg_url, "site-a")
    try:
        active = wait_until(lambda: storage.alerts(AlertQuery(state="active")), timeout=60,
                            interval=0.5)  # fmt: skip
        alert_id = active[0].id
        request = storage.request_ack(alert_id, "ops@example.net", "crew dispatched")

        def done():
            answer = storage.ack_request(request)
            return answer if answer and answer.result else None

        answer = wait_until(done, timeout=60, interval=0.5)
        assert answer.result == "acknowledged"
        acked = wait_until(lambda: (a := storage.alert(alert_id)) and a.acked_by and a,
                           timeout=30, interval=0.5)  # fmt: skip
        assert (acked.acked_by, acked.ack_note) == ("ops@example.net", "crew dispatched")
        assert "acknowledged" in [e.transition for e in acked.events]
        # Asking again is refused by the gateway (already acknowledged), and says why.
        again = storage.request_ack(alert_id, "ops@example.net", None)
        refused = wait_until(lambda: (a := storage.ack_request(again)) and a.result and a,
                             timeout=60, interval=0.5)  # fmt: skip
        assert refused.result != "acknowledged" and "acknowledged" in refused.result
        assert proc.alive() and worker.alive()
    finally:
        storage.close()
        worker.stop()
        broker.kill()


def test_series_values_keep_15_significant_digits(filled, store, pg_url):  # noqa: F811
    """The Storage contract: a float4 column would give 812.34570 for 812.3456789012345."""
    topic, payload = next((t, p) for t, p in _payloads(store, "json") if "telemetry" in t)
    doc = json.loads(payload)
    item = {**doc["items"][0], "seq": 1000, "ts_ms": NOW_MS + 100_000,
            "pack_voltage_v": 812.3456789012345, "pack_current_a": -0.1234567890123}  # fmt: skip
    body = {**doc, "items": [item], "seq_first": 1000, "seq_last": 1000, "count": 1}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        Writer(conn, worker="t", retention_days=30).write(
            [Parser("bess", 1 << 20).parse(topic, dumps(body))]  # type: ignore[list-item]
        )
    series = filled.series("rack-1", "readings", NOW_MS + 100_000, NOW_MS + 100_001, 1,
                           ["pack_voltage_v", "pack_current_a"])  # fmt: skip
    assert series is not None
    assert series.fields["pack_voltage_v"].mean[0] == pytest.approx(812.3456789012345, rel=1e-14)
    assert series.fields["pack_current_a"].min[0] == pytest.approx(-0.1234567890123, rel=1e-14)


def test_a_fleet_rules_alert_is_listed_with_the_sites_alerts_and_acknowledged_in_the_cloud(
    filled, pg_url
):
    storage = filled
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO alert_thresholds (name, metric, op, threshold, clear, severity) "
            "VALUES ('pack current high', 'pack_current_a', '>', 55, 50, 'critical')"
        )
        writer = Writer(conn, worker="t", retention_days=30)
        _telemetry(writer, seq=31, current_a=60.0)  # raises the fleet rule's alert

        active = storage.alerts(AlertQuery(state="active"))
        assert sorted(a.rule for a in active) == ["cell_overvoltage", "pack current high"]
        cloud = next(a for a in active if a.rule == "pack current high")
        assert (cloud.severity, cloud.value, cloud.raised_ts_ms) == (
            "critical",
            60.0,
            NOW_MS + 30_000,
        )
        assert cloud.id < 0 and "pack_current_a 60 > 55" in cloud.message
        assert storage.alert(cloud.id) == cloud and cloud.acked_ts_ms is None
        assert storage.alerts(AlertQuery(rule="pack current high")) == [cloud]
        assert storage.device("rack-1").active_alerts == 2  # type: ignore[union-attr]
        fleet = Fleet(pg_url)
        assert {s.site: s.active_alerts for s in fleet.sites()} == {"site-a": 2, "site-b": 0}
        fleet.close()

        # Acknowledged by the repair leader in the database: no gateway knows this alert.
        sent: list[Any] = []
        request_id = storage.request_ack(cloud.id, "api:ops", "looking")
        Repairer(conn, IngestConfig(database_url="x"), lambda *cmd: sent.append(cmd)).tick()
        assert not [c for c in sent if c[1] == "ack"]
        request = storage.ack_request(request_id)
        assert request is not None and request.result == "acknowledged"
        acked = storage.alert(cloud.id)
        assert acked is not None and (acked.acked_by, acked.ack_note) == ("api:ops", "looking")

        _telemetry(writer, seq=32, current_a=45.0)  # back past the clear level
        (cleared,) = storage.alerts(AlertQuery(state="cleared"))
        assert cleared.id == cloud.id and cleared.cleared_ts_ms == NOW_MS + 31_000
        assert [e.transition for e in cleared.events] == ["raised", "acknowledged", "cleared"]


def _telemetry(writer: Writer, seq: int, current_a: float) -> None:
    """One more sample of rack-1 on site-a, as its gateway publishes it."""
    item = {"seq": seq, "ts_ms": NOW_MS + (seq - 1) * 1000, "quality": 0, "quality_flags": [],
            "pack_voltage_v": 52.8, "pack_current_a": current_a, "pack_power_w": None,
            "bms_soc_pct": None, "bms_soh_pct": None, "cell_voltage_min_v": None,
            "cell_voltage_max_v": None, "cell_temperature_min_c": None,
            "cell_temperature_max_c": None, "status_flags": 0, "fault_flags": 0,
            "cell_voltage_v": [3.3], "cell_temperature_c": [], "extra": {},
            "quality_notes": []}  # fmt: skip
    doc = {"schema": "bess-edge/telemetry/1", "site": "site-a", "device": "rack-1",
           "stream": "telemetry", "seq_first": seq, "seq_last": seq, "count": 1,
           "items": [item]}  # fmt: skip
    message = Parser("bess", 1 << 20).parse("bess/site-a/rack-1/telemetry", dumps(doc))
    assert not isinstance(message, Refusal) and message is not None
    writer.write([message])
