"""The cloud side end to end with real parts: gateway daemons on simulated racks, a real
mosquitto, `bess-edge ingest` workers as processes, a real PostgreSQL. Whatever is killed, every
seq a gateway committed ends up in PostgreSQL exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from conftest import Mosquitto, render_config, sim_device, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_sync_mqtt import committed_seqs, mqtt_section

from bess_edge.sync.payload import dumps

BROKER_CONF = "max_queued_messages 100000\nmax_inflight_messages 200\n"


class Worker:
    """``bess-edge ingest`` as a subprocess, its log in a file."""

    def __init__(self, config: Path, name: str, workdir: Path) -> None:
        self.config, self.name = config, name
        self.log_path = workdir / f"ingest-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bess_edge", "ingest", "--config", str(self.config),
             "--client-id", self.name],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def cloud_config(path: Path, pg_url: str, broker_port: int, **ingest: Any) -> Path:
    settings = {
        "database_url": pg_url, "group": "fleet", "prefix": "bess", "grace_s": 1.0,
        "retry_s": 3.0, "ping_s": 1.0, "tick_s": 0.5, **ingest,
    }  # fmt: skip
    body = {
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5.0},
        "ingest": settings,
        "logging": {"format": "json", "level": "info"},
    }
    path.write_text(render_config(body))
    return path


def add_sites(config: Path, *sites: str) -> None:
    for site in sites:
        subprocess.run(
            [sys.executable, "-m", "bess_edge", "ingest", "--config", str(config), "--add-site",
             site],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


def pg_seqs(pg_url: str) -> tuple[dict[tuple[str, str, str], set[int]], int, int]:
    """Per (site, device, stream) the seqs in PostgreSQL; total rows; distinct keys."""
    out: dict[tuple[str, str, str], set[int]] = {}
    rows = distinct = 0
    with psycopg.connect(pg_url) as conn:
        for stream, table in (("telemetry", "telemetry"), ("diagnostics", "battery_diagnostics"),
                              ("alerts", "alert_history")):  # fmt: skip
            for site, device, seq in conn.execute(
                f"SELECT s.site, d.device, t.seq FROM {table} t JOIN devices d ON d.id = "  # type: ignore[arg-type]
                "t.device_id JOIN sites s ON s.id = d.site_id WHERE t.seq IS NOT NULL"
            ):
                out.setdefault((site, device, stream), set()).add(seq)
                rows += 1
    distinct = sum(len(v) for v in out.values())
    return out, rows, distinct


def test_three_gateways_two_workers_broker_and_processes_killed_every_seq_once(
    make_config, daemon, pg_url, tmp_path
):
    broker = Mosquitto(tmp_path, BROKER_CONF).start()
    config = cloud_config(tmp_path / "cloud.toml", pg_url, broker.port)
    sites = ["site-1", "site-2", "site-3"]
    add_sites(config, *sites)
    workers = [Worker(config, f"w{i}", tmp_path).start() for i in (1, 2)]
    gateways = {}
    try:
        for i, site in enumerate(sites, start=1):
            gateways[site] = make_config(
                [sim_device("rack-1", poll_interval_s=0.1, options={"seed": i})],
                name=f"{site}.toml",
                site={"id": site},
                storage={"path": str(tmp_path / f"{site}.db"), "synchronous": "normal"},
                mqtt=mqtt_section(broker.port),
            )
        procs = {site: daemon(cfg) for site, cfg in gateways.items()}
        wait_until(lambda: pg_seqs(pg_url)[1] > 100, timeout=60, interval=0.5)

        broker.kill()  # first broker restart: what it acknowledged but had not delivered is gone
        time.sleep(2)
        broker.start()
        time.sleep(3)
        workers[0].kill9()  # one worker SIGKILLed mid-stream: the other carries on
        time.sleep(3)
        procs["site-2"].kill9()  # a gateway SIGKILLed, then started again on its SQLite file
        time.sleep(1)
        procs["site-2"] = daemon(gateways["site-2"])
        time.sleep(3)
        broker.kill()  # second broker restart
        time.sleep(2)
        broker.start()
        time.sleep(4)

        # Production ends: each gateway restarted with its device disabled drains what is left
        # and answers the repair's pings and republish requests.
        for site, proc in procs.items():
            assert proc.stop() == 0
            idle = make_config(
                [sim_device("rack-1", enabled=False)],
                name=f"{site}-drain.toml",
                site={"id": site},
                storage={"path": str(tmp_path / f"{site}.db"), "synchronous": "normal"},
                mqtt=mqtt_section(broker.port),
            )
            procs[site] = daemon(idle)

        expected = {
            (site, device, stream): seqs
            for site in sites
            for (device, stream), seqs in committed_seqs(tmp_path / f"{site}.db").items()
        }
        assert sum(len(s) for s in expected.values()) > 300

        def complete() -> bool:
            got = pg_seqs(pg_url)[0]
            return all(seqs <= got.get(key, set()) for key, seqs in expected.items())

        wait_until(complete, timeout=120, interval=1.0)
        got, rows, distinct = pg_seqs(pg_url)
        assert rows == distinct  # exactly once
        assert {k: v for k, v in got.items() if v} == expected  # nothing the gateways lack either

        def no_open_gaps() -> bool:
            with psycopg.connect(pg_url) as conn:
                return conn.execute("SELECT count(*) FROM gaps").fetchone() == (0,)

        wait_until(no_open_gaps, timeout=30, interval=0.5)
        with psycopg.connect(pg_url) as conn:
            requests = conn.execute("SELECT sum(requests) FROM stream_progress").fetchone()
            assert conn.execute("SELECT count(*) FROM dead_letter").fetchone() == (0,)
        assert workers[1].alive(), workers[1].log()[-3000:]
        assert "Traceback" not in workers[1].log()
        print(f"rows {rows}, republish requests {requests}")
    finally:
        for w in workers:
            if w.alive():
                w.stop()
        broker.kill()


def test_bad_input_over_mqtt_is_dead_lettered_and_the_worker_goes_on(pg_url, tmp_path):
    broker = Mosquitto(tmp_path, BROKER_CONF).start()
    config = cloud_config(tmp_path / "cloud.toml", pg_url, broker.port)
    add_sites(config, "site-a")
    worker = Worker(config, "w1", tmp_path).start()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    try:
        wait_until(lambda: "connected to the broker" in worker.log(), timeout=30)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        item = {
            "seq": 1, "ts_ms": int(time.time() * 1000), "quality": 0, "quality_flags": [],
            "pack_voltage_v": 52.8, "pack_current_a": 1.0, "pack_power_w": 52.8,
            "bms_soc_pct": None, "bms_soh_pct": None, "cell_voltage_min_v": 3.3,
            "cell_voltage_max_v": 3.3, "cell_temperature_min_c": 25.0,
            "cell_temperature_max_c": 25.0, "status_flags": 0, "fault_flags": 0,
            "cell_voltage_v": [3.3] * 16, "cell_temperature_c": [25.0], "extra": {},
            "quality_notes": [],
        }  # fmt: skip
        doc = {"schema": "bess-edge/telemetry/1", "site": "site-a", "device": "rack-1",
               "stream": "telemetry", "seq_first": 1, "seq_last": 1, "count": 1,
               "items": [item]}  # fmt: skip
        far = {**doc, "items": [{**item, "seq": 10**12}], "seq_first": 10**12, "seq_last": 10**12}
        topic = "bess/site-a/rack-1/telemetry"
        bad = [
            (topic, b"not json at all"),
            (topic, dumps({**doc, "items": [{"seq": 1}]})),
            (topic, dumps({**doc, "schema": "bess-edge/telemetry/9"})),
            (topic, b"{" + b" " * (10 * 1024 * 1024) + b"}"),
            ("bess/site-nobody/rack-1/telemetry", dumps({**doc, "site": "site-nobody"})),
            (topic, dumps(far)),
        ]
        for t, payload in bad:
            client.publish(t, payload, qos=1).wait_for_publish(10)
        # Replies and state messages are not data (no dead letter) but no less untrusted.
        now = int(time.time() * 1000)
        reply = {"schema": "bess-edge/reply/1", "site": "site-a", "verb": "ping", "id": None,
                 "ok": True, "ts_ms": now, "result": {"published_heads": [1, 2]}}  # fmt: skip
        state = {"schema": "bess-edge/state/1", "site": "site-b", "state": "online", "reason": "x",
                 "ts_ms": now, "client_id": "x"}  # fmt: skip
        beyond_bigint = {"published_heads": {"rack-1": {"telemetry": 2**63}}}
        control = [
            ("bess/site-a/cmd/ping/reply", dumps(reply)),
            ("bess/site-a/cmd/ping/reply", b"\xff not json"),
            ("bess/site-a/state", dumps(state)),
            ("bess/site-a/cmd/ping/reply", dumps({**reply, "result": beyond_bigint})),
        ]
        # Valid replies to acks the cloud never sent: ignored (int() raised on both).
        for request in ("ack-\u00b2", "ack-" + "9" * 5000):
            ack = {**reply, "verb": "ack", "id": request, "result": {}}
            client.publish("bess/site-a/cmd/ack/reply", dumps(ack), qos=1).wait_for_publish(10)
        for t, payload in control:
            client.publish(t, payload, qos=1).wait_for_publish(10)
        client.publish(topic, dumps(doc), qos=1).wait_for_publish(10)  # and a good one after

        def settled() -> bool:
            with psycopg.connect(pg_url) as conn:
                dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
                good = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            return dead == (len(bad),) and good == (1,)

        wait_until(settled, timeout=30, interval=0.3)
        with psycopg.connect(pg_url) as conn:
            reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letter ORDER BY id")]
        assert any("unknown site 'site-nobody'" in r for r in reasons), reasons
        assert any("byte limit" in r for r in reasons), reasons
        assert worker.alive()
        # One log line each (the log's repeat limiter passes 5 of one event a minute; the dead
        # letters keep every one).
        wait_until(lambda: worker.log().count("control message refused") == len(control))
        log = worker.log()
        assert log.count('"message refused"') + log.count('"item refused"') == len(bad)
        assert "published_heads is not" in log and "names site 'site-b'" in log
        assert "Traceback" not in worker.log()
        assert worker.stop() == 0
    finally:
        client.loop_stop()
        if worker.alive():
            worker.kill9()
        broker.kill()


def test_database_killed_mid_stream_nothing_acknowledged_is_lost(
    make_config, daemon, pg_server, pg_url, tmp_path
):
    """PostgreSQL crashes under a running worker: batches it could not commit stay in hand and
    unacknowledged (the broker holds the rest back), the worker reconnects when the database is
    back, and every seq arrives without gap repair (switched off here: nothing is asked for)."""
    broker = Mosquitto(tmp_path, BROKER_CONF).start()
    config = cloud_config(tmp_path / "cloud.toml", pg_url, broker.port, grace_s=3600.0,
                          ping_s=3600.0)  # fmt: skip
    add_sites(config, "site-1")
    worker = Worker(config, "w1", tmp_path).start()
    gateway = make_config(
        [sim_device("rack-1", poll_interval_s=0.1)], site={"id": "site-1"},
        storage={"path": str(tmp_path / "site-1.db"), "synchronous": "normal"},
        mqtt=mqtt_section(broker.port),
    )  # fmt: skip
    # Subscribed before the gateway publishes: a message with no subscriber is dropped by the
    # broker, and only gap repair (off here) would ask for it.
    wait_until(lambda: "connected to the broker" in worker.log(), timeout=30)
    time.sleep(0.5)
    proc = daemon(gateway)
    try:
        wait_until(lambda: pg_seqs(pg_url)[1] > 50, timeout=60, interval=0.5)
        pg_server.kill()
        time.sleep(4)  # the gateway keeps publishing; the worker cannot commit
        pg_server.start()
        wait_until(lambda: "database error" in worker.log(), timeout=10)
        time.sleep(3)
        assert proc.stop() == 0
        idle = make_config(
            [sim_device("rack-1", enabled=False)], name="drain.toml", site={"id": "site-1"},
            storage={"path": str(tmp_path / "site-1.db"), "synchronous": "normal"},
            mqtt=mqtt_section(broker.port),
        )  # fmt: skip
        daemon(idle)
        expected = {
            ("site-1", device, stream): seqs
            for (device, stream), seqs in committed_seqs(tmp_path / "site-1.db").items()
        }

        def complete() -> bool:
            got = pg_seqs(pg_url)[0]
            return all(seqs <= got.get(key, set()) for key, seqs in expected.items())

        wait_until(complete, timeout=120, interval=1.0)
        _, rows, distinct = pg_seqs(pg_url)
        assert rows == distinct
        with psycopg.connect(pg_url) as conn:
            requests = conn.execute("SELECT coalesce(sum(requests), 0) FROM stream_progress")
            assert requests.fetchone() == (0,)
        assert worker.alive() and "Traceback" not in worker.log()
    finally:
        if worker.alive():
            worker.stop()
        broker.kill()
        if pg_server.pid() is None:
            pg_server.start()
