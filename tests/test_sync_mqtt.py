"""MQTT sync against a real mosquitto, with the daemon as a real process, under faults.

The reference consumer (bess_edge.sync.consumer, the engine of ``bess-edge subscribe``) is the
cloud: it validates every payload against the JSON Schemas, de-duplicates by seq and asks the
gateway to re-publish the gaps it sees. The proof of "zero loss" is that its copy ends equal to
what the gateway committed to SQLite, and the outbox is empty.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import Mosquitto, free_port, sim_device, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from bess_edge.config import load_config
from bess_edge.sync.consumer import Consumer

TABLES = {"telemetry": "samples", "diagnostics": "diagnoses", "alerts": "alert_events"}


def committed_seqs(db: Path) -> dict[tuple[str, str], set[int]]:
    """Every (device, stream) -> seqs committed in the daemon's SQLite file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[tuple[str, str], set[int]] = {}
        for stream, table in TABLES.items():
            for device, seq in conn.execute(f"SELECT device, seq FROM {table}"):
                out.setdefault((device, stream), set()).add(seq)
        return out
    finally:
        conn.close()


def outbox_rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # schema not created yet
        return -1
    finally:
        conn.close()


def mqtt_section(broker_port: int, **overrides) -> dict:
    section = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": broker_port,
        "reconnect_max_s": 2.0,
        "keepalive_s": 5.0,
    }
    section.update(overrides)
    return section


class Cloud:
    """A Consumer with its tick thread: the cloud side of a test."""

    def __init__(self, config: Path, **kwargs) -> None:
        self.consumer = Consumer(load_config(config), from_first=True, grace_s=1.5, retry_s=4.0,
                                 **kwargs)  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ticks, daemon=True)

    def __enter__(self) -> Consumer:
        self.consumer.start()
        self._thread.start()
        return self.consumer

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.stop()

    def _ticks(self) -> None:
        while not self._stop.wait(0.5):
            self.consumer.tick()


def received(consumer: Consumer) -> dict[tuple[str, str], set[int]]:
    with consumer.lock:
        return {
            (device, stream): {s for a, b in zip(seen.starts, seen.ends, strict=True)
                               for s in range(a, b + 1)}
            for (_, device, stream), seen in consumer.seen.items()
        }  # fmt: skip


def test_broker_killed_repeatedly_and_daemon_killed_mid_drain_loses_nothing(
    make_config, daemon, mosquitto, tmp_path
):
    devices = [
        sim_device(f"rack-{i}", poll_interval_s=0.05, options={"seed": i}) for i in (1, 2, 3)
    ]
    storage = {"path": str(tmp_path / "bess-edge.db"), "synchronous": "normal"}
    config = make_config(devices, storage=storage, mqtt=mqtt_section(mosquitto.port))
    db = tmp_path / "bess-edge.db"
    with Cloud(config) as cloud:
        proc = daemon(config)
        wait_until(lambda: cloud.summary.items > 100, timeout=30)
        for outage in range(3):
            time.sleep(1.5)
            mosquitto.kill()  # SIGKILL: loses what it acknowledged but had not yet delivered
            time.sleep(2.5)  # the daemon keeps committing; its outbox grows
            mosquitto.start()
            if outage == 1:
                # Kill the daemon itself while it drains the backlog, then restart it.
                proc.wait_for_log("mqtt connected", timeout=20)
                time.sleep(0.3)
                proc.kill9()
                proc = daemon(config)
        time.sleep(2)
        assert proc.stop() == 0
        # Production ends; a gateway with its devices disabled drains the rest and answers the
        # consumer's republish requests.
        idle = make_config(
            [dict(d, enabled=False) for d in devices],
            name="drain.toml",
            storage=storage,
            mqtt=mqtt_section(mosquitto.port),
        )
        drain = daemon(idle)
        wait_until(cloud.synced, timeout=90, interval=0.5)
        summary = cloud.summary
        expected = committed_seqs(db)
        got = received(cloud)
        assert drain.alive()
    assert outbox_rows(db) == 0
    assert summary.invalid == 0, summary.errors[:3]
    assert summary.gap_seqs_open == 0
    assert {k: v for k, v in expected.items()} == {k: got.get(k, set()) for k in expected}
    assert sum(len(v) for (_, s), v in expected.items() if s == "telemetry") > 300
    print(
        f"\nreceived {summary.items} items, {summary.duplicates} duplicates; "
        f"gap seqs seen {summary.gap_seqs_seen}, repaired {summary.gap_seqs_repaired}, "
        f"open {summary.gap_seqs_open}; republish requests {summary.republish_requests}"
    )


