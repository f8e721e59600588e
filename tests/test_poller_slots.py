"""Devices due at the same moment have their readings taken at that moment, whatever the time
the diagnostics of the others take afterwards."""

from __future__ import annotations

import asyncio
import time

from bess_edge.config import DeviceConfig
from bess_edge.model import Reading
from bess_edge.poller import DevicePoller

DIAGNOSTICS_S = 0.005  # the CPU one poll's diagnostics hold the loop for


class InstantDriver:
    """A driver that never waits on I/O (as the simulator): read returns at once."""

    def __init__(self, name: str, reads: dict[str, list[float]]) -> None:
        self.name, self.reads = name, reads

    async def open(self) -> None:
        pass

    async def read(self) -> Reading:
        self.reads.setdefault(self.name, []).append(time.monotonic())
        return Reading(self.name)

    async def close(self) -> None:
        pass


def test_readings_of_one_slot_are_taken_before_any_is_diagnosed():
    reads: dict[str, list[float]] = {}

    async def diagnose(reading: Reading) -> None:
        time.sleep(DIAGNOSTICS_S)  # CPU-bound, as DevicePipeline.on_reading

    async def failed(error: str, ts_ms: int, lost: bool) -> None:
        raise AssertionError(error)

    async def run() -> None:
        stop = asyncio.Event()
        pollers = [
            DevicePoller(
                DeviceConfig(id=f"rack-{i}", driver="sim", poll_interval_s=0.1),
                InstantDriver(f"rack-{i}", reads),  # type: ignore[arg-type]
                on_reading=diagnose,
                on_failure=failed,
                stop=stop,
            )
            for i in range(6)
        ]
        start = time.monotonic()
        tasks = [asyncio.create_task(p.run(start)) for p in pollers]
        await asyncio.sleep(0.35)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    for slot in range(3):
        taken = [times[slot] for times in reads.values()]
        # Six diagnoses take 30 ms; the six readings of a slot are taken within a few ms.
        assert max(taken) - min(taken) < DIAGNOSTICS_S, (slot, taken)
