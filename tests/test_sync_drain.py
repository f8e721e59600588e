"""The drain order and pacing of sync, in-process against a real mosquitto and a real SQLite file.

A large telemetry backlog is built directly in the store (as after a long outage); the Syncer
drains it through the same StoreWorker the daemon uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bess_edge.alerts import AlertEngine
from bess_edge.config import Settings
from bess_edge.daemon import StoreWorker
from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store
from bess_edge.sync import Syncer
from bess_edge.sync.outbox import ENCODE_ON_LOOP_ROWS
from bess_edge.sync.payload import Message


def _backlog(store: Store, samples: int) -> None:
    rng = np.random.default_rng(1)
    for start in range(0, samples, 1000):
        cycles = []
        for i in range(start, min(samples, start + 1000)):
            cells = np.round(3.3 + 0.001 * rng.standard_normal(16), 3)
            reading = Reading("rack-1", ts_ms=1_790_000_000_000 + 1000 * i, pack_voltage_v=52.8,
                              pack_current_a=-5.0, cell_voltage_v=cells)  # fmt: skip
            cycles.append(Cycle(reading=reading))
        store.commit_cycles(cycles)


def _alert(alert_id: int) -> Cycle:
    transition = AlertTransition(alert_id, "rack-1", "cell_overvoltage", "raised",
                                 int(time.time() * 1000), severity="critical",
                                 message="cell 3 over 3.65 V", cell=3, value=3.66)  # fmt: skip
    return Cycle(alerts=[transition])


def _record_encodings(syncer: Syncer, encodings: list[tuple[bool, int]]) -> None:
    """(on the loop's thread, rows) of every batch the drainer's encoder is given."""
    encoder = syncer.drainer.encoder
    messages = encoder.messages

    def recorded(stream: str, rows: list[dict[str, Any]]) -> Iterator[Message]:
        encodings.append((threading.current_thread() is threading.main_thread(), len(rows)))
        return messages(stream, rows)

    encoder.messages = recorded  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def _syncing(
    settings: Settings, store: Store, next_alert_id: int = 0
) -> AsyncIterator[tuple[Syncer, StoreWorker]]:
    """A Syncer draining ``store`` through its own StoreWorker until the block ends; then it
    stops (deleting what was acknowledged) and the store is closed. The block runs before the
    syncer's first step, so hooks set at its start see the whole drain."""
    worker = StoreWorker(store)
    syncer = Syncer(settings, worker, AlertEngine([], next_alert_id, []))
    stop = asyncio.Event()
    task = asyncio.create_task(syncer.run(stop))
    try:
        yield syncer, worker
    finally:
        stop.set()
        await task
        worker.shutdown()


def _outbox_depth(settings: Settings) -> dict[str, Any]:
    store = Store(settings.storage.path)
    try:
        return store.outbox_depth()
    finally:
        store.close()


class Recorder:
    def __init__(self, port: int) -> None:
        self.topics: list[tuple[float, str, int]] = []  # (arrival, topic, items)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, m: self.topics.append(
            (time.monotonic(), m.topic, json.loads(m.payload)["count"])
        )
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bess/drain-site/+/+", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _settings(tmp_path, port: int, **mqtt) -> Settings:
    return Settings(
        site={"id": "drain-site"},
        storage={"path": str(tmp_path / "drain.db")},
        devices=[{"id": "rack-1", "driver": "sim"}],
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "max_inflight": 4,
              "max_message_bytes": 4096, **mqtt},
    )  # fmt: skip


def test_an_alert_committed_after_a_backlog_is_published_before_the_backlog(mosquitto, tmp_path):
    settings = _settings(tmp_path, mosquitto.port)
    store = Store(settings.storage.path, synchronous="normal")
    _backlog(store, 3000)
    store.commit_cycles([_alert(1)])  # the newest outbox row
    recorder = Recorder(mosquitto.port)
    encodings: list[tuple[bool, int]] = []

    async def run() -> None:
        async with _syncing(settings, store, next_alert_id=1) as (syncer, _):
            _record_encodings(syncer, encodings)
            while syncer.drainer.items_acked < 3001:
                await asyncio.sleep(0.05)

    asyncio.run(run())
    recorder.close()
    assert _outbox_depth(settings) == {}
    order = [topic.rsplit("/", 1)[1] for _, topic, _ in recorder.topics]
    assert order.count("telemetry") > 100  # many 4 KiB batches
    # The backlog's large fetches are encoded in threads (both cores), the alert on the loop.
    assert not any(on_loop for on_loop, rows in encodings if rows > ENCODE_ON_LOOP_ROWS)
    assert (True, 1) in encodings
    assert order.index("alerts") == 0
    assert sum(n for _, t, n in recorder.topics if t.endswith("telemetry")) >= 3000


def test_a_live_alert_overtakes_a_rate_limited_backlog(mosquitto, tmp_path):
    # 20 kB/s of backlog: the 3000 samples (~1.5 MB) would take over a minute to catch up.
    settings = _settings(tmp_path, mosquitto.port, backlog_max_bytes_s=20_000.0)
    store = Store(settings.storage.path, synchronous="normal")
    _backlog(store, 3000)
    recorder = Recorder(mosquitto.port)
    committed_at: list[float] = []

    async def run() -> None:
        async with _syncing(settings, store) as (_, worker):
            await asyncio.sleep(2.0)  # the catch-up is under way
            await worker.call(store.commit_cycles, [_alert(1)])
            committed_at.append(time.monotonic())
            deadline = time.monotonic() + 10
            while not any(t.endswith("alerts") for _, t, _ in recorder.topics):
                assert time.monotonic() < deadline, "the alert did not overtake the backlog"
                await asyncio.sleep(0.02)

    asyncio.run(run())
    recorder.close()
    arrival = next(at for at, topic, _ in recorder.topics if topic.endswith("alerts"))
    telemetry_items = sum(n for _, t, n in recorder.topics if t.endswith("telemetry"))
    assert arrival - committed_at[0] < 2.0  # generous: this box is shared
    assert 0 < telemetry_items < 3000  # the backlog was still draining, at the capped rate


