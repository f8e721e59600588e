"""The fleet API: the gateway's API per site from PostgreSQL, keys in the users table."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient
from test_ingest_storage import filled  # noqa: F401  (fixture)
from test_ingest_writer import NOW_MS, store  # noqa: F401  (fixture)

from bess_edge.cloud.api import fleet_app
from bess_edge.cloud.keys import PgKeyStore
from bess_edge.cloud.messages import Parser
from bess_edge.cloud.writer import Writer
from bess_edge.storage.keys import KeyRefused
from bess_edge.sync.payload import dumps


def test_each_site_is_served_by_the_same_api_with_keys_from_the_users_table(filled, pg_url):  # noqa: F811
    keys = PgKeyStore(pg_url)
    viewer = keys.create("viewer-1", "viewer")
    operator = keys.create("ops", "operator")
    with pytest.raises(KeyRefused):
        keys.create("ops", "admin")
    client = TestClient(fleet_app(pg_url))
    as_viewer = {"Authorization": f"Bearer {viewer}"}

    assert client.get("/api/v1/sites").status_code == 401
    sites = client.get("/api/v1/sites", headers=as_viewer).json()
    assert [(s["site"], s["devices"], s["active_alerts"]) for s in sites] == [
        ("site-a", 1, 1), ("site-b", 0, 0)]  # fmt: skip

    devices = client.get("/sites/site-a/api/v1/devices", headers=as_viewer)
    assert devices.status_code == 200 and [d["device"] for d in devices.json()] == ["rack-1"]
    assert client.get("/sites/site-b/api/v1/devices", headers=as_viewer).json() == []
    assert client.get("/sites/site-a/api/v1/devices", headers={
        "Authorization": "Bearer bek_not-a-key"}).status_code == 401  # fmt: skip
    as_operator = {"Authorization": f"Bearer {operator}"}
    acked = client.post("/sites/site-a/api/v1/alerts/1/ack", headers=as_operator, json={})
    assert acked.status_code == 409  # the fixture's alert is acknowledged already

    _raise_alert(pg_url, alert_id=2)
    ack = client.post("/sites/site-a/api/v1/alerts/2/ack", headers=as_operator,
                      json={"note": "on it"})  # fmt: skip
    assert ack.status_code in (200, 202), ack.text
    with psycopg.connect(pg_url) as conn:  # queued for the ingest to send as cmd/ack
        row = conn.execute("SELECT alert_id, actor, note, done_ms FROM ack_requests").fetchone()
    assert row == (2, "api:ops", "on it", None)  # the actor as the API names it

    keys.revoke("viewer-1")
    assert client.get("/api/v1/sites", headers=as_viewer).status_code == 401
    assert [k.name for k in keys.list()] == ["ops"]


def _raise_alert(pg_url: str, alert_id: int, site: str = "site-a") -> None:
    """A gateway's raised transition of a new alert, as it arrives over MQTT."""
    item = {"seq": 3, "ts_ms": NOW_MS + 40_000, "alert_id": alert_id, "transition": "raised",
            "rule": "cell_undervoltage", "severity": "warning", "message": "cell 2 low",
            "cell": 2, "value": 2.9, "actor": None, "note": None}  # fmt: skip
    doc = {"schema": "bess-edge/alerts/1", "site": site, "device": "rack-1",
           "stream": "alerts", "seq_first": 3, "seq_last": 3, "count": 1,
           "items": [item]}  # fmt: skip
    message = Parser("bess", 1 << 20).parse(f"bess/{site}/rack-1/alerts", dumps(doc))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        Writer(conn, worker="t", retention_days=30).write([message])  # type: ignore[list-item]


def test_a_site_registered_while_the_api_runs_is_served_without_a_restart(filled, pg_url):  # noqa: F811
    viewer = PgKeyStore(pg_url).create("viewer-1", "viewer")
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    client = TestClient(fleet_app(pg_url))
    assert client.get("/sites/site-c/api/v1/devices", headers=as_viewer).status_code == 404

    with psycopg.connect(pg_url, autocommit=True) as conn:  # `ingest --add-site site-c`
        conn.execute("INSERT INTO sites (site, created_ms) VALUES ('site-c', 0)")
    _raise_alert(pg_url, alert_id=2, site="site-c")  # its first data registers rack-1

    devices = client.get("/sites/site-c/api/v1/devices", headers=as_viewer)
    assert devices.status_code == 200, devices.text
    assert [d["device"] for d in devices.json()] == ["rack-1"]
    assert [s["site"] for s in client.get("/api/v1/sites", headers=as_viewer).json()] == [
        "site-a", "site-b", "site-c"]  # fmt: skip
    assert client.get("/sites/site-a/api/v1/devices", headers=as_viewer).status_code == 200
    assert client.get("/sites/site-x/api/v1/devices", headers=as_viewer).status_code == 404
