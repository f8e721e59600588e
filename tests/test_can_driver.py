"""The CAN driver on python-can's in-process ``virtual`` bus: real frames, real DBCs, real decode.

A sender on the same virtual channel plays the BMS: frames are encoded from a simulated string
with the same DBC and mapping, so every test states what was sent and what must arrive.
"""

from __future__ import annotations

import asyncio
import math
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.can import CanDriver
from bess_edge.drivers.can_decode import FrameDecoder, valid_range
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.can_map import CanOptions, Slot
from bess_edge.drivers.sim import SimOptions, SimulatedString
from can_support import (
    message,
    messages,
    rack_device,
    read_after,
    send,
    settle,
    unique_channel,
    virtual_bus,
    wait_for,
)
from conftest import REPO
from thirdparty import FOXBMS

from bess_edge.config import ConfigError, load_config
from bess_edge.model import Quality, Reading


@pytest.fixture
def channel() -> str:
    return unique_channel("test")


@pytest.fixture
def sender(channel: str) -> Iterator[can.BusABC]:
    with virtual_bus(channel) as bus:
        yield bus


@pytest.fixture
def make_driver(make_config: Callable[..., Path], channel: str) -> Callable[..., CanDriver]:
    def make(**options: Any) -> CanDriver:
        device = load_config(make_config([rack_device(channel, options=options)])).devices[0]
        return CanDriver(device, device.parsed_options)

    return make


def simulated_rack(seed: int = 3) -> Reading:
    """A 384-cell rack's state, as its BMS would measure it."""
    device = load_config(REPO / "config" / "can-rack.toml").devices[0]
    sim = SimulatedString(
        SimOptions(
            cells=384, temperature_sensors=192, profile="constant", current_a=-42.0, seed=seed
        ),
        device.chemistry_preset(),
        device.capacity_ah,
    )
    sim.advance(30)
    reading = sim.measure(0, "rack-1")
    reading.bms_soh_pct = 96.5
    reading.fault_flags = 0b1010
    reading.extra["max_charge_current_a"] = 140.0
    return reading


def test_rack_frames_arrive_as_full_cell_arrays_within_dbc_resolution(make_driver, sender):
    driver = make_driver()
    sent = simulated_rack()
    encoder = FrameEncoder(driver.options.slots())
    got = asyncio.run(read_after(driver, sender, messages(encoder.frames(sent))))
    assert got.quality == Quality.OK, got.quality_notes
    assert got.cell_voltage_v.size == 384 and got.cell_temperature_c.size == 192
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)  # 1 mV
    np.testing.assert_allclose(got.cell_temperature_c, sent.cell_temperature_c, atol=0.125)
    assert got.pack_voltage_v == pytest.approx(sent.pack_voltage_v, abs=0.05)
    assert got.pack_current_a == pytest.approx(sent.pack_current_a, abs=0.05)
    assert got.pack_current_a < 0  # discharging stays negative
    assert got.bms_soc_pct == pytest.approx(sent.bms_soc_pct, abs=0.005)
    assert got.bms_soh_pct == pytest.approx(96.5)
    assert got.fault_flags == 0b1010
    assert got.extra["max_charge_current_a"] == pytest.approx(140.0)
    assert got.pack_power_w == pytest.approx(got.pack_voltage_v * got.pack_current_a)


def test_invert_current_makes_a_discharge_positive_bms_read_negative(make_driver, sender):
    driver = make_driver(invert_current=True)
    sent = simulated_rack()
    # A BMS with the opposite convention puts +42 A on the wire while discharging.
    wire = messages(FrameEncoder(driver.options.slots()).frames(sent))
    got = asyncio.run(read_after(driver, sender, wire))
    assert got.pack_current_a == pytest.approx(-sent.pack_current_a, abs=0.05)


def test_signal_not_refreshed_within_timeout_is_flagged_stale(make_driver, sender):
    driver = make_driver(signal_timeout_s=0.4)
    sent = simulated_rack()

    async def scenario() -> Reading:
        await driver.open()
        try:
            n = send(sender, driver, sent)
            await settle(driver, n)
            # Only the status frame keeps coming; the cell frames stop.
            for _ in range(8):
                await asyncio.sleep(0.1)
                n += send(sender, driver, sent, only={0x100})
            await settle(driver, n)
            return await driver.read()
        finally:
            await driver.close()

    got = asyncio.run(scenario())
    assert Quality.STALE in got.quality
    assert any(note.startswith("cell_voltage_v: 384 of 384") for note in got.quality_notes)
    assert not any(note.startswith("pack_voltage_v") for note in got.quality_notes)
    # Stale values are kept (flagged), not blanked.
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)


