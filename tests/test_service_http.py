"""The local HTTP endpoint as a monitoring system sees it: scrape /metrics, poll /health."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from conftest import free_port, sim_device, wait_until
from prometheus_client.parser import text_string_to_metric_families

from bess_edge.http import _is_loopback


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, content type and body, from a real HTTP client."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by the Prometheus text parser: {(sample name, labels): value}."""
    status, content_type, body = get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, content_type, body = get(port, "/health")
    assert content_type == "application/json"
    return status, json.loads(body)


def http_on(port: int) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": port}


def test_metrics_scrape_parses_and_counts_polls_samples_and_buffer(make_config, daemon):
    port = free_port()
    proc = daemon(make_config(http=http_on(port)))
    proc.wait_for_log('"msg": "ready"')
    wait_until(lambda: scrape(port)[("bess_edge_polls_total", (("device", "rack-1"),))] >= 5)
    m = scrape(port)
    rack = (("device", "rack-1"),)
    assert m[("bess_edge_samples_written_total", rack)] >= 4
    assert m[("bess_edge_poll_errors_total", rack)] == 0
    assert m[("bess_edge_device_comms_state", (("device", "rack-1"), ("state", "ok")))] == 1
    assert m[("bess_edge_device_comms_state", (("device", "rack-1"), ("state", "comms_lost")))] == 0
    assert 0 <= m[("bess_edge_device_last_reading_age_seconds", rack)] < 5
    assert m[("bess_edge_poll_duration_seconds_count", rack)] >= 4
    assert m[("bess_edge_buffer_unsent_rows", (("stream", "telemetry"),))] >= 4
    assert m[("bess_edge_buffer_bytes", ())] > 0
    assert m[("bess_edge_telemetry_dropped_total", ())] == 0
    assert m[("bess_edge_healthy", ())] == 1
    assert ("bess_edge_alerts_active", (("severity", "critical"),)) in m
    assert m[("process_resident_memory_bytes", ())] > 10e6
    # MQTT is off: nothing connected or in flight, and the unsent backlog ages from its first row.
    assert m[("bess_edge_mqtt_connected", ())] == 0
    assert m[("bess_edge_mqtt_inflight_messages", ())] == 0
    assert 0 < m[("bess_edge_mqtt_backlog_age_seconds", ())] < 60
    assert proc.stop() == 0


def test_mqtt_state_is_exported_while_connected_and_after_the_broker_dies(
    make_config, daemon, mosquitto
):
    port = free_port()
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port}
    proc = daemon(make_config(http=http_on(port), mqtt=mqtt))
    proc.wait_for_log('"msg": "ready"')
    telemetry = ("bess_edge_mqtt_published_messages_total", (("stream", "telemetry"),))
    wait_until(lambda: scrape(port).get(telemetry, 0) >= 3)
    wait_until(lambda: scrape(port)[("bess_edge_mqtt_backlog_age_seconds", ())] < 5)
    m = scrape(port)
    assert m[("bess_edge_mqtt_connected", ())] == 1
    assert m[("bess_edge_last_sync_timestamp_seconds", ())] > 0
    status, body = health(port)
    assert status == 200 and body["mqtt"] == "connected"

    mosquitto.kill()
    wait_until(lambda: scrape(port)[("bess_edge_mqtt_connected", ())] == 0)
    # Offline is the normal life of an edge gateway: still healthy, the backlog grows and ages.
    wait_until(lambda: scrape(port)[("bess_edge_mqtt_backlog_age_seconds", ())] >= 2)
    status, body = health(port)
    assert status == 200 and body["mqtt"] == "disconnected"
    assert body["unsent"]["telemetry"] >= 1
    assert proc.stop() == 0


def test_health_turns_503_while_a_device_is_lost_and_200_when_it_answers_again(make_config, daemon):
    port = free_port()
    dropout = {"kind": "comms_dropout", "at_s": 1.0, "duration_s": 4.0, "mode": "error"}
    devices = [sim_device("rack-1"), sim_device("rack-2", options={"faults": [dropout]})]
    proc = daemon(make_config(devices=devices, http=http_on(port)))
    proc.wait_for_log('"msg": "ready"')
    status, body = health(port)
    assert status == 200 and body["status"] == "ok" and body["problems"] == []
    lost = wait_until(lambda: health(port)[0] == 503 and health(port)[1])
    assert lost["status"] == "unhealthy"
    by_id = {d["id"]: d for d in lost["devices"]}
    assert by_id["rack-1"]["comms"] == "ok"
    assert by_id["rack-2"]["comms"] == "comms_lost"
    assert "simulated communication drop-out" in by_id["rack-2"]["last_error"]
    assert any(p.startswith("rack-2: comms lost") for p in lost["problems"])
    assert lost["mqtt"] == "disabled"
    assert lost["alerts_active"].get("critical", 0) >= 1  # the comms_lost alert
    back = wait_until(lambda: health(port)[0] == 200 and health(port)[1], timeout=20)
    assert {d["comms"] for d in back["devices"]} == {"ok"}
    assert proc.stop() == 0


def test_health_turns_503_when_the_buffer_is_dropping_data(make_config, daemon):
    port = free_port()
    proc = daemon(
        make_config(
            devices=[sim_device(poll_interval_s=0.02)],
            storage={"max_size_mb": 0.05},
            http=http_on(port),
        )
    )
    proc.wait_for_log('"msg": "ready"')
    body = wait_until(lambda: health(port)[0] == 503 and health(port)[1], timeout=30)
    assert body["dropping"] is True
    assert body["telemetry_dropped"] > 0
    assert any(p.startswith("buffer full") for p in body["problems"])
    assert [d["comms"] for d in body["devices"]] == ["ok"]  # the device itself is fine
    assert scrape(port)[("bess_edge_telemetry_dropped_total", ())] > 0
    assert proc.stop() == 0


def test_unknown_paths_and_methods_are_refused_and_only_loopback_listens(make_config, daemon):
    port = free_port()
    proc = daemon(make_config(http=http_on(port)))
    proc.wait_for_log('"msg": "ready"')
    assert get(port, "/")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    assert get(port, "/health", method="HEAD")[0] in (200, 503)
    assert f"http://127.0.0.1:{port}/health" in proc.log()
    assert "reachable from the network" not in proc.log()
    assert proc.stop() == 0


def test_only_loopback_addresses_count_as_private():
    # The daemon warns at start for any other (tested here, not by binding beyond loopback).
    assert all(map(_is_loopback, ("127.0.0.1", "::1", "localhost", "127.0.0.2")))
    assert not any(map(_is_loopback, ("0.0.0.0", "::", "192.168.1.10", "gateway.local")))


def test_port_in_use_is_logged_and_collection_goes_on(make_config, daemon):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = daemon(make_config(http=http_on(port)))
        proc.wait_for_log('"msg": "ready"')
        assert '"msg": "http endpoint not started"' in proc.log()
        assert proc.alive()
        assert proc.stop() == 0
