"""Modbus driver throughput against a loopback pymodbus server, and its overhead over bare pymodbus.

For a 16-cell map (the shipped generic-16s-example) and a 400-cell rack map, this measures polls/s
and registers/s of the ``modbus`` driver (plan, read, decode into a Reading) and of a bare pymodbus
client reading the very same blocks in the same run, alternating rounds so both see the same
machine load. Target: the driver reaches at least 90 % of the bare client's polls/s.

For RTU (a socat pseudo-terminal pair, which does not pace bytes at the baud rate) it prints the
theoretical poll rate of a real 115200 baud line beside the measured figure.

    .venv/bin/python benchmarks/modbus_bench.py [--seconds 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bess_edge.drivers.modbus import ModbusDriver, ModbusOptions  # noqa: E402
from bess_edge.drivers.modbus_decode import Block  # noqa: E402
from modbus_server import ServerProcess, pty_pair  # noqa: E402
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient  # noqa: E402

from bess_edge.config import DeviceConfig  # noqa: E402

BAUD = 115200
# The bare client gets the timeout and retries the driver uses by default (ModbusOptions), not
# pymodbus's own defaults (3 s, 3 retries).
SAME = {"timeout": 1.0, "retries": 0}
# Modbus over Serial Line v1.02, 2.5.1.1: above 19200 baud the inter-frame gap is a fixed 1.75 ms;
# RTU sends 11 bits per byte (start, 8 data, parity or second stop, stop).
GAP_S, BITS_PER_BYTE = 1.75e-3, 11


def rack_400_map(directory: Path) -> Path:
    path = directory / "rack-400.toml"
    path.write_text(
        '[map]\nname = "bench-400"\nsource = "benchmark"\n'
        '[fields.pack_voltage_v]\naddress = 0\ntype = "u32"\nunit = "mV"\n'
        '[fields.pack_current_a]\naddress = 2\ntype = "s32"\nunit = "mA"\n'
        '[fields.bms_soc_pct]\naddress = 4\nunit = "%"\n'
        '[fields.fault_flags]\naddress = 5\ntype = "u32"\n'
        '[fields.cell_voltage_v]\naddress = 0x1000\ncount = 400\nunit = "mV"\n'
        '[fields.cell_temperature_c]\naddress = 0x2000\ncount = 100\nscale = 0.1\nunit = "C"\n'
    )
    return path


def image_16() -> dict:
    from test_modbus_tcp import generic_16s_image

    return {"units": {"1": {"holding": generic_16s_image()}}}


def image_400() -> dict:
    runs = [[0, [0x0014, 0x2C40, 0, 1000, 50, 0, 0]], [0x1000, [3300] * 400], [0x2000, [250] * 100]]
    return {"units": {"1": {"holding": runs}}}


Rate = tuple[float, float]  # (polls/s, client CPU µs per poll)


def _rate(polls: int, started: float, cpu_started: float) -> Rate:
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return polls / wall, cpu / polls * 1e6


async def driver_rate(driver: ModbusDriver, seconds: float) -> Rate:
    await driver.open()
    polls, deadline = 0, time.perf_counter() + seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        await driver.read()
        polls += 1
    rate = _rate(polls, started, cpu_started)
    await driver.close()
    return rate


async def bare_rate(make_client, blocks: list[Block], seconds: float) -> Rate:  # type: ignore[no-untyped-def]
    client = make_client()  # a pymodbus client belongs to the running loop
    await client.connect()
    polls, deadline = 0, time.perf_counter() + seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        for b in blocks:
            await client.read_holding_registers(b.address, count=b.count, device_id=1)
        polls += 1
    rate = _rate(polls, started, cpu_started)
    client.close()
    return rate


def plan(device: DeviceConfig, options: dict) -> list[Block]:
    """The blocks the driver reads (known after open), for the bare client to read the same."""

    async def opened() -> list[Block]:
        driver = ModbusDriver(device, ModbusOptions.model_validate(options))
        await driver.open()
        blocks = driver._blocks
        await driver.close()
        return blocks

    return asyncio.run(opened())


def compare(name: str, options: dict, make_client, seconds: float, rounds: int) -> list[Block]:  # type: ignore[no-untyped-def]
    device = DeviceConfig(id="bench", driver="modbus", options=options)
    ours: list[Rate] = []
    bare: list[Rate] = []
    blocks = plan(device, options)

    def measure_ours(seconds: float) -> Rate:
        driver = ModbusDriver(device, ModbusOptions.model_validate(options))
        return asyncio.run(driver_rate(driver, seconds))

    def measure_bare(seconds: float) -> Rate:
        return asyncio.run(bare_rate(make_client, blocks, seconds))

    # An untimed warm-up of each, then rounds that swap which side goes first, so neither always
    # runs on a cold process or always right after the other (the server's state, CPU clocks).
    measure_ours(min(seconds, 0.5))
    measure_bare(min(seconds, 0.5))
    for i in range(rounds):
        if i % 2:
            bare.append(measure_bare(seconds))
            ours.append(measure_ours(seconds))
        else:
            ours.append(measure_ours(seconds))
            bare.append(measure_bare(seconds))
    registers = sum(b.count for b in blocks)
    (best_ours, cpu_ours), (best_bare, cpu_bare) = max(ours), max(bare)
    print(
        f"{name:15} {registers:3} regs/{len(blocks)} reads | driver {best_ours:6.0f} polls/s "
        f"{best_ours * registers:7.0f} regs/s {cpu_ours:4.0f} µs CPU/poll | bare pymodbus "
        f"{best_bare:6.0f} polls/s {cpu_bare:4.0f} µs CPU/poll | ratio {best_ours / best_bare:4.0%}"
    )
    return blocks


def rtu_limit(blocks: list[Block]) -> float:
    """Polls/s a real 115200 baud line allows: request 8 bytes, reply 5 + 2n, a gap after each."""
    seconds = sum((8 + 5 + 2 * b.count) * BITS_PER_BYTE / BAUD + 2 * GAP_S for b in blocks)
    return 1.0 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds; best kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        maps = {"16 cells": ("generic-16s-example", image_16()),
                "400 cells": (str(rack_400_map(Path(tmp))), image_400())}  # fmt: skip
        print("Modbus TCP, loopback, pymodbus server in another process")
        for label, (map_name, image) in maps.items():
            with ServerProcess(image) as server:
                options = {"host": "127.0.0.1", "port": server.port, "map": map_name}
                compare(
                    f"tcp {label}",
                    options,
                    lambda port=server.port: AsyncModbusTcpClient("127.0.0.1", port=port, **SAME),
                    args.seconds,
                    args.rounds,
                )
        if shutil.which("socat") is None:
            print("RTU skipped: socat not installed")
            return
        print(f"Modbus RTU over a pty pair (not paced at the baud rate), {BAUD} baud 8N1")
        for label, (map_name, image) in maps.items():
            with pty_pair() as (server_end, client_end), ServerProcess(image, rtu=server_end):
                options = {
                    "transport": "rtu",
                    "serial_port": client_end,
                    "baudrate": BAUD,
                    "parity": "N",
                    "map": map_name,
                }
                blocks = compare(
                    f"rtu {label}",
                    options,
                    lambda end=client_end: AsyncModbusSerialClient(
                        end, baudrate=BAUD, parity="N", **SAME
                    ),
                    args.seconds,
                    args.rounds,
                )
                print(f"{'':15} theoretical limit of a real {BAUD} baud line: "
                      f"{rtu_limit(blocks):.1f} polls/s")  # fmt: skip


if __name__ == "__main__":
    main()
