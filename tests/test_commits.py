"""Group commit: the cycles of many devices share transactions, and each caller gets its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import sim_device

from bess_edge.commits import CommitQueue
from bess_edge.config import load_config
from bess_edge.daemon import Daemon, StoreWorker
from bess_edge.model import Reading
from bess_edge.store import AlertTransition, Cycle, Store


def _cycle(device: str, i: int) -> Cycle:
    reading = Reading(device, ts_ms=1_790_000_000_000 + i, pack_voltage_v=52.0,
                      cell_voltage_v=np.full(16, 3.3))  # fmt: skip
    return Cycle(reading=reading, diagnosis={"soc_pct": 50.0})


def test_concurrent_callers_share_transactions_and_each_gets_its_own_seqs(tmp_path):
    store = Store(tmp_path / "s.db", synchronous="normal")
    commits_run = []
    commit = store.commit_cycles

    def counting(cycles):
        commits_run.append(len(cycles))
        return commit(cycles)

    store.commit_cycles = counting  # type: ignore[method-assign]

    async def run() -> dict[str, list[int]]:
        worker = StoreWorker(store)
        queue = CommitQueue(worker)
        seqs: dict[str, list[int]] = {}

        async def device(name: str) -> None:
            for i in range(20):
                seqs.setdefault(name, []).extend(
                    (await queue.commit([_cycle(name, i)])).sample_seqs
                )

        await asyncio.gather(*(device(f"rack-{d}") for d in range(10)))
        worker.shutdown()
        return seqs

    seqs = asyncio.run(run())
    assert seqs == {f"rack-{d}": list(range(1, 21)) for d in range(10)}
    assert sum(commits_run) == 200
    assert len(commits_run) < 100  # batched: at most a few dozen transactions for 200 cycles


def test_one_bad_cycle_fails_alone(tmp_path):
    store = Store(tmp_path / "s.db", synchronous="normal")
    bad = Cycle(alerts=[AlertTransition(1, "rack-0", "x", "exploded", 1)])  # no such transition

    async def run() -> list[object]:
        worker = StoreWorker(store)
        queue = CommitQueue(worker)
        blocker = asyncio.ensure_future(queue.commit([_cycle("rack-0", 0)]))
        await asyncio.sleep(0)  # the next three are queued behind it: one batch
        results = await asyncio.gather(
            queue.commit([_cycle("rack-1", 0)]),
            queue.commit([bad]),
            queue.commit([_cycle("rack-2", 0)]),
            return_exceptions=True,
        )
        await blocker
        worker.shutdown()
        return results

    good_1, failed, good_2 = asyncio.run(run())
    assert isinstance(failed, ValueError)
    assert good_1.sample_seqs == [1] and good_2.sample_seqs == [1]  # type: ignore[union-attr]
    store = Store(tmp_path / "s.db")
    assert store.sample_count("rack-1") == 1 and store.sample_count("rack-2") == 1


def test_a_failed_commit_raises_to_its_caller(tmp_path):
    store = Store(tmp_path / "s.db", synchronous="normal")

    async def run() -> None:
        worker = StoreWorker(store)
        with pytest.raises(ValueError):
            await CommitQueue(worker).commit(
                [Cycle(alerts=[AlertTransition(1, "r", "x", "exploded", 1)])]
            )
        worker.shutdown()

    asyncio.run(run())


def test_devices_started_together_poll_on_one_grid_and_share_commits(make_config):
    """Eight racks at 5 Hz: each moment's eight cycles go in one transaction, not one each."""

    devices = [sim_device(f"rack-{i}", poll_interval_s=0.2) for i in range(8)]
    settings = load_config(make_config(devices=devices))
    commits: list[int] = []
    real = Store.commit_cycles

    def counting(self: Store, cycles: list[Cycle]) -> object:
        commits.append(sum(c.reading is not None for c in cycles))
        return real(self, cycles)

    async def run() -> None:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.sleep(2.5)
        daemon.request_stop()
        await task

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "commit_cycles", counting)
        asyncio.run(run())
    polled = [n for n in commits if n]
    assert sum(polled) >= 80  # 8 racks x ~12 slots
    assert sum(polled) / len(polled) >= 6, polled
