"""CAN decode and ingest speed, against raw cantools and the line rate of a saturated bus.

Run: ``.venv/bin/python benchmarks/can_bench.py``

The frames are one full cycle of the shipped 384-cell rack mapping (131 frames, 128 of them
multiplexed cell blocks) and, when ../shared/thirdparty/foxbms/ is present, of the foxBMS 2
mapping (89 frames). Three figures, measured in the same run on the same frames:

* raw cantools: ``Database.decode_message(id, data, decode_choices=False)`` per frame, nothing
  kept (the reference);
* end to end: each frame handed to the driver's receive listener, exactly what python-can's
  Notifier thread calls (error-frame check, clock, decode, store), and a full ``Reading``
  (numpy arrays, staleness, quality) built after every cycle, far more often than a poller asks;
* the same through a real python-can ``virtual`` bus and ``Notifier`` thread (sender and receiver
  in this process, so on one core the sender's cost is included).

Target (issue 5): end to end at least 10× the line rate of a saturated 1 Mbit/s bus.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import can
from bess_edge.drivers.can import CanDriver, _Receiver
from bess_edge.drivers.can_decode import FrameDecoder
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.can_map import CanOptions, load_dbc
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.config import DeviceConfig, load_config
from bess_edge.model import now_ms

REPO = Path(__file__).resolve().parent.parent
FOXBMS_DBC = REPO.parent / "shared" / "thirdparty" / "foxbms" / "foxbms.dbc"
TARGET_RATIO = 10.0


def line_rate_1mbit() -> tuple[float, str]:
    """Frames/s of a saturated 1 Mbit/s bus, 8-byte standard (11-bit id) data frames.

    Bosch CAN 2.0 part A: SOF 1 + id 11 + RTR 1 + IDE 1 + r0 1 + DLC 4 + data 64 + CRC 15 =
    98 bits are bit-stuffed; worst case one stuff bit after every 4 bits once the first 5 have
    passed, floor((98 - 1) / 4) = 24. Unstuffed tail: CRC delimiter 1 + ACK 2 + EOF 7 +
    interframe space 3 = 13. Total 98 + 24 + 13 = 135 bits.
    """
    stuffed = 1 + 11 + 1 + 1 + 1 + 4 + 64 + 15
    stuff_bits = (stuffed - 1) // 4
    bits = stuffed + stuff_bits + 1 + 2 + 7 + 3
    how = f"{stuffed} stuffed bits + {stuff_bits} worst-case stuff bits + 13 = {bits} bits/frame"
    return 1_000_000 / bits, how


def cycle_frames(device: DeviceConfig) -> list[can.Message]:
    options = device.parsed_options
    assert isinstance(options, CanOptions)
    counts = {f: m.count for f, m in options.signals.items() if hasattr(m, "count")}
    sim = SimulatedString(
        SimOptions(
            cells=counts.get("cell_voltage_v", 16),
            temperature_sensors=counts.get("cell_temperature_c"),
            seed=1,
        ),
        device.chemistry_preset(),
        device.capacity_ah,
    )
    reading = sim.measure(now_ms(), device.id)
    encoder = FrameEncoder(options.slots(), options.invert_current)
    return [
        can.Message(arbitration_id=f.frame_id, data=f.data, is_extended_id=f.is_extended)
        for f in encoder.frames(reading)
    ]


def best_rate(run, frames_per_run: int, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return frames_per_run / best


def bench_device(device: DeviceConfig, cycles: int) -> tuple[float, float, float]:
    options = device.parsed_options
    assert isinstance(options, CanOptions)
    frames = cycle_frames(device)
    n = len(frames) * cycles
    db = load_dbc(options.dbc)
    pairs = [(m.arbitration_id, bytes(m.data)) for m in frames]

    def raw() -> None:
        decode = db.decode_message
        for _ in range(cycles):
            for frame_id, data in pairs:
                decode(frame_id, data, decode_choices=False)

    decoder = FrameDecoder.for_options(options, device.id)
    receiver = _Receiver(decoder)

    def end_to_end() -> None:
        receive = receiver.on_message_received
        for _ in range(cycles):
            for msg in frames:
                receive(msg)
            decoder.reading(device.id, time.monotonic(), now_ms())

    raw_rate = best_rate(raw, n)
    e2e_rate = best_rate(end_to_end, n)
    assert decoder.counters.decoded == decoder.counters.frames  # every frame was decoded
    bus_rate = asyncio.run(through_virtual_bus(device, frames, cycles))
    return raw_rate, e2e_rate, bus_rate


async def through_virtual_bus(
    device: DeviceConfig, frames: list[can.Message], cycles: int
) -> float:
    channel = f"bench-{time.monotonic_ns()}"
    options = device.parsed_options.model_copy(update={"interface": "virtual", "channel": channel})
    driver = CanDriver(device, options)
    tx = can.Bus(interface="virtual", channel=channel)
    await driver.open()
    try:
        total = len(frames) * cycles
        started = time.perf_counter()
        for _ in range(cycles):
            for msg in frames:
                tx.send(msg)
        while driver.counters.decoded < total:
            await asyncio.sleep(0.001)
        await driver.read()
        return total / (time.perf_counter() - started)
    finally:
        await driver.close()
        tx.shutdown()


def main() -> None:
    line_rate, how = line_rate_1mbit()
    print(f"saturated 1 Mbit/s bus, 8-byte standard frames: {line_rate:,.0f} frames/s ({how})")
    print(f"target end to end: >= {TARGET_RATIO:g}x line rate = {TARGET_RATIO * line_rate:,.0f}")
    devices = [("rack_bms.dbc, 384 cells", load_config(REPO / "config" / "can-rack.toml"))]
    if FOXBMS_DBC.is_file():
        settings = load_config(REPO / "config" / "can-foxbms.toml")
        devices.append(("foxbms.dbc, 216 cells", settings))
    else:
        print(f"(foxBMS DBC not found at {FOXBMS_DBC}: rack only)")
    print(
        f"{'mapping':<24} {'raw cantools':>14} {'end to end':>12} {'e2e/raw':>8} "
        f"{'e2e/line':>9} {'virtual bus':>12}"
    )
    for name, settings in devices:
        raw, e2e, bus = bench_device(settings.devices[0], cycles=300)
        print(
            f"{name:<24} {raw:>12,.0f}/s {e2e:>10,.0f}/s {e2e / raw:>8.2f} "
            f"{e2e / line_rate:>8.1f}x {bus:>10,.0f}/s"
        )
    print("(frames/s on one core; best of 5; a full Reading is built after every cycle)")


if __name__ == "__main__":
    main()
