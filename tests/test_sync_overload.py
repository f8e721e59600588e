"""Sync under overload, in-process against a real mosquitto and a real SQLite file.

A telemetry backlog large enough that the drain never pauses (loopback PUBACKs keep the in-flight
window open) is built in the store; the Syncer drains it through the daemon's StoreWorker. Every
publish the drainer makes is recorded in order, so "within one window" is counted exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from bess_edge.alerts import AlertEngine
from bess_edge.config import Settings
from bess_edge.daemon import StoreWorker
from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store
from bess_edge.sync import Syncer

MAX_INFLIGHT = 4
BACKLOG = 30_000


def _settings(tmp_path, port: int) -> Settings:
    return Settings(
        site={"id": "overload-site"},
        storage={"path": str(tmp_path / "overload.db")},
        devices=[{"id": "rack-1", "driver": "sim"}],
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "max_inflight": MAX_INFLIGHT,
              "max_message_bytes": 4096},
    )  # fmt: skip


def _backlog_store(settings: Settings) -> Store:
    store = Store(settings.storage.path, synchronous="normal")
    rng = np.random.default_rng(1)
    for start in range(0, BACKLOG, 5000):
        cycles = []
        for i in range(start, start + 5000):
            cells = np.round(3.3 + 0.001 * rng.standard_normal(16), 3)
            reading = Reading("rack-1", ts_ms=1_790_000_000_000 + 100 * i, pack_voltage_v=52.8,
                              pack_current_a=-5.0, cell_voltage_v=cells)  # fmt: skip
            cycles.append(Cycle(reading=reading))
        store.commit_cycles(cycles)
    return store


def _alert(alert_id: int) -> Cycle:
    transition = AlertTransition(alert_id, "rack-1", "cell_overvoltage", "raised",
                                 int(time.time() * 1000), severity="critical",
                                 message="cell 3 over 3.65 V", cell=3, value=3.66)  # fmt: skip
    return Cycle(alerts=[transition])


def _record_publishes(syncer: Syncer) -> list[str]:
    """The stream of every message the drainer hands to the MQTT client, in order."""
    streams: list[str] = []
    publish = syncer.link.publish

    def spy(topic: str, payload: bytes, **kwargs: Any) -> int:
        streams.append(topic.rsplit("/", 1)[1])
        return publish(topic, payload, **kwargs)

    syncer.link.publish = spy  # type: ignore[method-assign]
    return streams


def _outbox_rows(store: Store) -> int:
    return int(store.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def test_alerts_overtake_a_never_ending_backlog_within_one_window(mosquitto, tmp_path):
    settings = _settings(tmp_path, mosquitto.port)
    store = _backlog_store(settings)
    gaps: list[int] = []

    async def run() -> None:
        worker = StoreWorker(store)
        syncer = Syncer(settings, worker, AlertEngine([], 0, []))
        streams = _record_publishes(syncer)
        stop = asyncio.Event()
        task = asyncio.create_task(syncer.run(stop))
        await _until(lambda: syncer.drainer.items_acked > 500, 30, "the drain did not start")
        for alert_id in (1, 2, 3):
            await worker.call(store.commit_cycles, [_alert(alert_id)])
            published_before = len(streams)
            await _until(
                lambda n=alert_id: streams.count("alerts") >= n, 10, "the alert was not published"
            )
            alert_at = len(streams) - 1 - streams[::-1].index("alerts")
            gaps.append(alert_at - published_before)
            await asyncio.sleep(0.2)
        assert syncer.drainer.items_acked < BACKLOG, "the backlog ended: nothing was proven"
        stop.set()
        await task
        worker.shutdown()

    asyncio.run(run())
    # Backlog messages published after the alert was committed and before the alert itself.
    assert max(gaps) <= MAX_INFLIGHT, gaps


@pytest.mark.parametrize("ending", ["stop", "cancel"])
def test_a_sync_ended_during_a_never_ending_backlog_deletes_every_acknowledged_row(
    mosquitto, tmp_path, ending
):
    settings = _settings(tmp_path, mosquitto.port)
    store = _backlog_store(settings)
    before = _outbox_rows(store)
    acked: list[int] = []

    async def run() -> None:
        worker = StoreWorker(store)
        syncer = Syncer(settings, worker, AlertEngine([], 0, []))
        stop = asyncio.Event()
        task = asyncio.create_task(syncer.run(stop))
        await _until(lambda: syncer.drainer.items_acked > 2000, 30, "the drain did not start")
        if ending == "stop":
            stop.set()
            await asyncio.wait_for(task, 5.0)  # a stop ends the drain within a window or so
        else:
            task.cancel()  # what the daemon does to a sync task that does not stop in time
            await asyncio.gather(task, return_exceptions=True)
        acked.append(syncer.drainer.items_acked)
        worker.shutdown()

    asyncio.run(run())
    store = Store(settings.storage.path)
    assert acked[0] < BACKLOG, "the backlog ended: nothing was proven"
    assert before - _outbox_rows(store) == acked[0]


def test_acknowledged_rows_whose_delete_a_cancel_dropped_go_to_the_next_flush(tmp_path):
    """A sync cancelled while the store thread is busy with another job: the DELETE queued
    behind it never runs (a pending executor job is cancelled with its caller). The ids must
    stay for the cancelled sync's last flush, not vanish with the dropped call."""
    settings = _settings(tmp_path, 1)  # nothing connects: the drainer's store side only
    store = _backlog_store(settings)
    acked = [int(r[0]) for r in store.conn.execute("SELECT id FROM outbox LIMIT 2007")]
    before = _outbox_rows(store)

    async def run() -> None:
        worker = StoreWorker(store)
        drainer = Syncer(settings, worker, AlertEngine([], 0, [])).drainer
        drainer.acked_ids = list(acked)
        gate = threading.Event()
        busy = asyncio.ensure_future(worker.call(gate.wait))  # holds the store thread
        flush = asyncio.ensure_future(drainer.flush_acks())
        await asyncio.sleep(0.05)
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)
        gate.set()
        await busy
        await drainer.flush_acks()  # what Syncer.run does after a cancel
        worker.shutdown()

    asyncio.run(run())
    assert before - _outbox_rows(Store(settings.storage.path)) == len(acked)