def test_mapped_signal_never_received_is_flagged_missing(make_driver, sender):
    driver = make_driver()
    frames = FrameEncoder(driver.options.slots()).frames(simulated_rack())
    got = asyncio.run(read_after(driver, sender, messages(frames, only={0x100})))
    assert Quality.MISSING in got.quality
    assert np.isnan(got.cell_voltage_v).all() and got.cell_voltage_v.size == 384
    assert not np.isnan(got.pack_voltage_v)


def test_bus_silent_longer_than_timeout_makes_read_raise(make_driver, sender):
    driver = make_driver(signal_timeout_s=0.3)

    async def scenario() -> None:
        await driver.open()
        try:
            n = send(sender, driver, simulated_rack())
            await settle(driver, n)
            await driver.read()  # fresh: fine
            await asyncio.sleep(0.5)
            with pytest.raises(DriverError, match="no CAN frame for"):
                await driver.read()
        finally:
            await driver.close()

    asyncio.run(scenario())


def test_no_traffic_at_all_after_open_makes_read_raise(make_driver):
    driver = make_driver(signal_timeout_s=0.3)

    async def scenario() -> None:
        await driver.open()
        try:
            with pytest.raises(DriverError, match="no CAN frame"):
                await driver.read()
        finally:
            await driver.close()

    asyncio.run(scenario())


def test_malformed_traffic_is_counted_and_good_frames_still_decode(make_driver, sender):
    driver = make_driver()
    sent = simulated_rack()
    rng = np.random.default_rng(5)

    def raw(frame_id: int, data: bytes) -> None:
        sender.send(message(frame_id, data))

    async def scenario() -> Reading:
        await driver.open()
        try:
            n = send(sender, driver, sent)
            for _ in range(20):
                raw(0x100, bytes(3))  # wrong DLC on a mapped message
                raw(0x7A5, bytes(8))  # an id the DBC does not know
                raw(0x110, bytes([200, *rng.integers(0, 256, 7).tolist()]))  # mux id 200
                raw(0x111, bytes(rng.integers(0, 256, 8).tolist()))  # random bytes
            sender.send(can.Message(arbitration_id=0x040, is_error_frame=True, dlc=8))
            sender.send(can.Message(arbitration_id=0x004, is_error_frame=True, dlc=8))
            total = n + 80 + send(sender, driver, sent)
            await wait_for(lambda: driver.counters.frames >= total)
            return await driver.read()
        finally:
            await driver.close()

    got = asyncio.run(scenario())
    c = driver.counters
    assert c.wrong_dlc == 20
    assert c.unknown_id == 20
    assert c.undecodable >= 20  # mux id 200 is not in the DBC; random 0x111 mostly neither
    assert c.error_frames == 2 and c.bus_off == 1
    # The last good cycle wins: the random temperature blocks were overwritten by good ones.
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)
    np.testing.assert_allclose(got.cell_temperature_c, sent.cell_temperature_c, atol=0.125)
    assert got.pack_voltage_v == pytest.approx(sent.pack_voltage_v, abs=0.05)


def test_burst_far_above_line_rate_loses_no_frame(make_driver, sender):
    """1 Mbit/s carries at most ~7,400 8-byte frames/s; this sends as fast as the CPU can."""
    driver = make_driver()
    sent = simulated_rack()
    wire = messages(FrameEncoder(driver.options.slots()).frames(sent))
    cycles = 300  # 39,300 frames

    async def scenario() -> tuple[float, Reading]:
        await driver.open()
        try:
            started = time.monotonic()
            for _ in range(cycles):
                for m in wire:
                    sender.send(m)
            rate = cycles * len(wire) / (time.monotonic() - started)
            await settle(driver, cycles * len(wire), timeout_s=60)
            return rate, await driver.read()
        finally:
            await driver.close()

    rate, got = asyncio.run(scenario())
    print(f"burst sent at {rate:,.0f} frames/s")
    assert driver.counters.frames == driver.counters.decoded == cycles * len(wire)
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)


