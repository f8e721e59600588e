"""What the CAN tests share: the shipped rack's device, a BMS's side of the bus (encode and send
frames), and waiting for the driver's receive thread before reading."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import can
from bess_edge.drivers.can import CanDriver
from bess_edge.drivers.can_encode import Frame, FrameEncoder
from conftest import REPO

from bess_edge.config import load_config
from bess_edge.model import Reading


def rack_device(
    channel: str, interface: str = "virtual", options: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """The shipped rack mapping (config/can-rack.toml: 384 LFP cells, 280 Ah) on ``channel``;
    ``options`` are added to the driver's, ``fields`` to the device's."""
    shipped = load_config(REPO / "config" / "can-rack.toml").devices[0]
    on_channel = {"interface": interface, "channel": channel, **(options or {})}
    return {
        "id": "rack-1",
        "driver": "can",
        "chemistry": "lfp",
        "capacity_ah": 280.0,
        "options": {**shipped.options, **on_channel},
        **fields,
    }


def unique_channel(name: str) -> str:
    """A virtual channel no other test (or xdist worker) shares."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


@contextmanager
def virtual_bus(channel: str) -> Iterator[can.BusABC]:
    """The BMS's end of a python-can virtual channel."""
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        yield bus
    finally:
        bus.shutdown()


def message(frame_id: int, data: bytes) -> can.Message:
    return can.Message(arbitration_id=frame_id, data=data, is_extended_id=False)


def messages(frames: Iterable[Frame], only: set[int] | None = None) -> list[can.Message]:
    """Encoded frames as messages on the wire (those of the ids in ``only``, if given)."""
    return [message(f.frame_id, f.data) for f in frames if only is None or f.frame_id in only]


def send(bus: can.BusABC, driver: CanDriver, reading: Reading, only: set[int] | None = None) -> int:
    """Send ``reading`` encoded with the driver's own mapping; returns the frames sent."""
    encoder = FrameEncoder(driver.options.slots(), driver.options.invert_current)
    wire = messages(encoder.frames(reading), only)
    for m in wire:
        bus.send(m)
    return len(wire)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.01)


async def settle(driver: CanDriver, decoded: int, timeout_s: float = 10.0) -> None:
    """Wait until the receive thread has decoded ``decoded`` frames."""
    await wait_for(lambda: driver.counters.decoded >= decoded, timeout_s)


async def read_after(
    driver: CanDriver,
    bus: can.BusABC,
    wire: list[can.Message],
    until: Callable[[], bool] | None = None,
) -> Reading:
    """Open the driver, send ``wire`` on ``bus``, wait until every frame is decoded (or
    ``until``), read, close."""
    await driver.open()
    try:
        for m in wire:
            bus.send(m)
        await wait_for(until or (lambda: driver.counters.decoded >= len(wire)))
        return await driver.read()
    finally:
        await driver.close()
