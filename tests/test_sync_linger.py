"""Live batching (``mqtt.linger_s``), in-process against a real mosquitto and a real SQLite file.

Polls are committed at 10 per second through the daemon's StoreWorker while the Syncer runs; a
paho subscriber on the same broker records every message as it arrives.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bess_edge.alerts import AlertEngine
from bess_edge.config import ConfigError, Settings, load_config
from bess_edge.daemon import StoreWorker
from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store
from bess_edge.sync import Syncer
from bess_edge.sync.payload import decode

POLL_S = 0.1
POLLS = 35


class Broker:
    """Every data message the broker delivers: (monotonic arrival, stream, decoded payload)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bess/linger-site/rack-1/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), msg.topic.rsplit("/", 1)[1],
                                  decode(msg.payload)))  # fmt: skip

    def of(self, stream: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, doc) for t, s, doc in self.messages if s == stream]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _settings(tmp_path, port: int, linger_s: float) -> Settings:
    return Settings(
        site={"id": "linger-site"},
        storage={"path": str(tmp_path / "linger.db")},
        devices=[{"id": "rack-1", "driver": "sim"}],
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "linger_s": linger_s},
    )


def _poll(rng: np.random.Generator) -> Cycle:
    cells = np.round(3.3 + 0.001 * rng.standard_normal(16), 3)
    reading = Reading("rack-1", ts_ms=int(time.time() * 1000), pack_voltage_v=52.8,
                      pack_current_a=-5.0, cell_voltage_v=cells)  # fmt: skip
    return Cycle(reading=reading)


def _alert() -> Cycle:
    transition = AlertTransition(1, "rack-1", "cell_overvoltage", "raised",
                                 int(time.time() * 1000), severity="critical",
                                 message="cell 3 over 3.65 V", cell=3, value=3.66)  # fmt: skip
    return Cycle(alerts=[transition])


def _run_live(tmp_path, port: int, linger_s: float, broker: Broker) -> float:
    """Commit POLLS polls at 10 Hz and an alert just after a telemetry message arrived (a
    linger has begun); return the seconds from the alert's commit to its arrival."""
    settings = _settings(tmp_path, port, linger_s)
    store = Store(settings.storage.path, synchronous="normal")
    rng = np.random.default_rng(1)
    latency: list[float] = []

    async def run() -> None:
        worker = StoreWorker(store)
        syncer = Syncer(settings, worker, AlertEngine([], 0, []))
        stop = asyncio.Event()
        task = asyncio.create_task(syncer.run(stop))
        await asyncio.wait_for(syncer.link.connected.wait(), 10)
        for i in range(POLLS):
            await worker.call(store.commit_cycles, [_poll(rng)])
            if i == POLLS // 2:
                seen = len(broker.of("telemetry"))
                while len(broker.of("telemetry")) == seen:
                    await asyncio.sleep(0.005)
                    await worker.call(store.commit_cycles, [_poll(rng)])  # polls go on
                committed = time.monotonic()
                await worker.call(store.commit_cycles, [_alert()])
                while not broker.of("alerts"):
                    assert time.monotonic() - committed < 10, "the alert never arrived"
                    await asyncio.sleep(0.005)
                latency.append(broker.of("alerts")[0][0] - committed)
            await asyncio.sleep(POLL_S)
        deadline = time.monotonic() + 10
        while sum((await worker.call(store.outbox_depth)).values()):
            assert time.monotonic() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.05)  # the last linger ends, its rows are acknowledged
        stop.set()
        await task
        worker.shutdown()

    asyncio.run(run())
    return latency[0]


def test_a_linger_packs_several_polls_a_message_loses_none_and_never_holds_an_alert(
    mosquitto, tmp_path
):
    broker = Broker(mosquitto.port)
    try:
        alert_s = _run_live(tmp_path, mosquitto.port, 1.0, broker)
    finally:
        broker.close()
    telemetry = [doc for _, doc in broker.of("telemetry")]
    seqs = [item["seq"] for doc in telemetry for item in doc["items"]]
    committed = int(Store(tmp_path / "linger.db").conn.execute(
        "SELECT max(seq) FROM samples").fetchone()[0])  # fmt: skip
    assert seqs == list(range(1, committed + 1)), "lost, repeated or out of order"
    for doc in telemetry:
        assert doc["seq_last"] - doc["seq_first"] + 1 == doc["count"] == len(doc["items"])
    # 10 polls a second lingering 1 s: several polls a message, not one.
    assert len(seqs) / len(telemetry) >= 5, [doc["count"] for doc in telemetry]
    assert alert_s < 0.5, f"the alert waited {alert_s:.3f} s"


def test_linger_s_is_validated_with_the_key_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[site]\nid = "s"\n[mqtt]\nlinger_s = -1\n')
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert "mqtt.linger_s" in str(error.value)
