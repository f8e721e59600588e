"""Group commit: the cycles of every device that arrive while a commit runs share the next one.

One transaction per poll made the store thread the daemon's bottleneck: each commit pays a
BEGIN/COMMIT, the cap check and, with ``synchronous = "full"``, an fsync (milliseconds on an SD
card), one after the other for every device. Here each caller still awaits its own cycles'
commit (DESIGN invariant 1: nothing is published before it is committed, and a poll task feels
the disk's back-pressure), but cycles handed in while the store thread is busy are committed
together in one transaction, so the commit rate follows the disk, not the number of devices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bess_edge.store import CommitResult, Cycle

if TYPE_CHECKING:
    from bess_edge.daemon import StoreWorker

Waiter = tuple[Sequence[Cycle], "asyncio.Future[CommitResult]"]


class CommitQueue:
    def __init__(self, worker: StoreWorker) -> None:
        self.worker = worker
        self._waiting: list[Waiter] = []
        self._task: asyncio.Task[None] | None = None

    async def commit(self, cycles: Sequence[Cycle]) -> CommitResult:
        """Commit ``cycles`` (atomically, possibly with others'); raises what the store raised."""
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((cycles, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="commits")
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._commit(batch)
            except BaseException as exc:  # no caller may wait for ever, whatever went wrong
                for _, future in batch:
                    _settle(future, exc)
                raise

    async def _commit(self, batch: list[Waiter]) -> None:
        commit = self.worker.store.commit_cycles
        try:
            result = await self.worker.call(commit, [c for group, _ in batch for c in group])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # One bad cycle (larger than the cap, ...) must not fail the others: each alone.
            for group, future in batch:
                try:
                    _settle(future, await self.worker.call(commit, group))
                except Exception as exc_alone:
                    _settle(future, exc_alone)
            return
        _share(batch, result)


def _share(batch: list[Waiter], result: CommitResult) -> None:
    """Each caller gets its own samples' seqs; drops are reported once, to the first."""
    seqs = iter(result.sample_seqs)
    dropped = result.dropped_telemetry
    for group, future in batch:
        mine = [next(seqs) for cycle in group if cycle.reading is not None]
        _settle(future, CommitResult(sample_seqs=mine, dropped_telemetry=dropped))
        dropped = 0


def _settle(future: asyncio.Future[CommitResult], outcome: CommitResult | BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
