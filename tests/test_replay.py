"""``bess-edge replay`` and ``driver = "replay"``: captures written by python-can's own loggers
(candump .log, Vector .asc and .blf, PCAN .trc) go through decode → diagnostics → SQLite."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.capture import parse_candump_line
from bess_edge.drivers.replay import ReplayDriver
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.config import load_config
from bess_edge.model import Reading
from bess_edge.store import Store

REPO = Path(__file__).resolve().parent.parent
CYCLE_S = 0.5
T0 = 1_780_000_000.0  # 2026-05-28, an absolute capture start time


def pylontech_device(driver: str = "can", **options: Any) -> dict[str, Any]:
    shipped = load_config(REPO / "config" / "can-pylontech.toml").devices[0].options
    if driver == "replay":  # a capture has no bus
        shipped = {k: v for k, v in shipped.items() if k not in ("interface", "channel", "bitrate")}
    return {
        "id": "battery-1",
        "driver": driver,
        "poll_interval_s": 1.0,
        "chemistry": "lfp",
        "capacity_ah": 50.0,
        "series_cells": 16,  # the simulated string below
        "options": {**shipped, **options},
    }


def battery_state() -> Reading:
    device = load_config(REPO / "config" / "can-pylontech.toml").devices[0]
    sim = SimulatedString(
        SimOptions(cells=16, profile="constant", current_a=12.0, seed=4),
        device.chemistry_preset(),
        device.capacity_ah,
    )
    sim.advance(60)
    reading = sim.measure(0, "battery-1")
    reading.extra.update(battery_temperature_c=23.4, max_charge_current_a=25.0, module_count=3)
    reading.fault_flags = 0b100  # over-temperature protection
    return reading


def write_capture(path: Path, reading: Reading, cycles: int = 5) -> int:
    """``cycles`` bursts of the battery's frames, CYCLE_S apart; returns the frame count."""
    device = load_config(REPO / "config" / "can-pylontech.toml").devices[0]
    frames = FrameEncoder(device.parsed_options.slots()).frames(reading)
    writer = can.Logger(path)
    n = 0
    for k in range(cycles):
        for j, f in enumerate(frames):
            writer.on_message_received(
                can.Message(
                    timestamp=T0 + k * CYCLE_S + j * 0.001,
                    arbitration_id=f.frame_id,
                    data=f.data,
                    is_extended_id=False,
                    channel=0,
                )
            )
            n += 1
    writer.stop()
    return n


def run_replay(capture: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", "replay", str(capture), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc"])
def test_capture_replays_into_sqlite_with_the_values_sent(suffix, make_config, tmp_path):
    sent = battery_state()
    capture = tmp_path / f"capture{suffix}"
    frames = write_capture(capture, sent)
    config = make_config([pylontech_device()])
    result = run_replay(capture, config, "--fast")
    assert result.returncode == 0, result.stderr
    print(result.stdout.splitlines()[-1])
    # 2.0 s of capture at one Reading per second: at +1 s, +2 s, and at the last frame.
    assert f"{frames} frames read, {frames} decoded" in result.stdout
    assert "3 Readings written" in result.stdout
    store = Store(tmp_path / "bess-edge.db", readonly=True)
    try:
        assert store.sample_count("battery-1") == 3
        got = store.latest_sample("battery-1")
    finally:
        store.close()
    assert got is not None
    assert got["pack_voltage_v"] == pytest.approx(sent.pack_voltage_v, abs=0.005)
    assert got["pack_current_a"] == pytest.approx(sent.pack_current_a, abs=0.05)
    assert got["bms_soc_pct"] == pytest.approx(round(sent.bms_soc_pct), abs=0.5)  # whole %
    assert got["fault_flags"] == 0b100
    if suffix != ".asc":  # python-can's .asc reader gives times relative to the capture start
        assert abs(got["ts_ms"] / 1000 - (T0 + 2 * 2 * CYCLE_S)) < 0.1


def test_replay_at_recorded_speed_takes_the_recorded_time(make_config, tmp_path):
    capture = tmp_path / "capture.log"
    write_capture(capture, battery_state(), cycles=5)  # 2.0 s recorded
    config = make_config([pylontech_device()])
    started = time.monotonic()
    result = run_replay(capture, config, "--speed", "2", "--no-progress")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed >= 1.0  # 2.0 s of capture at twice the speed, plus start-up


