"""The sunspec driver against a real pymodbus server whose image is built from the official
SunSpec model definitions (pysunspec2's JSON): discovery, model chain, scale factors."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.sunspec import SunSpecDriver, SunSpecOptions
from modbus_server import ServerProcess, sunspec_image, sunspec_model
from test_modbus_tcp import poll_once

from bess_edge.config import DeviceConfig
from bess_edge.model import Quality

COMMON = sunspec_model(1, {"Mn": "Acme Storage", "Md": "ESS-800", "SN": "A1B2C3", "Vr": "2.1"})
BATTERY = {
    "AHRtg": 280, "AHRtg_SF": 0, "WHRtg": 1792, "WHRtg_SF": 1, "WChaDisChaMax_SF": 0,
    "SoC": 873, "SoC_SF": -1, "SoH": 97, "SoH_SF": 0, "NCyc": 123_456, "ChaSt": 4,
    "State": 3, "Evt1": 1 << 10,  # OVER_VOLT_WARNING
    "V": 8001, "V_SF": -1, "CellVMax": 3345, "CellVMin": 3301, "CellV_SF": -3,
    "A": 1234, "A_SF": -1, "W": 9873, "W_SF": 0, "AChaMax": 140, "ADisChaMax": 140, "AMax_SF": 0,
}  # fmt: skip
BANK = {"NStr": 2, "NStrCon": 2, "ModTmpMax": 312, "ModTmpMin": 251, "ModTmp_SF": -1,
        "CellV_SF": -3, "A_SF": -1, "SoC_SF": -1}  # fmt: skip
STRING_GROUP = {"StrNMod": 2, "StrSoC": 870, "StrA": 617, "StrCellVMax": 3340}


def string_model(idx: int, soc: int, evt1: int) -> list[int]:
    values = {"Idx": idx, "NMod": 2, "St": 0b11, "SoC": soc, "SoC_SF": -1, "A": 617, "A_SF": -1,
              "V": 4001, "V_SF": -1, "CellVMax": 3345, "CellVMin": 3301, "CellV_SF": -3,
              "ModTmpMax": 312, "ModTmpMin": 251, "ModTmp_SF": -1, "Evt1": evt1}  # fmt: skip
    modules = [{"ModNCell": 4, "ModCellVMax": 3345, "ModCellVMin": 3301}] * 2
    return sunspec_model(804, values, modules)


def module_model(string_idx: int, module_idx: int, first_mv: int) -> list[int]:
    values = {"StrIdx": string_idx, "ModIdx": module_idx, "NCell": 4, "V": 1330, "V_SF": -2,
              "CellVMax": first_mv + 3, "CellVMin": first_mv, "CellV_SF": -3, "Tmp_SF": -1,
              "CellTmpMax": 260, "CellTmpMin": 250}  # fmt: skip
    cells = [{"CellV": first_mv + i, "CellTmp": 250 + i} for i in range(4)]
    return sunspec_model(805, values, cells)


def vendor_model() -> list[int]:
    return [64_900, 3, 1, 2, 3]  # an unknown vendor model the walk must step over


def storage_device(base: int = 40000, battery: dict | None = None) -> dict:
    models = [
        COMMON,
        vendor_model(),
        sunspec_model(802, battery or BATTERY),
        sunspec_model(803, BANK, [STRING_GROUP, STRING_GROUP]),
        string_model(1, 870, 1 << 2),  # OVER_TEMP_WARNING
        string_model(2, 880, 0),
        # Modules deliberately out of physical order in the chain.
        module_model(1, 2, 3310),
        module_model(1, 1, 3300),
    ]
    return {"units": {"1": {"holding": sunspec_image(models, base)}}}


def make_driver(port: int, **options: object) -> SunSpecDriver:
    opts = {"transport": "tcp", "host": "127.0.0.1", "port": port, "request_timeout_s": 0.5,
            **options}  # fmt: skip
    device = DeviceConfig(id="ess", driver="sunspec", options=opts)
    return SunSpecDriver(device, SunSpecOptions.model_validate(opts))


def test_image_puts_802_soc_where_the_specification_does() -> None:
    # Hand-counted from the 802 point table: ID, L, AHRtg, WHRtg, WChaRteMax, WDisChaRteMax,
    # DisChaRte, SoCMax, SoCMin, SocRsvMax, SoCRsvMin, SoC -> SoC is register 11 of the model.
    assert sunspec_model(802, BATTERY)[11] == 873


def test_sunspec_storage_device_is_discovered_and_decoded_with_scale_factors() -> None:
    with ServerProcess(storage_device()) as server:
        driver = make_driver(server.port)
        reading = asyncio.run(poll_once(driver))
    assert [m.id for m in driver.models] == [1, 64_900, 802, 803, 804, 804, 805, 805]
    assert driver.info == {"Mn": "Acme Storage", "Md": "ESS-800", "Vr": "2.1", "SN": "A1B2C3"}
    assert reading.quality == Quality.OK, reading.quality_notes
    assert reading.pack_voltage_v == pytest.approx(800.1)
    assert reading.pack_current_a == pytest.approx(123.4)
    assert reading.pack_power_w == 9873.0
    assert reading.bms_soc_pct == pytest.approx(87.3)
    assert reading.bms_soh_pct == 97.0
    assert reading.status_flags == 3  # 802 State CONNECTED
    assert reading.fault_flags == (1 << 10) | (1 << 2)  # 802 Evt1 | string 1 Evt1
    # 805 modules in physical order (string 1 module 1, then module 2), 4 cells each.
    np.testing.assert_allclose(
        reading.cell_voltage_v, [3.300, 3.301, 3.302, 3.303, 3.310, 3.311, 3.312, 3.313]
    )
    np.testing.assert_allclose(reading.cell_temperature_c, [25.0, 25.1, 25.2, 25.3] * 2)
    extra = reading.extra
    assert extra["capacity_rating_ah"] == 280.0 and extra["energy_rating_wh"] == 17_920.0
    assert extra["cycle_count"] == 123_456.0
    assert reading.cell_voltage_max_v == pytest.approx(3.345)  # 802 CellVMax: the Reading's own
    assert reading.cell_voltage_min_v == pytest.approx(3.301)
    assert extra["module_temperature_max_c"] == pytest.approx(31.2)
    assert extra["string1_soc_pct"] == pytest.approx(87.0)
    assert extra["string2_soc_pct"] == pytest.approx(88.0)
    assert extra["string2_current_a"] == pytest.approx(61.7)
    assert "depth_of_discharge_pct" not in extra  # not implemented by this device: absent


def test_not_implemented_reading_point_is_flagged_missing() -> None:
    battery = {k: v for k, v in BATTERY.items() if k != "SoC"}  # SoC sent as 0xFFFF
    with ServerProcess(storage_device(battery=battery)) as server:
        reading = asyncio.run(poll_once(make_driver(server.port)))
    assert math.isnan(reading.bms_soc_pct)
    assert Quality.MISSING in reading.quality
    assert any("802:0.SoC" in note for note in reading.quality_notes)
    assert reading.pack_voltage_v == pytest.approx(800.1)


def test_marker_at_register_zero_is_found_when_40000_is_empty() -> None:
    with ServerProcess(storage_device(base=0)) as server:
        reading = asyncio.run(poll_once(make_driver(server.port)))
    assert reading.bms_soc_pct == pytest.approx(87.3)


def test_marker_at_register_zero_is_found_when_40000_never_answers() -> None:
    image = storage_device(base=0)
    image["units"]["1"]["holding"].append([40000, [0, 0]])
    image["silent"] = [[1, "holding", 40000]]  # no exception response, no reply at all
    with ServerProcess(image) as server:
        driver = make_driver(server.port, request_timeout_s=0.3)
        reading = asyncio.run(poll_once(driver))
    assert reading.bms_soc_pct == pytest.approx(87.3)
    assert driver.info["SN"] == "A1B2C3"


def test_marker_at_50000_is_found_when_40000_and_0_never_answer() -> None:
    image = storage_device(base=50000)
    image["units"]["1"]["holding"] += [[0, [0, 0]], [40000, [0, 0]]]
    image["silent"] = [[1, "holding", 40000], [1, "holding", 0]]
    with ServerProcess(image) as server:
        reading = asyncio.run(poll_once(make_driver(server.port, request_timeout_s=0.3)))
    assert reading.bms_soc_pct == pytest.approx(87.3)


def test_device_without_sunspec_marker_is_a_clear_error() -> None:
    with ServerProcess({"units": {"1": {"holding": [[0, [1, 2, 3]]]}}}) as server:
        driver = make_driver(server.port)
        with pytest.raises(DriverError, match="no SunSpec marker 'SunS' at 40000, 0, 50000"):
            asyncio.run(poll_once(driver))


def test_current_disagreeing_with_charge_status_is_flagged_inconsistent() -> None:
    battery = {**BATTERY, "A": -1234}  # ChaSt says CHARGING
    with ServerProcess(storage_device(battery=battery)) as server:
        reading = asyncio.run(poll_once(make_driver(server.port)))
        inverted = asyncio.run(poll_once(make_driver(server.port, invert_current=True)))
    assert Quality.INCONSISTENT in reading.quality
    assert inverted.pack_current_a == pytest.approx(123.4)
    assert Quality.INCONSISTENT not in inverted.quality


def test_chain_without_end_marker_ends_where_the_device_stops_answering() -> None:
    image = storage_device()
    run = image["units"]["1"]["holding"][0]
    run[1] = run[1][:-2]  # drop the 0xFFFF end marker: the next read is an illegal address
    with ServerProcess(image) as server:
        driver = make_driver(server.port)
        reading = asyncio.run(poll_once(driver))
    assert [m.id for m in driver.models][-1] == 805
    assert reading.bms_soc_pct == pytest.approx(87.3)
