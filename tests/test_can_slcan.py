"""Across processes on a serial CAN adapter's protocol: ``bess-edge simulate can`` sends slcan
lines into one end of a pseudo-terminal pair, the gateway reads the other end.

This kernel has no ``vcan``; slcan over a pty pair made by socat is the same code path a USB-CAN
adapter (CANable, CANUSB) takes, serial framing included. Each test prints the transport it used.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.can import CanDriver
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.sim import SimOptions, SimulatedString
from can_support import rack_device, wait_for
from conftest import wait_until

from bess_edge.config import load_config
from bess_edge.model import Reading
from bess_edge.store import Store

SOCAT = shutil.which("socat") or "/usr/bin/socat"


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals: what one end writes, the other reads."""
    if not Path(SOCAT).exists():
        pytest.skip("socat is not installed (scripts/test.sh installs it): no slcan pty pair")
    a, b = tmp_path / "can-a", tmp_path / "can-b"
    proc = subprocess.Popen(
        [SOCAT, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: a.exists() and b.exists(), timeout=10)
        print(f"transport: slcan over a socat pty pair {a} <-> {b}")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(10)


def slcan_rack(channel: str) -> dict[str, Any]:
    """The shipped rack mapping on slcan, polled fast."""
    slcan = {"bus_options": {"sleep_after_open": 0}}
    return rack_device(channel, "slcan", slcan, poll_interval_s=0.5, timeout_s=3.0)


def start_simulator(config: Path, channel: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "bess_edge", "simulate", "can", "--config", str(config)),
            *("--interface", "slcan", "--channel", channel, "--period", "0.3"),
            *("--time-scale", "0", "--no-noise", "--seed", "11", "--current", "-35", *extra),
        ],
    )


def frozen_rack_state(config: Path) -> Reading:
    """What the simulator sends from its second cycle on (see --time-scale 0 --no-noise)."""
    device = load_config(config).devices[0]
    sim = SimulatedString(
        SimOptions(
            cells=384,
            temperature_sensors=192,
            profile="constant",
            current_a=-35.0,
            seed=11,
            voltage_noise_v=0,
            current_noise_a=0,
            temperature_noise_c=0,
        ),
        device.chemistry_preset(),
        device.capacity_ah,
    )
    sim.advance(0.0)
    return sim.measure(0, device.id)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_simulator_frames_land_in_sqlite_through_the_daemon(
    pty_pair, make_config: Callable[..., Path], daemon, processes, tmp_path
):
    sim_end, gateway_end = pty_pair
    config = make_config([slcan_rack(gateway_end)])
    gateway = daemon(config)
    processes.append(start_simulator(config, sim_end))
    sent = frozen_rack_state(config)
    got = settled_sample(tmp_path / "bess-edge.db")
    assert gateway.alive()
    assert_sample_is(got, sent)


def test_daemon_keeps_decoding_through_garbage_on_the_bus(
    pty_pair, make_config: Callable[..., Path], daemon, processes, tmp_path
):
    sim_end, gateway_end = pty_pair
    config = make_config([slcan_rack(gateway_end)])
    gateway = daemon(config)
    processes.append(start_simulator(config, sim_end))
    db = tmp_path / "bess-edge.db"
    before = settled_sample(db)
    rng = np.random.default_rng(3)
    line = os.open(sim_end, os.O_WRONLY | os.O_NOCTTY)  # a second, misbehaving node
    try:
        for _ in range(300):
            os.write(
                line, b"t7A58" + bytes(rng.integers(0, 256, 8).tolist()).hex().encode() + b"\r"
            )
            os.write(line, b"t1103" + b"00" * 3 + b"\r")  # cell-voltage id, 3 bytes instead of 8
            os.write(line, b"t110800FFFFFFFFFFFFFF\r")  # multiplexer id 0x00 is fine ...
            os.write(line, b"t1108FF" + b"00" * 7 + b"\r")  # ... 0xFF is not in the DBC
    finally:
        os.close(line)
    after = settled_sample(db, after_ts_ms=before["ts_ms"])
    assert gateway.alive()
    assert_sample_is(after, frozen_rack_state(config))
    log = gateway.log()
    for kind in ("unknown_id", "wrong_dlc", "undecodable"):
        assert f'"kind": "{kind}"' in log, kind


def settled_sample(db: Path, after_ts_ms: int = 0) -> dict[str, Any]:
    """A sample taken a second after the simulator's state became steady (its first cycle has
    zero current, and a poll during the second one mixes blocks of both, as a real BMS's would)."""
    first = wait_until(lambda: steady_sample(db, after_ts_ms), timeout=40, interval=0.2)
    return wait_until(lambda: steady_sample(db, first["ts_ms"] + 1000), timeout=20, interval=0.2)


def steady_sample(db: Path, after_ts_ms: int) -> dict[str, Any] | None:
    """The daemon's latest sample, if later than ``after_ts_ms`` and at the simulator's current."""
    if not db.exists():
        return None
    try:
        store = Store(db, readonly=True)
        try:
            row = store.latest_sample("rack-1")
        finally:
            store.close()
    except Exception:  # the daemon has not created the schema yet
        return None
    if row and row["ts_ms"] > after_ts_ms and row["quality"] == 0 and row["pack_current_a"] < -30:
        return row
    return None