def test_driver_reopens_after_close_and_decodes_again(make_driver, sender):
    driver = make_driver()
    sent = simulated_rack()

    async def scenario() -> Reading:
        await driver.open()
        n = send(sender, driver, sent)
        await settle(driver, n)
        await driver.close()
        await driver.close()  # safe twice
        await driver.open()
        try:
            n += send(sender, driver, sent)
            await settle(driver, n)
            return await driver.read()
        finally:
            await driver.close()

    got = asyncio.run(scenario())
    assert driver.counters.reopens == 1
    assert got.quality == Quality.OK


def test_mapping_typo_is_a_config_error_naming_the_key(make_config, channel):
    device = rack_device(channel)
    device["options"]["signals"]["pack_voltage_v"] = "RACK_Status.PackVoltag"
    with pytest.raises(ConfigError) as err:
        load_config(make_config([device]))
    assert "signals.pack_voltage_v" in str(err.value) and "PackVoltag" in str(err.value)


def test_signal_unit_that_does_not_fit_the_field_is_a_config_error(make_config, channel):
    device = rack_device(channel)
    device["options"]["signals"]["pack_current_a"] = "RACK_Status.PackVoltage"
    with pytest.raises(ConfigError, match="is in V, which does not fit"):
        load_config(make_config([device]))


def test_unknown_dbc_name_lists_the_shipped_ones(make_config, channel):
    device = rack_device(channel, options={"dbc": "nosuch.dbc"})
    with pytest.raises(ConfigError, match=r"pylontech_lv\.dbc") as err:
        load_config(make_config([device]))
    assert "devices[0].options" in str(err.value)


FOXBMS_DBC = FOXBMS / "foxbms.dbc"


@pytest.mark.parametrize("config", ["can-rack.toml", "can-pylontech.toml", "can-foxbms.toml"])
def test_decoded_values_equal_cantools_message_decode_on_random_payloads(config):
    """The decoder runs cantools' compiled codec on the mapped signals only; whatever the
    payload, each value must be what ``Message.decode`` gives, through the mapping."""
    device = tomllib.loads((REPO / "config" / config).read_text())["devices"][0]
    if config == "can-foxbms.toml":
        if not FOXBMS_DBC.is_file():
            pytest.skip(f"foxBMS DBC not found at {FOXBMS_DBC}")
        device["options"]["dbc"] = str(FOXBMS_DBC)
    options = CanOptions.model_validate(device["options"])
    decoder = FrameDecoder.for_options(options, "dev")
    rng = np.random.default_rng(17)
    checked = 0
    by_id = {slot.message.frame_id: slot.message for slot in options.slots()}
    for dbc_message in by_id.values():
        slots = [s for s in decoder.slots if s.message is dbc_message]
        for _ in range(200):
            payload = bytes(rng.integers(0, 256, dbc_message.length).tolist())
            try:
                expected = dbc_message.decode(payload, decode_choices=False)
            except Exception:  # a multiplexer id the DBC does not define
                before = decoder.counters.undecodable
                decoder.ingest(dbc_message.frame_id, payload, 0.0)
                assert decoder.counters.undecodable == before + 1
                continue
            decoder.ingest(dbc_message.frame_id, payload, 0.0)
            reading = decoder.reading("dev", 0.0, 0)
            for slot in slots:
                if slot.signal.name in expected:
                    want = expected[slot.signal.name]
                    si = want * slot.factor + slot.offset if slot.kind != "bit" else want != 0
                    lo, hi = valid_range(slot)
                    if slot.kind != "bit" and not lo <= si <= hi:
                        si = math.nan  # implausible values are null (and flagged)
                    assert mapped_value(reading, slot, options.invert_current) == pytest.approx(
                        si, nan_ok=True
                    ), slot
                    checked += 1
    assert checked > 1000


def mapped_value(reading: Reading, slot: Slot, invert_current: bool) -> float:
    value = getattr(reading, slot.field, reading.extra.get(slot.field))
    if slot.kind == "array":
        return float(value[slot.index])
    if slot.kind == "bit":
        return bool((value >> slot.index) & 1)
    if invert_current and slot.field in ("pack_current_a", "pack_power_w"):
        return -value
    return value
