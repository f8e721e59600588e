"""Garbage on the CAN bus and odd mappings: what cannot be decoded or believed is null and flagged.

Frames are real python-can messages with the shipped rack DBC (dbc/rack_bms.dbc); the end-to-end
cases go through the CAN driver on python-can's in-process virtual bus.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from bess_edge.drivers.can import CanDriver
from bess_edge.drivers.can_decode import FrameDecoder
from bess_edge.drivers.can_map import DecodeOptions
from can_support import message, rack_device, read_after, unique_channel, virtual_bus

from bess_edge.config import load_config
from bess_edge.model import Quality

STATUS, LIMITS, CELLS = 0x100, 0x101, 0x110  # RACK_Status, RACK_Limits, RACK_CellVoltages


def decoder(**signals: Any) -> FrameDecoder:
    return FrameDecoder.for_options(DecodeOptions(dbc="rack_bms.dbc", signals=signals), "rack-1")


# RACK_Status: PackVoltage 0.1 V/bit, PackCurrent 0.1 A/bit signed, Soc 0.01 %/bit, Soh 0.5 %/bit,
# State. 52.8 V, -12.0 A, 63.75 %, 96.5 %, state 0b101.
GOOD_STATUS = bytes.fromhex("1002 88ff e718 c1 05".replace(" ", ""))


def test_a_signal_mapped_as_a_status_bit_and_as_an_extra_decodes_both_ways():
    d = decoder(
        pack_voltage_v="RACK_Status.PackVoltage",
        bms_state="RACK_Status.State",
        status_flags={"bits": ["RACK_Status.State", "RACK_Status.Soh"]},
    )
    d.feed(message(STATUS, GOOD_STATUS), 1.0)
    r = d.reading("rack-1", 1.5, 0)
    assert d.counters.undecodable == 0
    assert r.quality == Quality.OK, r.quality_notes
    assert r.extra["bms_state"] == 5.0
    assert r.status_flags == 0b11  # both signals non-zero
    assert r.pack_voltage_v == pytest.approx(52.8)


def test_a_frame_that_fails_to_unpack_leaves_its_values_unfresh_and_flags_the_reading():
    d = decoder(
        pack_voltage_v="RACK_Status.PackVoltage",
        fault_flags={"bits": ["RACK_Status.Soh", "RACK_Status.State"]},
    )
    # Eight items that the compiled codec refuses, as it refused the doubly mapped signal.
    d.ingest(STATUS, "garbage!", 1.0)  # type: ignore[arg-type]
    r = d.reading("rack-1", 1.5, 0)
    assert d.counters.undecodable == 1
    assert Quality.DECODE_ERROR in r.quality, r.quality_notes
    assert Quality.MISSING in r.quality  # never decoded: not fresh
    assert r.fault_flags == 0  # not 0b11 from NaN != 0
    assert math.isnan(r.pack_voltage_v)
    # The flag is about frames since the last Reading: the next clean poll is clean.
    d.feed(message(STATUS, GOOD_STATUS), 2.0)
    again = d.reading("rack-1", 2.5, 0)
    assert Quality.DECODE_ERROR not in again.quality, again.quality_notes


def test_a_short_frame_is_flagged_as_a_decode_error_and_old_values_turn_stale():
    d = decoder(pack_voltage_v="RACK_Status.PackVoltage")
    d.feed(message(STATUS, GOOD_STATUS), 1.0)
    d.feed(message(STATUS, GOOD_STATUS[:7]), 9.0)  # 7 bytes: wrong DLC
    r = d.reading("rack-1", 9.5, 0)
    assert d.counters.wrong_dlc == 1
    assert Quality.DECODE_ERROR in r.quality
    assert Quality.STALE in r.quality, "the 7-byte frame must not refresh the 8 s old value"


def test_an_all_ones_frame_is_stored_as_nulls_with_out_of_range_flags():
    d = decoder(
        pack_voltage_v="RACK_Status.PackVoltage",
        bms_soc_pct="RACK_Status.Soc",
        bms_soh_pct="RACK_Status.Soh",
        charge_voltage_limit_v="RACK_Limits.ChargeVoltageLimit",
        cell_voltage_v={"pattern": "RACK_CellVoltages.CellVoltage_{i:03d}", "count": 4},
    )
    d.feed(message(STATUS, b"\xff" * 8), 1.0)
    d.feed(message(LIMITS, b"\xff" * 8), 1.0)
    d.feed(message(CELLS, b"\x00" + b"\xff" * 7), 1.0)  # block 0: 16.383 V cells
    r = d.reading("rack-1", 1.2, 0)
    assert Quality.OUT_OF_RANGE in r.quality
    for name in ("pack_voltage_v", "bms_soc_pct", "bms_soh_pct"):  # 6553.5 V, 655.35 %, 127.5 %
        assert math.isnan(getattr(r, name)), (name, getattr(r, name))
    assert math.isnan(r.extra["charge_voltage_limit_v"])  # 6553.5 V
    assert np.isnan(r.cell_voltage_v).all(), r.cell_voltage_v
    notes = " ".join(r.quality_notes)
    assert "bms_soc_pct=655.35" in notes and "bms_soh_pct=127.5" in notes
    assert "cell_voltage_v: 4 of 4 values outside" in notes


def test_an_extra_cell_voltage_beyond_any_cell_is_null_but_a_real_one_is_kept():
    # The rack DBC has no cell-max signal: ChargeVoltageLimit (0.1 V/bit) stands in for one.
    d = decoder(max_cell_voltage_v="RACK_Limits.ChargeVoltageLimit")  # foxBMS's extra name
    d.feed(message(LIMITS, bytes([0, 0, 0, 0, 100, 0, 0, 0])), 1.0)  # 10.0 V
    bad = d.reading("rack-1", 1.1, 0)
    assert math.isnan(bad.extra["max_cell_voltage_v"])
    assert Quality.OUT_OF_RANGE in bad.quality
    d.feed(message(LIMITS, bytes([0, 0, 0, 0, 36, 0, 0, 0])), 2.0)  # 3.6 V
    good = d.reading("rack-1", 2.1, 0)
    assert good.extra["max_cell_voltage_v"] == pytest.approx(3.6)
    assert good.quality == Quality.OK, good.quality_notes


def test_garbage_on_a_live_bus_reaches_the_reading_as_flagged_nulls(make_config):
    channel = unique_channel("garbage")
    dev = load_config(make_config([rack_device(channel)])).devices[0]
    driver = CanDriver(dev, dev.parsed_options)
    wire = [message(STATUS, b"\xff" * 8), message(STATUS, b"\xff" * 5)]
    with virtual_bus(channel) as tx:
        r = asyncio.run(read_after(driver, tx, wire, until=lambda: driver.counters.frames >= 2))
    assert math.isnan(r.bms_soc_pct) and math.isnan(r.bms_soh_pct)
    assert Quality.OUT_OF_RANGE in r.quality and Quality.DECODE_ERROR in r.quality
