"""`bess-edge api` against a real daemon on a sim device: every endpoint, the auth matrix, bad
input refused with a clear 4xx and nothing changed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from api_support import PACK_RULE, ROLES, Site, bess_edge, start_site
from conftest import wait_until

RANK = {role: i for i, role in enumerate(ROLES)}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    s = start_site(tmp_path_factory.mktemp("api"))
    wait_until(lambda: s.get("/api/v1/alerts", state="active"), timeout=30)
    yield s
    s.stop()


# (method, path, body, least role): each call is harmless for a role that passes (404/422).
MATRIX = [
    ("GET", "/api/v1/devices", None, "viewer"),
    ("GET", "/api/v1/devices/rack-1", None, "viewer"),
    ("GET", "/api/v1/devices/rack-1/readings", None, "viewer"),
    ("GET", "/api/v1/devices/rack-1/diagnoses", None, "viewer"),
    ("GET", "/api/v1/devices/rack-1/cells", None, "viewer"),
    ("GET", "/api/v1/alerts", None, "viewer"),
    ("GET", "/api/v1/alerts/1", None, "viewer"),
    ("GET", "/api/v1/events", None, "viewer"),
    ("GET", "/api/v1/thresholds", None, "viewer"),
    ("GET", "/api/v1/me", None, "viewer"),
    ("GET", "/metrics", None, "viewer"),
    ("POST", "/api/v1/diagnose/soc", {"samples": []}, "viewer"),
    ("POST", "/api/v1/alerts/999999/ack", {}, "operator"),
    ("POST", "/api/v1/thresholds", {"name": "x"}, "operator"),
    ("PUT", "/api/v1/thresholds/none-such", {"name": "none-such"}, "operator"),
    ("DELETE", "/api/v1/thresholds/none-such", None, "operator"),
    ("GET", "/api/v1/keys", None, "admin"),
    ("POST", "/api/v1/keys", {"name": "bad name!"}, "admin"),
    ("DELETE", "/api/v1/keys/none-such", None, "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "least"), MATRIX)
def test_auth_matrix_no_key_bad_key_and_each_role(site, method, path, body, least):
    kwargs = {"json": body} if body is not None else {}
    with site.client() as c:
        r = c.request(method, path, **kwargs)
        assert r.status_code == 401 and "missing API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    with site.client(key="bek_" + "x" * 43) as c:
        r = c.request(method, path, **kwargs)
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked API key"
    for role in ROLES:
        with site.client(role) as c:
            r = c.request(method, path, **kwargs)
        if RANK[role] < RANK[least]:
            assert r.status_code == 403, (role, r.text)
            assert f"needs the {least} role" in r.json()["detail"]
        else:
            assert r.status_code not in (401, 403), (role, r.text)


def test_health_needs_no_key(site):
    with site.client() as c:
        health = c.get("/health").json()
    assert health["status"] == "ok" and health["storage"]["backend"] == "sqlite"
    assert health["newest_sample_age_s"] < 10


def test_devices_overview_and_one_device(site):
    (dev,) = site.get("/api/v1/devices")
    assert dev["device"] == "rack-1" and dev["state"]["comms"] == "ok"
    assert dev["reading"]["cell_count"] == 16 and dev["active_alerts"] == 1
    assert site.get("/api/v1/devices/rack-1")["device"] == "rack-1"


def test_readings_and_diagnoses_are_downsampled_to_max_points(site):
    readings = site.get("/api/v1/devices/rack-1/readings", since_ms=0, max_points=3)
    assert len(readings["ts_ms"]) <= 3 and sum(readings["count"]) >= 5
    v = readings["fields"]["pack_voltage_v"]
    assert all(lo <= mean <= hi for lo, mean, hi in zip(v["min"], v["mean"], v["max"], strict=True))
    picked = site.get("/api/v1/devices/rack-1/diagnoses", fields="soc_pct,soh_pct")
    assert list(picked["fields"]) == ["soc_pct", "soh_pct"] and picked["stream"] == "diagnoses"


def test_cells_latest_and_at_a_time(site):
    latest = site.get("/api/v1/devices/rack-1/cells")
    assert len(latest["cell_voltage_v"]) == 16 and len(latest["cell_temperature_c"]) > 0
    before = site.get("/api/v1/devices/rack-1/cells", at_ms=latest["ts_ms"] - 1)
    assert before["seq"] < latest["seq"]


def test_operator_acks_an_active_alert_through_the_daemon(site):
    (alert,) = site.get("/api/v1/alerts", state="active", rule="pack-high")
    with site.client("viewer") as c:
        assert c.post(f"/api/v1/alerts/{alert['id']}/ack", json={}).status_code == 403
    with site.client("operator") as c:
        r = c.post(f"/api/v1/alerts/{alert['id']}/ack", json={"note": "checked on site"})
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["request"]["result"] == "acknowledged"
        assert done["alert"]["acked_by"] == "api:op-key"
        assert done["alert"]["ack_note"] == "checked on site"
        again = c.post(f"/api/v1/alerts/{alert['id']}/ack", json={})
        assert again.status_code == 409 and "already acknowledged by api:op-key" in again.text
    events = site.get("/api/v1/events", limit=5)
    assert events[0]["transition"] == "acknowledged" and events[0]["actor"] == "api:op-key"
    assert site.get(f"/api/v1/alerts/{alert['id']}")["events"][-1]["transition"] == ("acknowledged")


def test_thresholds_crud_through_the_rule_file_and_a_reload(site):
    rules_file = site.db.with_name("api-thresholds.toml")
    listed = {r["rule"]["name"]: r["source"] for r in site.get("/api/v1/thresholds")}
    assert listed == {"pack-high": "config"}
    rule = {"name": "pack-low", "metric": "pack_voltage_v", "below": 10.0, "severity": "warning"}
    reloads = site.daemon.log().count("thresholds reloaded")
    with site.client("operator") as c:
        r = c.post("/api/v1/thresholds", json=rule)
        assert r.status_code == 201, r.text
        assert r.json()["reload"].startswith("sent SIGHUP to the daemon")
        wait_until(lambda: site.daemon.log().count("thresholds reloaded") > reloads)
        assert 'name = "pack-low"' in rules_file.read_text()
        r = c.put("/api/v1/thresholds/pack-low", json={**rule, "below": 20.0})
        assert r.status_code == 200 and r.json()["rule"]["below"] == 20.0
        assert c.post("/api/v1/thresholds", json=rule).status_code == 409
        r = c.put("/api/v1/thresholds/pack-high", json=PACK_RULE)
        assert r.status_code == 409 and "edit it there" in r.text
        listed = {x["rule"]["name"]: x for x in c.get("/api/v1/thresholds").json()}
        assert listed["pack-low"]["source"] == "api" and listed["pack-low"]["rule"]["below"] == 20
        assert c.delete("/api/v1/thresholds/pack-low").status_code == 200
        assert "pack-low" not in rules_file.read_text()
        assert c.delete("/api/v1/thresholds/pack-low").status_code == 404
    out = bess_edge("check-config", str(site.config))
    assert out.returncode == 0, out.stderr


def test_diagnose_json_and_the_csv_that_export_writes(site):
    out = bess_edge("export", "--config", str(site.config), "--device", "rack-1", "--no-progress")
    assert out.returncode == 0, out.stderr
    with site.client("viewer") as c:
        r = c.post(
            "/api/v1/diagnose/soc", params={"capacity_ah": 100, "chemistry": "lfp"},
            content=out.stdout, headers={"Content-Type": "text/csv"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        soc = r.json()
        assert soc["samples"] == out.stdout.count("\n") - 1
        assert 0 <= soc["result"]["soc_pct"] <= 100 and len(soc["result"]["cell_soc_pct"]) == 16
        assert soc["trajectory"]["ts_ms"][-1] == soc["ts_ms"]
        samples = [
            {"ts_ms": 1_000 * i, "pack_voltage_v": 52.8, "pack_current_a": -50.0,
             "cell_voltage_v": [3.3] * 4, "cell_temperature_c": [25.0]}
            for i in range(1, 60)
        ]  # fmt: skip
        r = c.post("/api/v1/diagnose/cycles", json={"capacity_ah": 100, "samples": samples})
        assert r.status_code == 200, r.text
        assert set(r.json()["result"]) >= {"equivalent_full_cycles", "life_used_pct"}
        r = c.post("/api/v1/diagnose/soc", json={"capacity_ah": 100, "samples": samples[::-1]})
        assert r.status_code == 422 and "is not after" in r.text
        r = c.post("/api/v1/diagnose/nonsense", json={"capacity_ah": 100, "samples": samples})
        assert r.status_code == 422


def test_metrics_count_requests(site):
    site.get("/api/v1/devices")
    with site.client("viewer") as c:
        text = c.get("/metrics").text
    assert 'bess_api_requests_total{route="/api/v1/devices",status="200"}' in text
    assert "bess_api_newest_sample_age_seconds" in text


def test_admin_creates_lists_and_revokes_keys_and_revoked_keys_stop_working(site):
    with site.client("admin") as c:
        r = c.post("/api/v1/keys", json={"name": "scada", "role": "viewer"})
        assert r.status_code == 201
        key = r.json()["key"]
        assert "scada" in [k["name"] for k in c.get("/api/v1/keys").json()]
        assert c.post("/api/v1/keys", json={"name": "scada"}).status_code == 409
    with site.client(key=key) as c:
        assert c.get("/api/v1/me").json() == {"name": "scada", "role": "viewer"}
    out = bess_edge("api-key", "revoke", "scada", "--config", str(site.config))
    assert out.returncode == 0, out.stderr
    with site.client(key=key) as c:
        assert c.get("/api/v1/me").status_code == 401
    listed = bess_edge("api-key", "list", "--config", str(site.config)).stdout
    assert "op-key\toperator" in listed and "scada" not in listed


def test_keys_are_stored_hashed_and_never_logged(site):
    stored = site.db.with_name("api-keys.json").read_text()
    logs = site.api_log.read_text() + site.daemon.log()
    for key in site.keys.values():
        assert key not in stored and key not in logs
    assert oct(site.db.with_name("api-keys.json").stat().st_mode & 0o777) == "0o600"


def _state(site: Site) -> tuple[str, str, list]:
    rules = site.db.with_name("api-thresholds.toml")
    conn = sqlite3.connect(f"file:{site.db}?mode=ro", uri=True)
    alerts = conn.execute("SELECT id, state, acked_ts_ms FROM alerts ORDER BY id").fetchall()
    pending = conn.execute("SELECT count(*) FROM pending_acks").fetchall()
    conn.close()
    return (
        rules.read_text() if rules.exists() else "",
        Path(site.db.with_name("api-keys.json")).read_text(),
        [alerts, pending],
    )


BAD = [
    ("GET", "/api/v1/devices/rack-9", None, 404, "unknown device 'rack-9'"),
    ("GET", "/api/v1/devices/rack-9/readings", None, 404, "unknown device 'rack-9'"),
    ("GET", "/api/v1/devices/rack-9/cells", None, 404, "unknown device 'rack-9'"),
    ("GET", "/api/v1/devices/rack-1/readings?since_ms=2000&until_ms=1000", None, 422,
     "since_ms (2000) must be before until_ms (1000)"),
    ("GET", "/api/v1/devices/rack-1/readings?max_points=0", None, 422, "greater than or equal"),
    ("GET", "/api/v1/devices/rack-1/readings?max_points=1000000", None, 422, "less than or equal"),
    ("GET", "/api/v1/devices/rack-1/readings?fields=volts", None, 422, "unknown field(s) volts"),
    ("POST", "/api/v1/thresholds", {"name": "t", "metric": "pack_voltage_v"}, 422,
     "give exactly one of 'above' or 'below'"),
    ("POST", "/api/v1/thresholds", {"name": "t", "metric": "m", "above": 1, "for_s": -1}, 422,
     "for_s: must be >= 0"),
    ("POST", "/api/v1/thresholds", {"name": "t", "metric": "m", "above": 1, "colour": 1}, 422,
     "colour: unknown key"),
    ("POST", "/api/v1/thresholds", {"name": "t", "metric": "m", "above": 1,
                                    "action": {"command": ["reboot"]}}, 422, "local actions"),
    ("POST", "/api/v1/thresholds", "{not json", 422, "JSON decode error"),
    ("POST", "/api/v1/alerts/1/ack", "{not json", 422, "JSON decode error"),
    ("POST", "/api/v1/diagnose/soc", "{not json", 422, "not valid JSON"),
    ("POST", "/api/v1/thresholds", "x" * (10 * 1024 * 1024), 413, "larger than"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "code", "message"), BAD)
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(site, method, path, body, code, message):
    before = _state(site)
    with site.client("admin") as c:
        if isinstance(body, str):
            r = c.request(method, path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = c.request(method, path, **({"json": body} if body is not None else {}))
    assert r.status_code == code, r.text
    assert message in json.dumps(r.json()), r.text
    assert _state(site) == before


def test_openapi_docs_describe_every_route_with_models(site):
    with site.client() as c:
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/devices",
        "/api/v1/devices/{device}/readings",
        "/api/v1/alerts/{alert_id}/ack",
        "/api/v1/thresholds",
        "/api/v1/diagnose/{kind}",
        "/api/v1/events",
        "/health",
    ):
        assert path in paths, path
    assert {"Series", "DeviceOverview", "Alert", "CellSnapshot"} <= set(
        spec["components"]["schemas"]
    )
    assert "text/csv" in paths["/api/v1/diagnose/{kind}"]["post"]["requestBody"]["content"]