def test_a_file_that_is_not_a_capture_is_a_usage_error(make_config, tmp_path):
    not_a_capture = tmp_path / "notes.txt"
    not_a_capture.write_text("hello")
    result = run_replay(not_a_capture, make_config([pylontech_device()]))
    assert result.returncode == 2
    assert "not a capture" in result.stderr


def test_replay_driver_plays_a_capture_as_a_live_device(make_config, tmp_path):
    sent = battery_state()
    capture = tmp_path / "capture.blf"
    write_capture(capture, sent, cycles=5)
    config = make_config([pylontech_device("replay", file=str(capture), speed=10.0)])
    device = load_config(config).devices[0]
    driver = ReplayDriver(device, device.parsed_options)

    async def scenario() -> list[Reading]:
        await driver.open()
        readings = []
        try:
            while True:
                await asyncio.sleep(0.05)
                readings.append(await driver.read())
        except DriverError as exc:
            assert "finished" in str(exc)
        finally:
            await driver.close()
        return readings

    readings = asyncio.run(scenario())
    assert len(readings) >= 2  # 2 s of capture at 10×: about four polls of 50 ms
    assert readings[-1].pack_voltage_v == pytest.approx(sent.pack_voltage_v, abs=0.005)
    assert readings[-1].extra["battery_temperature_c"] == pytest.approx(23.4)
    assert np.isclose(readings[-1].extra["module_count"], 3)


def test_bad_lines_in_a_candump_log_are_skipped_counted_and_the_good_frames_all_kept(
    make_config, tmp_path
):
    sent = battery_state()
    capture = tmp_path / "capture.log"
    frames = write_capture(capture, sent)
    lines = capture.read_text().splitlines()
    good_id = lines[0].split()[2].split("#")[0]
    bad = [
        f"({T0 + 0.0101:.6f}) can0 {good_id}#0011 extra-field",  # too many values to unpack
        f"({T0 + 0.0102:.6f}) can0 XYZ#00112233",  # invalid literal for int()
        f"({T0 + 0.0103:.6f}) can0 {good_id}#0011223",  # odd number of hex digits
        "garbage",
    ]
    capture.write_text("\n".join(lines[:3] + bad + lines[3:]) + "\n")
    config = make_config([pylontech_device()])
    result = run_replay(capture, config, "--fast", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert f"{frames} frames read, {frames} decoded" in result.stdout
    assert "4 bad lines skipped" in result.stdout
    assert "3 Readings written" in result.stdout
    assert "line 4:" in result.stderr and "line 7:" in result.stderr
    assert "odd number of hex digits (7)" in result.stderr
    store = Store(tmp_path / "bess-edge.db", readonly=True)
    try:
        assert store.sample_count("battery-1") == 3
    finally:
        store.close()


@pytest.mark.parametrize("suffix", [".asc", ".trc"])
def test_a_bad_line_in_an_asc_or_trc_capture_costs_only_that_line(suffix, make_config, tmp_path):
    sent = battery_state()
    capture = tmp_path / f"capture{suffix}"
    frames = write_capture(capture, sent)
    lines = capture.read_text().splitlines()
    data_lines = [i for i, line in enumerate(lines) if "Rx" in line]
    at = data_lines[2]
    broken = lines[at].rsplit(maxsplit=1)[0] + " ZZ"  # last data byte not hexadecimal
    capture.write_text("\n".join([*lines[:at], broken, *lines[at:]]) + "\n")
    result = run_replay(capture, make_config([pylontech_device()]), "--fast", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert f"{frames} frames read, {frames} decoded" in result.stdout
    assert "1 bad lines skipped" in result.stdout
    assert f"line {at + 1}:" in result.stderr


def test_an_odd_number_of_hex_digits_is_an_error_not_padding():
    assert parse_candump_line("(1.5) can0 123#112233").data == bytes([0x11, 0x22, 0x33])
    with pytest.raises(ValueError, match="odd number of hex digits"):
        parse_candump_line("(1.5) can0 123#1122334")
    with pytest.raises(ValueError, match="not a candump"):
        parse_candump_line("(1.5) can0 123#11 22")