def test_broker_unreachable_at_start_buffers_then_delivers_the_whole_backlog(
    make_config, daemon, tmp_path
):
    broker = Mosquitto(tmp_path)  # its port is free: nothing listens until start()
    config = make_config(
        [sim_device(poll_interval_s=0.1)], mqtt=mqtt_section(broker.port, reconnect_max_s=1.0)
    )
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    proc.wait_for_log("first reading")
    time.sleep(4)
    backlog = committed_seqs(db)[("rack-1", "telemetry")]
    assert len(backlog) >= 20
    assert outbox_rows(db) >= len(backlog)
    assert proc.alive()
    failures = [line for line in proc.log().splitlines() if "mqtt connection failed" in line]
    # Rate-limited: one line for a run of identical failures, however many retries.
    assert 1 <= len(failures) <= 2, failures
    assert f"127.0.0.1:{broker.port}" in failures[0]
    broker.start()
    try:
        out = tmp_path / "cloud.jsonl"
        # A fixed listening time, not --exit-when-synced: that waits for an empty outbox, which a
        # device polled at 10 Hz (a new row every 0.1 s) only shows by chance on a loaded machine.
        result = subprocess.run(
            [sys.executable, "-m", "bess_edge", "subscribe", "--config", str(config),
             "--from-first", "--duration", "15", "-o", str(out)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads(result.stderr.strip().splitlines()[-1])
        assert summary["invalid"] == 0 and summary["items"] > 2 * len(backlog)
        items = [json.loads(line) for line in out.read_text().splitlines()]
        telemetry = {i["seq"] for i in items if i["stream"] == "telemetry"}
        assert backlog <= telemetry
        assert len(items) == len({(i["device"], i["stream"], i["seq"]) for i in items})
        proc.wait_for_log("mqtt connected")
    finally:
        broker.kill()


class RawClient:
    """A plain MQTT 5 client: what a cloud engineer would poke the gateway with."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.3)

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def replies(self) -> list[dict]:
        return [json.loads(p) for t, p in list(self.messages) if t.endswith("/reply")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_malformed_commands_get_error_replies_and_the_daemon_keeps_running(
    make_config, daemon, mosquitto
):
    config = make_config(mqtt=mqtt_section(mosquitto.port))
    proc = daemon(config)
    proc.wait_for_log("mqtt connected")
    raw = RawClient(mosquitto.port)
    try:
        raw.subscribe("bess/test-site/cmd/+/reply")
        cmd = "bess/test-site/cmd/"
        bad = [
            ("ping", b"{not json"),
            ("ack", json.dumps({"id": "wrong-type", "alert_id": "7"}).encode()),
            ("ack", json.dumps({"id": "unknown-alert", "alert_id": 999}).encode()),
            ("selfdestruct", json.dumps({"id": "unknown-verb"}).encode()),
            ("republish", b'{"id": "huge", "device": "' + b"x" * 100_000 + b'"}'),
            ("republish", json.dumps({"id": "no-range", "device": "rack-1"}).encode()),
            ("republish", json.dumps({"id": "who", "device": "nope", "since_ms": 0}).encode()),
            ("republish", b"\xff\xfe binary"),
        ]
        for verb, payload in bad:
            raw.send(cmd + verb, payload)
        raw.send(cmd + "ping", json.dumps({"id": "still-alive"}).encode())
        wait_until(lambda: len(raw.replies()) >= len(bad) + 1, timeout=15)
        replies = raw.replies()
        errors = [r for r in replies if not r["ok"]]
        assert len(errors) == len(bad)
        assert all(r["error"] for r in errors)
        by_id = {r["id"]: r for r in replies}
        assert "alert_id" in by_id["wrong-type"]["error"]
        assert "999" in by_id["unknown-alert"]["error"]
        assert "unknown verb" in by_id["unknown-verb"]["error"]
        assert "exceeds" in by_id["huge"]["error"]
        assert "unknown device" in by_id["who"]["error"]
        pong = by_id["still-alive"]
        assert pong["ok"] and pong["result"]["pong"] is True
        assert "rack-1" in pong["result"]["published_heads"]

        # A valid re-publish request is executed and answered, once seqs 1-3 were published.
        def published() -> int:
            raw.send(cmd + "ping", json.dumps({"id": "heads"}).encode())
            time.sleep(0.2)
            pongs = [r for r in raw.replies() if r["id"] == "heads"]
            return pongs and pongs[-1]["result"]["published_heads"]["rack-1"]["telemetry"] >= 3

        wait_until(published, timeout=10)
        raw.send(cmd + "republish", json.dumps(
            {"id": "again", "device": "rack-1", "stream": "telemetry", "seq_first": 1,
             "seq_last": 3}).encode())  # fmt: skip
        wait_until(lambda: any(r["id"] == "again" for r in raw.replies()), timeout=10)
        again = next(r for r in raw.replies() if r["id"] == "again")
        assert again["ok"] and again["result"]["requeued"] == {"telemetry": 3}
        assert proc.alive()
        assert "mqtt command refused" in proc.log()  # repeats beyond a burst are rate-limited
    finally:
        raw.close()
    assert proc.stop() == 0


def test_mqtt_ack_command_acknowledges_a_live_alert_once(make_config, daemon, mosquitto):
    # A comms drop-out raises comms_lost; the cloud acknowledges it over MQTT.
    dropout = {"faults": [{"kind": "comms_dropout", "at_s": 0.5, "duration_s": 30.0}]}
    config = make_config(
        [sim_device(poll_interval_s=0.1, options=dropout)], mqtt=mqtt_section(mosquitto.port)
    )
    raw = RawClient(mosquitto.port)
    try:
        raw.subscribe("bess/test-site/#")
        proc = daemon(config)

        def raised() -> list[dict]:
            return [
                item
                for topic, payload in list(raw.messages)
                if topic == "bess/test-site/rack-1/alerts"
                for item in json.loads(payload)["items"]
                if item["rule"] == "comms_lost"
            ]

        wait_until(raised, timeout=20)
        alert_id = raised()[0]["alert_id"]
        for attempt in ("first", "second"):
            raw.send("bess/test-site/cmd/ack", json.dumps(
                {"id": attempt, "alert_id": alert_id, "actor": "ops@cloud", "note": "seen"}
            ).encode())  # fmt: skip
        wait_until(lambda: {"first", "second"} <= {r["id"] for r in raw.replies()}, timeout=10)
        by_id = {r["id"]: r for r in raw.replies()}
        assert by_id["first"]["ok"], by_id["first"]
        assert not by_id["second"]["ok"] and "already acknowledged" in by_id["second"]["error"]
        wait_until(lambda: any(i["transition"] == "acknowledged" for i in raised()), timeout=10)
        ack = next(i for i in raised() if i["transition"] == "acknowledged")
        assert (ack["actor"], ack["note"]) == ("ops@cloud", "seen")
        assert proc.stop() == 0
    finally:
        raw.close()


@pytest.mark.parametrize(("encoding", "protocol"), [("json", "5"), ("compact", "3.1.1")])
def test_every_published_payload_validates_against_the_schema(
    make_config, daemon, mosquitto, encoding, protocol
):
    # Every poll's Diagnosis is kept (diagnosis_interval_s 0), so every one is validated.
    fast = {"poll_interval_s": 0.1, "diagnosis_interval_s": 0}
    config = make_config(
        [sim_device("rack-1", **fast), sim_device("rack-2", **fast, options={"cells": 300})],
        mqtt=mqtt_section(mosquitto.port, encoding=encoding, protocol=protocol),
    )
    with Cloud(config, client_id=f"schema-{uuid.uuid4().hex[:6]}") as cloud:
        proc = daemon(config)
        wait_until(lambda: cloud.summary.per_stream.get("telemetry", 0) >= 40, timeout=30)
        assert proc.stop() == 0
        wait_until(lambda: any(s["state"] == "offline" for s in cloud.states), timeout=10)
        summary = cloud.summary
        states = [s["state"] for s in cloud.states]
    assert summary.invalid == 0, summary.errors[:3]
    assert summary.per_stream.get("diagnostics", 0) >= 20
    assert states[0] == "online" and states[-1] == "offline"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1",
             "-subj", f"/CN={name}", cwd=cwd)  # fmt: skip


def _make_cert(name: str, ca: str, cwd: Path, san: str | None = None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=cwd)  # fmt: skip
    ext = cwd / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", str(ext),
             cwd=cwd)  # fmt: skip


def test_mutual_tls_connects_and_a_wrong_certificate_is_refused_with_a_clear_log_line(
    make_config, daemon, tmp_path
):
    # mosquitto started as root drops to its own user, which cannot enter pytest's 0700 tmp dir.
    pki = Path(tempfile.mkdtemp(prefix="bess-edge-pki-"))
    pki.chmod(0o755)
    _make_ca("site-ca", pki)
    _make_ca("rogue-ca", pki)
    _make_cert("broker", "site-ca", pki, san="IP:127.0.0.1,DNS:localhost")
    _make_cert("gateway", "site-ca", pki)
    _make_cert("intruder", "rogue-ca", pki)
    for key in pki.glob("*.key"):
        key.chmod(0o644)  # throwaway keys, readable by the broker's user
    broker = Mosquitto(
        tmp_path,
        extra_conf=f"cafile {pki / 'site-ca.crt'}\ncertfile {pki / 'broker.crt'}\n"
        f"keyfile {pki / 'broker.key'}\nrequire_certificate true\n",
    ).start()
    try:

        def tls(client: str, ca: str = "site-ca") -> dict:
            return mqtt_section(broker.port, tls={
                "enabled": True, "ca_file": str(pki / f"{ca}.crt"),
                "cert_file": str(pki / f"{client}.crt"), "key_file": str(pki / f"{client}.key"),
            })  # fmt: skip

        good = make_config(mqtt=tls("gateway"), name="good.toml")
        with Cloud(good, client_id="tls-cloud") as cloud:
            proc = daemon(good)
            proc.wait_for_log("mqtt connected")
            assert '"tls": true' in proc.log()
            wait_until(lambda: cloud.summary.per_stream.get("telemetry", 0) >= 3, timeout=20)
            assert cloud.summary.invalid == 0
        assert proc.stop() == 0

        # A client certificate from another CA: the broker refuses the handshake.
        intruder = daemon(make_config(mqtt=tls("intruder"), name="intruder.toml"))
        intruder.wait_for_log("mqtt connection failed", timeout=20)
        line = next(x for x in intruder.log().splitlines() if "mqtt connection failed" in x)
        assert "trust our client certificate" in line, line
        assert "mqtt connected" not in intruder.log()
        assert intruder.alive()
        assert intruder.stop() == 0

        # A broker whose certificate our CA did not sign: the gateway refuses it.
        wary = daemon(make_config(mqtt=tls("gateway", ca="rogue-ca"), name="wary.toml"))
        wary.wait_for_log("mqtt connection failed", timeout=20)
        line = next(x for x in wary.log().splitlines() if "mqtt connection failed" in x)
        assert "broker certificate rejected" in line, line
        assert wary.stop() == 0
    finally:
        broker.kill()
        shutil.rmtree(pki, ignore_errors=True)


def test_password_is_never_logged(make_config, daemon, tmp_path):
    secret = "s3cr3t-" + uuid.uuid4().hex
    port = free_port()  # nothing listens: connection attempts fail and are logged
    config = make_config(mqtt=mqtt_section(port, username="gw", reconnect_max_s=1.0))
    proc = daemon(config, env={"BESS_EDGE__MQTT__PASSWORD": secret})
    proc.wait_for_log("mqtt connection failed")
    time.sleep(1)
    assert secret not in proc.log()
    assert proc.stop() == 0


def test_subscribers_in_a_shared_group_split_the_stream_and_write_csv_and_jsonl(
    make_config, daemon, mosquitto, tmp_path
):
    config = make_config([sim_device(poll_interval_s=0.05)], mqtt=mqtt_section(mosquitto.port))
    outputs = [tmp_path / "a.csv", tmp_path / "b.jsonl"]
    command = [sys.executable, "-m", "bess_edge", "subscribe", "--config", str(config),
               "--shared-group", "fleet", "--duration", "8"]  # fmt: skip
    subscribers = [
        subprocess.Popen([*command, "-o", str(out)], stderr=subprocess.PIPE, text=True)
        for out in outputs
    ]
    time.sleep(2.5)  # both subscribed before the data flows
    proc = daemon(config)
    proc.wait_for_log("mqtt connected")
    summaries = []
    for sub in subscribers:
        _, err = sub.communicate(timeout=60)
        assert sub.returncode == 0, err[-2000:]
        summaries.append(json.loads(err.strip().splitlines()[-1]))
    with outputs[0].open() as f:
        rows = list(csv.DictReader(f))
    a = {(r["stream"], int(r["seq"])) for r in rows}
    # One column per field (a spreadsheet reads it): the key first, each cell its own column.
    assert rows and list(rows[0])[:5] == ["site", "device", "stream", "seq", "ts_ms"]
    telemetry = next(r for r in rows if r["stream"] == "telemetry")
    assert "item" not in telemetry
    assert 2.0 < float(telemetry["cell_voltage_v_0"]) < 4.5
    b = {(i["stream"], i["seq"]) for i in map(json.loads, outputs[1].read_text().splitlines())}
    assert a and b, "each member of the group gets a share"
    assert not a & b, "a message goes to one member of the group only"
    assert all(s["invalid"] == 0 and s["republish_requests"] == 0 for s in summaries)


def test_batches_shrink_to_a_broker_maximum_packet_size(make_config, daemon, tmp_path):
    # mosquitto disconnects a client that sends a larger packet; MQTT 5 announces the limit.
    # A 300-cell diagnosis does not fit at all: it is kept back, logged, never sent.
    broker = Mosquitto(tmp_path, extra_conf="max_packet_size 20000\n").start()
    try:
        config = make_config(
            [sim_device(poll_interval_s=0.05, options={"cells": 300})],
            mqtt=mqtt_section(broker.port),
        )
        with Cloud(config, client_id="small-packets") as cloud:
            proc = daemon(config)
            proc.wait_for_log("batching smaller")
            wait_until(lambda: cloud.summary.per_stream.get("telemetry", 0) >= 150, timeout=40)
            assert "mqtt connection lost" not in proc.log()
            assert cloud.summary.invalid == 0
        if "larger than the broker's maximum packet size" not in proc.log():
            assert cloud.summary.per_stream.get("diagnostics", 0) > 0
        assert proc.stop() == 0
    finally:
        broker.kill()


def test_a_killed_daemon_is_announced_offline_by_its_last_will(make_config, daemon, mosquitto):
    config = make_config(mqtt=mqtt_section(mosquitto.port))
    with Cloud(config, client_id="will-watcher") as cloud:
        proc = daemon(config)
        wait_until(lambda: any(s["state"] == "online" for s in cloud.states), timeout=20)
        proc.kill9()
        wait_until(lambda: cloud.states[-1]["state"] == "offline", timeout=20)
        will = cloud.states[-1]
    assert will["reason"] == "connection lost"
    assert will["client_id"] == "bess-edge-test-site"


def test_subscribe_exits_when_synced_with_every_item_and_fails_when_it_cannot(
    make_config, daemon, mosquitto, tmp_path
):
    devices = [sim_device(poll_interval_s=0.05)]
    storage = {"path": str(tmp_path / "bess-edge.db")}
    db = tmp_path / "bess-edge.db"
    # A backlog: the gateway polls while its broker is unreachable.
    offline = make_config(devices, name="offline.toml", storage=storage,
                          mqtt=mqtt_section(free_port()))  # fmt: skip
    proc = daemon(offline)
    wait_until(lambda: db.exists() and outbox_rows(db) > 100, timeout=30)
    assert proc.stop() == 0
    # The gateway, its devices disabled, drains it; the subscriber exits once it has everything.
    idle = make_config([dict(d, enabled=False) for d in devices], name="drain.toml",
                       storage=storage, mqtt=mqtt_section(mosquitto.port))  # fmt: skip
    out = tmp_path / "items.jsonl"
    command = [sys.executable, "-m", "bess_edge", "subscribe", "--config", str(idle),
               "--from-first", "--exit-when-synced"]  # fmt: skip
    subscriber = subprocess.Popen(
        [*command, "--duration", "90", "-o", str(out)], stderr=subprocess.PIPE, text=True
    )
    drain = daemon(idle)
    started = time.monotonic()
    _, err = subscriber.communicate(timeout=120)
    assert subscriber.returncode == 0, err[-2000:]
    assert time.monotonic() - started < 60, "it waited for --duration, not for the sync"
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["synced"] is True and summary["gap_seqs_open"] == 0
    got = {(i["stream"], i["seq"]) for i in map(json.loads, out.read_text().splitlines())}
    expected = {(stream, s) for (_, stream), seqs in committed_seqs(db).items() for s in seqs}
    assert len(expected) > 100 and got == expected
    assert outbox_rows(db) == 0
    assert drain.stop() == 0
    # No gateway answers its pings: it cannot know it is synced, gives up and says so.
    result = subprocess.run([*command, "--duration", "3"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert json.loads(result.stderr.strip().splitlines()[-1])["synced"] is False
