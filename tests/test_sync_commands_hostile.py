"""Hostile MQTT commands: whatever arrives on cmd/<verb>, the sender gets an error reply, the
gateway keeps running and never publishes where the command tells it to outside the reply tree."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_sync_mqtt import RawClient, mqtt_section

from bess_edge.alerts import AlertEngine
from bess_edge.config import Settings
from bess_edge.daemon import StoreWorker
from bess_edge.store import Store
from bess_edge.sync import Syncer
from bess_edge.sync.client import Inbound

CMD = "bess/s1/cmd/"


class Gateway:
    """A Syncer over a real SQLite store, asked directly (no broker) what it would reply."""

    def __init__(self, tmp_path: Path, **mqtt: Any) -> None:
        settings = Settings(
            site={"id": "s1"},
            storage={"path": str(tmp_path / "cmd.db")},
            devices=[{"id": "rack-1", "driver": "sim"}],
            mqtt=mqtt,
        )
        self.store = Store(settings.storage.path, synchronous="normal")
        self.loop = asyncio.new_event_loop()
        self.worker = StoreWorker(self.store)
        self.syncer = Syncer(settings, self.worker, AlertEngine([], 0, []))

    def answer(
        self, verb: str, payload: bytes, response_topic: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        inbound = Inbound(CMD + verb, payload, response_topic, None)
        return self.loop.run_until_complete(self.syncer.answer(inbound))

    def close(self) -> None:
        self.worker.shutdown()
        self.loop.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    gw.close()


HOSTILE = [
    ("nested array", "republish", b"[" * 1500),
    ("nested in an object", "republish", b'{"id": "n", "device": ' + b"[" * 1500 + b"}"),
    ("nested after the id", "ping", b'{"id": "n2", "x": ' + b"{" * 1000 + b"}"),
    (
        "seq 2**63",
        "republish",
        b'{"device": "rack-1", "stream": "telemetry", "seq_first": %d}' % 2**63,
    ),
    (
        "seq 10**30",
        "republish",
        b'{"device": "rack-1", "stream": "telemetry", "seq_last": %d}' % 10**30,
    ),
    ("since_ms 10**20", "republish", b'{"device": "rack-1", "since_ms": %d}' % 10**20),
    ("until_ms 10**20", "republish", b'{"device": "rack-1", "until_ms": %d}' % 10**20),
    ("alert_id 2**64", "ack", b'{"alert_id": %d}' % 2**64),
]


@pytest.mark.parametrize(("name", "verb", "payload"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_hostile_command_gets_an_error_reply(gateway: Gateway, name, verb, payload):
    topic, reply = gateway.answer(verb, payload)
    assert topic == f"{CMD}{verb}/reply"
    assert reply["ok"] is False and reply["error"], reply
    assert "internal error" not in reply["error"]  # refused by validation, not by luck


def test_deeply_nested_payload_still_echoes_no_id_and_names_the_problem(gateway: Gateway):
    _, reply = gateway.answer("ping", b"[" * 1500)
    assert reply["id"] is None
    assert "nested too deeply" in reply["error"]


def test_the_largest_valid_numbers_are_executed(gateway: Gateway):
    _, reply = gateway.answer(
        "republish",
        json.dumps({"device": "rack-1", "stream": "telemetry", "seq_first": 2**63 - 1}).encode(),
    )
    assert reply["ok"], reply
    assert reply["result"]["requeued"] == {"telemetry": 0}
    _, reply = gateway.answer(
        "republish", json.dumps({"device": "rack-1", "since_ms": 0, "until_ms": 1}).encode()
    )
    assert reply["ok"], reply


def test_an_unexpected_failure_is_answered_and_logged(gateway: Gateway, caplog):
    gateway.store.close()  # every query now raises sqlite3.ProgrammingError
    _, reply = gateway.answer("ping", b'{"id": "p"}')
    assert reply == {**reply, "ok": False, "id": "p"}
    assert "internal error (ProgrammingError)" in reply["error"]
    assert "mqtt command failed" in caplog.text


@pytest.mark.parametrize(
    "response_topic",
    [
        "bess/s1/rack-1/alerts",  # the site's own data topic
        "bess/s1/state",
        "bess/s1/cmd/ping",  # a command topic: the gateway would answer itself
        "bess/s2/cmd/ping/reply",  # another site's tree
        "elsewhere/reply",
        "bess/s1/cmd/+/reply",  # not a topic name
    ],
)
def test_a_response_topic_outside_the_reply_tree_is_refused(
    gateway: Gateway, response_topic, caplog
):
    topic, reply = gateway.answer("ping", b'{"id": "r"}', response_topic=response_topic)
    assert topic == f"{CMD}ping/reply"
    assert reply["ok"] is False and "response_topic" in reply["error"]
    assert "result" not in reply  # not executed
    (record,) = [r for r in caplog.records if r.getMessage() == "mqtt command refused"]
    assert "response_topic" in record.error


def test_a_response_topic_in_the_reply_tree_is_used(gateway: Gateway):
    topic, reply = gateway.answer("ping", b"{}", response_topic=f"{CMD}ping/tool-7/reply")
    assert topic == f"{CMD}ping/tool-7/reply" and reply["ok"]


def test_a_configured_reply_prefix_is_allowed_as_well(tmp_path: Path):
    gw = Gateway(tmp_path, reply_topic_prefix="ops/replies")
    try:
        topic, reply = gw.answer("ping", b"{}", response_topic="ops/replies/abc")
        assert topic == "ops/replies/abc" and reply["ok"]
        _, reply = gw.answer("ping", b"{}", response_topic="ops/repliesX/abc")
        assert not reply["ok"] and "ops/replies/..." in reply["error"]
    finally:
        gw.close()


def test_a_ping_cannot_make_the_daemon_publish_on_its_alerts_topic(make_config, daemon, mosquitto):
    config = make_config(mqtt=mqtt_section(mosquitto.port))
    proc = daemon(config)
    proc.wait_for_log("mqtt connected")
    raw = RawClient(mosquitto.port)
    try:
        raw.subscribe("bess/test-site/#")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bess/test-site/rack-1/alerts"
        raw.client.publish(
            "bess/test-site/cmd/ping", b'{"id": "hijack"}', qos=1, properties=props
        ).wait_for_publish(5)
        wait_until(lambda: any(r["id"] == "hijack" for r in raw.replies()), timeout=10)
        (reply,) = [r for r in raw.replies() if r["id"] == "hijack"]
        assert reply["ok"] is False and "response_topic" in reply["error"]
        on_alerts = [p for t, p in raw.messages if t == "bess/test-site/rack-1/alerts"]
        assert not any(b"hijack" in p for p in on_alerts)
        assert "response_topic" in proc.log()
    finally:
        raw.close()
    assert proc.stop() == 0


def test_a_flood_beyond_the_command_queue_gets_busy_replies_and_few_log_lines(
    make_config, daemon, mosquitto
):
    """Commands dropped for a full queue (64 waiting) were neither answered nor counted: the
    sender waited for ever, and the log got one line per dropped command."""
    config = make_config(mqtt=mqtt_section(mosquitto.port))
    proc = daemon(config)
    proc.wait_for_log("mqtt connected")
    raw = RawClient(mosquitto.port)
    flood = 600
    try:
        raw.subscribe("bess/test-site/cmd/+/reply")
        # Each re-publish asks the store (a thread) and waits, so the flood outruns the queue.
        sent = [
            raw.client.publish(
                "bess/test-site/cmd/republish",
                json.dumps({"id": f"f{i}", "device": "rack-1", "stream": "telemetry",
                            "seq_first": 10**9, "seq_last": 10**9 + 1}).encode(),
                qos=1,
            )
            for i in range(flood)
        ]  # fmt: skip
        for info in sent:
            info.wait_for_publish(10)
        wait_until(lambda: len(raw.replies()) >= flood, timeout=60)
        replies = {r["id"]: r for r in raw.replies()}
        assert set(replies) == {f"f{i}" for i in range(flood)}
        busy = [r for r in replies.values() if not r["ok"]]
        print(f"{len(busy)} of {flood} refused busy")
        assert busy, "the flood never filled the queue"
        assert all("busy" in r["error"] and r["verb"] == "republish" for r in busy)
        assert all(r["ok"] for r in replies.values() if r not in busy)
        refusals = proc.log().count("mqtt command refused: too many waiting")
        assert 1 <= refusals < len(busy)
        assert proc.alive()
    finally:
        raw.close()
    assert proc.stop() == 0