def assert_sample_is(got: dict[str, Any], sent: Reading) -> None:
    """Equal within the rack DBC's resolution: 1 mV, 0.25 °C, 0.1 V, 0.1 A, 0.01 %."""
    np.testing.assert_allclose(got["cell_voltage_v"], sent.cell_voltage_v, atol=0.0005)
    np.testing.assert_allclose(got["cell_temperature_c"], sent.cell_temperature_c, atol=0.125)
    assert got["pack_voltage_v"] == pytest.approx(sent.pack_voltage_v, abs=0.05)
    assert got["pack_current_a"] == pytest.approx(sent.pack_current_a, abs=0.05)
    assert got["bms_soc_pct"] == pytest.approx(sent.bms_soc_pct, abs=0.005)


def test_garbage_and_a_burst_on_the_serial_line_are_survived(
    pty_pair, make_config: Callable[..., Path], processes
):
    sim_end, gateway_end = pty_pair
    config = make_config([slcan_rack(gateway_end)])
    device = load_config(config).devices[0]
    driver = CanDriver(device, device.parsed_options)
    sent = frozen_rack_state(config)
    frames = FrameEncoder(driver.options.slots()).frames(sent)
    good_lines = [
        f"t{f.frame_id:03X}{len(f.data)}{f.data.hex().upper()}\r".encode() for f in frames
    ]
    rng = np.random.default_rng(9)

    async def scenario() -> Reading:
        await driver.open()
        simulator = start_simulator(config, sim_end)
        processes.append(simulator)
        line = os.open(sim_end, os.O_WRONLY | os.O_NOCTTY)  # a second writer on the same wire
        try:
            await wait_for(lambda: driver.counters.decoded >= 2 * len(frames), 30)
            for _ in range(50):
                noise = rng.choice(list(b"0123456789ABCDEFGtTrRxyz \a"), 12)
                os.write(line, bytes(noise.tolist()) + b"\r")  # line noise
                os.write(line, b"t1003\r")  # truncated slcan line
                os.write(line, b"t7A58" + b"00" * 8 + b"\r")  # id unknown to the DBC
                os.write(line, b"t1004" + b"00" * 4 + b"\r")  # mapped id, DLC 4 instead of 8
            simulator.terminate()
            simulator.wait(10)
            await quiet(driver)
            before = driver.counters.decoded
            # As fast as the pty takes them: the reader (python-can parses slcan byte by byte)
            # sets the pace, about twice a saturated 500 kbit/s bus (~3,700 frames/s).
            burst = 40 * len(good_lines)
            started = time.monotonic()
            for _ in range(40):
                os.write(line, b"".join(good_lines))
            elapsed = time.monotonic() - started
            print(f"burst of {burst} frames written at {burst / elapsed:,.0f} frames/s")
            await wait_for(lambda: driver.counters.decoded >= before + burst, 60)
            await quiet(driver)
            assert driver.counters.decoded == before + burst  # not one frame lost
            return await driver.read()
        finally:
            os.close(line)
            await driver.close()

    got = asyncio.run(scenario())
    c = driver.counters
    print(f"counters: {c.as_dict()}")
    assert c.unknown_id >= 50 and c.wrong_dlc >= 100  # the truncated lines count here too
    assert c.bus_errors > 0  # noise python-can's slcan parser rejects
    assert c.reopens == 0
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)
    assert got.pack_current_a == pytest.approx(sent.pack_current_a, abs=0.05)


async def quiet(driver: CanDriver) -> None:
    """Wait until nothing has arrived for half a second."""
    seen = -1
    while driver.counters.frames != seen:
        seen = driver.counters.frames
        await asyncio.sleep(0.5)


def test_binary_noise_that_wedges_the_slcan_parser_fails_the_poll_and_a_reopen_recovers(
    pty_pair, make_config: Callable[..., Path], processes
):
    """python-can 4.6's slcan keeps a non-UTF-8 byte in its line buffer, so every later line
    fails too; the driver must report that as a failed poll, and reopening must recover."""
    sim_end, gateway_end = pty_pair
    config = make_config([slcan_rack(gateway_end)])
    device = load_config(config).devices[0]
    driver = CanDriver(device, device.parsed_options)

    async def scenario() -> Reading:
        await driver.open()
        processes.append(start_simulator(config, sim_end))
        line = os.open(sim_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            await wait_for(lambda: driver.counters.decoded >= 262, 30)
            os.write(line, b"\xff\xfe garbage\r")
            failed_at = time.monotonic()
            while True:
                try:
                    await driver.read()
                except DriverError as exc:
                    print(f"poll failed as it should: {exc}")
                    break
                assert time.monotonic() - failed_at < 20, "the wedged parser was not reported"
                await asyncio.sleep(0.2)
            await driver.close()  # what the poller does after a failed poll
            await driver.open()
            decoded = driver.counters.decoded
            await wait_for(lambda: driver.counters.decoded >= decoded + 262, 30)
            return await driver.read()
        finally:
            os.close(line)
            await driver.close()

    got = asyncio.run(scenario())
    assert driver.counters.reopens == 1
    np.testing.assert_allclose(
        got.cell_voltage_v, frozen_rack_state(config).cell_voltage_v, atol=0.0005
    )