def test_an_idle_drainer_sleeps_and_a_commit_wakes_it_at_once(mosquitto, tmp_path):
    """No polling for new rows: idle, the drainer makes no pass at all (it looked every 0.1 s,
    3.5 ms of CPU a second with 20 racks); a poll's commit wakes it, so the row goes out within
    milliseconds instead of at the next look."""
    settings = _settings(tmp_path, mosquitto.port, linger_s=0.0)
    store = Store(settings.storage.path, synchronous="normal")
    recorder = Recorder(mosquitto.port)
    passes: list[float] = []
    latencies: list[float] = []

    async def run() -> int:
        async with _syncing(settings, store) as (syncer, worker):
            fill = syncer.drainer.fill

            async def counted(link: object) -> None:
                passes.append(time.monotonic())
                await fill(link)  # type: ignore[arg-type]

            syncer.drainer.fill = counted  # type: ignore[method-assign]
            await asyncio.wait_for(syncer.link.connected.wait(), 10)
            await asyncio.sleep(0.3)
            before = len(passes)
            await asyncio.sleep(1.0)
            idle_passes = len(passes) - before
            rng = np.random.default_rng(2)
            for i in range(7):
                seen = len(recorder.topics)
                cells = np.round(3.3 + 0.001 * rng.standard_normal(16), 3)
                reading = Reading("rack-1", ts_ms=1_790_000_000_000 + 1000 * i,
                                  pack_voltage_v=52.8, pack_current_a=-5.0,
                                  cell_voltage_v=cells)  # fmt: skip
                committed = time.monotonic()
                await worker.call(store.commit_cycles, [Cycle(reading=reading)])
                while len(recorder.topics) == seen:
                    assert time.monotonic() - committed < 10, "the row was never published"
                    await asyncio.sleep(0.001)
                latencies.append(recorder.topics[-1][0] - committed)
                # Its row is deleted meanwhile; a random phase against any periodic look.
                await asyncio.sleep(0.3 + rng.uniform(0, 0.1))
        return idle_passes

    idle_passes = asyncio.run(run())
    recorder.close()
    assert _outbox_depth(settings) == {}
    assert idle_passes == 0
    assert sorted(latencies)[3] < 0.02, latencies  # looking every 0.1 s: a median of 0.05 s


def test_a_live_round_of_twenty_racks_is_one_fetch_a_stream_and_one_delete(mosquitto, tmp_path):
    """Live (no linger) a round of polls (a diagnosis and a reading per rack) was fetched half a
    window at a time, two fetches and two encodings a stream, each encoding in a thread. Its
    acks come in bursts: deleting at the first of them, then 0.25 s later, cost two
    transactions (and fsyncs, on the thread the polls commit on) a round instead of one."""
    settings = _settings(tmp_path, mosquitto.port, linger_s=0.0, max_inflight=32)
    store = Store(settings.storage.path, synchronous="normal")
    deletes: list[int] = []
    fetches: list[tuple[str, int]] = []
    delete, fetch = store.outbox_delete, store.outbox_fetch

    def counted_delete(outbox_ids: list[int], sync_ts_ms: int) -> None:
        deletes.append(len(outbox_ids))
        delete(outbox_ids, sync_ts_ms)

    def counted_fetch(stream: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        rows = fetch(stream, after_id, limit)
        fetches.append((stream, len(rows)))
        return rows

    store.outbox_delete = counted_delete  # type: ignore[method-assign]
    store.outbox_fetch = counted_fetch  # type: ignore[method-assign]
    encodings: list[tuple[bool, int]] = []
    rng = np.random.default_rng(4)

    async def run() -> None:
        async with _syncing(settings, store) as (syncer, worker):
            _record_encodings(syncer, encodings)
            await asyncio.wait_for(syncer.link.connected.wait(), 10)
            for i in range(3):
                await asyncio.sleep(0.5)
                readings = [
                    Reading(f"rack-{k}", ts_ms=1_790_000_000_000 + 1000 * i, pack_voltage_v=52.8,
                            pack_current_a=-5.0,
                            cell_voltage_v=np.round(3.3 + 0.001 * rng.standard_normal(16), 3))
                    for k in range(20)
                ]  # fmt: skip
                cycles = [Cycle(reading=r, diagnosis={"soc_pct": 50.0}) for r in readings]
                await worker.call(store.commit_cycles, cycles)
                deadline = time.monotonic() + 10
                while sum(deletes) < 40 * (i + 1):
                    assert time.monotonic() < deadline, "the round was not deleted"
                    await asyncio.sleep(0.01)

    asyncio.run(run())
    assert deletes == [40, 40, 40]
    # The first round: where the streams' ends are; after it, each round is one fetch a stream.
    assert fetches[-4:] == [("diagnostics", 20), ("telemetry", 20)] * 2
    # A round's rows are encoded on the loop: a thread hand-off costs more than encoding them.
    assert encodings[-4:] == [(True, 20)] * 4
