"""The modbus driver against a real pymodbus server in another process, over TCP on loopback."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.modbus import ModbusDriver, ModbusOptions
from bess_edge.drivers.modbus_transport import _CONNECTIONS
from modbus_server import ServerProcess, encode

from bess_edge.config import DeviceConfig
from bess_edge.model import Quality

CELLS_MV = [3301 + i for i in range(16)]


def generic_16s_image(cells_mv: list[int] = CELLS_MV, **overrides: list[int]) -> list[list]:
    """Holding registers of the shipped generic-16s-example map, as the BMS would hold them."""
    regs = {
        0x0000: cells_mv,
        0x0010: [v for t in (25.3, 24.8, -5.0, 30.1) for v in encode(round(t * 10), "s16")],
        0x0014: encode(53_012, "u32", "little"),  # mV
        0x0016: encode(-12_345, "s32", "little"),  # mA: discharging
        0x0018: [87],
        0x0019: [96],
        0x001A: [0b011],
        0x001B: encode(0x0001_0004, "u32", "little"),
        0x001D: [412],
        0x001E: encode(87_250, "u32", "little"),  # mAh
        0x0020: encode(412, "s16"),
        0x0100: encode("JK16S-000042".ljust(20, "\0"), "string"),
        **{int(k, 0): v for k, v in overrides.items()},
    }
    return [[a, v] for a, v in regs.items()]


def make_driver(options: dict, device_id: str = "bms1") -> ModbusDriver:
    device = DeviceConfig(id=device_id, driver="modbus", options=options)
    return ModbusDriver(device, ModbusOptions.model_validate(options))


def tcp_options(port: int, **extra: object) -> dict:
    return {
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "map": "generic-16s-example",
        "request_timeout_s": 0.5,
        **extra,
    }


async def poll_once(driver: ModbusDriver):  # type: ignore[no-untyped-def]
    await driver.open()
    try:
        return await driver.read()
    finally:
        await driver.close()


@pytest.fixture
def generic_server():
    with ServerProcess({"units": {"1": {"holding": generic_16s_image()}}}) as server:
        yield server


def test_generic_16s_map_decodes_into_reading_in_si_units(generic_server: ServerProcess) -> None:
    driver = make_driver(tcp_options(generic_server.port))
    reading = asyncio.run(poll_once(driver))
    assert reading.quality == Quality.OK, reading.quality_notes
    np.testing.assert_array_equal(reading.cell_voltage_v, np.array(CELLS_MV) / 1000.0)
    np.testing.assert_allclose(reading.cell_temperature_c, [25.3, 24.8, -5.0, 30.1])
    assert reading.pack_voltage_v == pytest.approx(53.012)
    assert reading.pack_current_a == pytest.approx(-12.345)  # discharging stays negative
    assert reading.pack_power_w == pytest.approx(53.012 * -12.345)
    assert (reading.bms_soc_pct, reading.bms_soh_pct) == (87.0, 96.0)
    assert reading.status_flags == 0b011
    assert reading.fault_flags == 0x0001_0004
    assert reading.extra == pytest.approx(
        {"cycle_count": 412, "remaining_capacity_ah": 87.25, "mosfet_temperature_c": 41.2}
    )
    assert driver.info == {"serial_number": "JK16S-000042"}


def test_rack_map_converts_kelvin_and_inverts_discharge_current() -> None:
    image = {
        "units": {
            "3": {
                "input": [
                    [0x1000, [*encode(80012, "u32"), 1500, 873, 991, 2, 0, 0, 1000, 1200, 57]],
                    [0x1100, [3280] * 47 + [3302]],
                    [0x1200, [2981] * 11 + [3031]],  # 0.1 K
                    [0x1800, encode("RACK-HV1".ljust(16, "\0"), "string")],
                    [0x1808, encode("SN0001".ljust(16, "\0"), "string")],
                ]
            }
        }
    }
    with ServerProcess(image) as server:
        driver = make_driver(tcp_options(server.port, map="rack-hv-example", unit_id=3))
        reading = asyncio.run(poll_once(driver))
    assert reading.quality == Quality.OK, reading.quality_notes
    assert reading.pack_voltage_v == pytest.approx(800.12)
    assert reading.pack_current_a == pytest.approx(-150.0)  # 150 A discharge, sent as +1500
    assert reading.bms_soc_pct == pytest.approx(87.3)
    assert reading.cell_count == 48
    assert reading.cell_voltage_v[-1] == pytest.approx(3.302)
    np.testing.assert_allclose(reading.cell_temperature_c[[0, -1]], [24.95, 29.95])
    assert reading.extra["max_charge_current_a"] == pytest.approx(100.0)
    assert driver.info == {"model": "RACK-HV1", "serial_number": "SN0001"}


def test_one_unimplemented_register_does_not_blank_the_device() -> None:
    image = generic_16s_image()
    del image[4]  # 0x0018 SoC: not in the device, answers ILLEGAL DATA ADDRESS
    with ServerProcess({"units": {"1": {"holding": image}}}) as server:
        driver = make_driver(tcp_options(server.port))
        first = asyncio.run(poll_once(driver))
        blocks_after_split = list(driver._blocks)
        second = asyncio.run(poll_once(driver))
    for reading in (first, second):
        assert math.isnan(reading.bms_soc_pct)
        assert Quality.PARTIAL in reading.quality and Quality.MISSING in reading.quality
        assert reading.bms_soh_pct == 96.0
        np.testing.assert_array_equal(reading.cell_voltage_v, np.array(CELLS_MV) / 1000.0)
        assert any("illegal data address" in n for n in reading.quality_notes)
    # The split plan is remembered: the bad register is read on its own from then on.
    assert any(b.address == 0x0018 and b.count == 1 for b in blocks_after_split)
    assert driver._blocks == blocks_after_split


def test_identity_registers_refused_leave_info_empty_and_are_flagged_but_poll_works() -> None:
    image = {
        "units": {"1": {"holding": generic_16s_image()}},
        "exceptions": [[1, "holding", 0x0100, 4]],  # server device failure on the serial number
    }
    with ServerProcess(image) as server:
        driver = make_driver(tcp_options(server.port))
        reading = asyncio.run(poll_once(driver))
    assert driver.info == {}
    assert reading.quality == Quality.PARTIAL and reading.bms_soc_pct == 87.0
    assert any("identity" in note for note in reading.quality_notes), reading.quality_notes


def test_device_refusing_every_register_fails_the_poll() -> None:
    image = {
        "units": {"1": {"holding": generic_16s_image()}},
        "exceptions": [[1, "holding", 0x0000, 4]],  # the one polled block: device failure
    }
    with ServerProcess(image) as server:
        driver = make_driver(tcp_options(server.port))
        with pytest.raises(DriverError, match="server device failure"):
            asyncio.run(poll_once(driver))


def test_exception_on_one_block_of_the_poll_flags_partial() -> None:
    image = generic_16s_image()
    image.append([0x0040, [1, 2]])
    with ServerProcess(
        {"units": {"1": {"holding": image}}, "exceptions": [[1, "holding", 0x0041, 6]]}
    ) as server:
        options = tcp_options(server.port, map=str(write_map_with_extra_block()))
        reading = asyncio.run(poll_once(make_driver(options)))
    assert Quality.PARTIAL in reading.quality
    assert any("server device busy" in n for n in reading.quality_notes)
    assert math.isnan(reading.extra["far_value"])
    assert reading.bms_soc_pct == 87.0


def write_map_with_extra_block():  # type: ignore[no-untyped-def]
    from pathlib import Path
    from tempfile import mkdtemp

    from bess_edge.drivers.register_map import map_path

    text = map_path("generic-16s-example").read_text()
    path = Path(mkdtemp()) / "with-far.toml"
    path.write_text(text + "\n[extra.far_value]\naddress = 0x0041\n")
    return path


def test_garbage_values_are_flagged_not_fatal() -> None:
    cells = list(CELLS_MV)
    cells[5] = 9_000  # 9 V on an LFP cell: a broken sense line, not a measurement
    image = generic_16s_image(cells, **{"0x0018": [250]})  # SoC 250 %
    with ServerProcess({"units": {"1": {"holding": image}}}) as server:
        reading = asyncio.run(poll_once(make_driver(tcp_options(server.port))))
    assert Quality.OUT_OF_RANGE in reading.quality
    assert math.isnan(reading.cell_voltage_v[5]) and math.isnan(reading.bms_soc_pct)
    assert reading.cell_voltage_v[4] == pytest.approx(3.305)
    assert any("cell_voltage_v" in n and "1 of 16" in n for n in reading.quality_notes)


def seconds_to_fail_once_frozen(driver: ModbusDriver, server: ServerProcess) -> float:
    """Poll once, freeze the server (SIGSTOP), and time how long the next poll takes to fail."""

    async def scenario() -> float:
        await driver.open()
        assert (await driver.read()).quality == Quality.OK
        server.pause()
        started = time.monotonic()
        try:
            with pytest.raises(DriverError):
                await driver.read()
            return time.monotonic() - started
        finally:
            server.resume()
            await driver.close()

    return asyncio.run(scenario())


def test_server_stops_answering_raises_within_the_timeout(generic_server: ServerProcess) -> None:
    driver = make_driver(tcp_options(generic_server.port, request_timeout_s=0.3))
    elapsed = seconds_to_fail_once_frozen(driver, generic_server)
    assert elapsed < 3.0  # 0.3 s timeout; generous margin for a loaded box


def test_device_comes_back_after_a_restart(generic_server: ServerProcess) -> None:
    async def scenario() -> None:
        driver = make_driver(tcp_options(generic_server.port))
        await driver.open()
        await driver.read()
        generic_server.stop()
        with pytest.raises(DriverError):
            await driver.read()
        generic_server.start()
        await driver.open()  # what the poll task does after its back-off
        assert (await driver.read()).bms_soc_pct == 87.0
        await driver.close()

    asyncio.run(scenario())


def test_unreachable_device_raises_from_open() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    driver = make_driver(tcp_options(port))
    with pytest.raises(DriverError, match="cannot connect"):
        asyncio.run(poll_once(driver))


def test_two_unit_ids_share_one_tcp_gateway_connection() -> None:
    other = [3400 - i for i in range(16)]
    image = {
        "units": {
            "1": {"holding": generic_16s_image()},
            "2": {"holding": generic_16s_image(other)},
        }
    }
    with ServerProcess(image) as server:
        first = make_driver(tcp_options(server.port, unit_id=1), "bms1")
        second = make_driver(tcp_options(server.port, unit_id=2), "bms2")

        async def scenario():  # type: ignore[no-untyped-def]
            await first.open()
            await second.open()
            assert first._conn is second._conn
            readings = await asyncio.gather(first.read(), second.read())
            await first.close()
            assert second._conn is not None and second._conn.client.connected
            await second.close()
            return readings

        one, two = asyncio.run(scenario())
    assert not _CONNECTIONS
    np.testing.assert_array_equal(one.cell_voltage_v, np.array(CELLS_MV) / 1000.0)
    np.testing.assert_array_equal(two.cell_voltage_v, np.array(other) / 1000.0)


def test_poll_cancelled_by_its_timeout_leaves_the_other_unit_on_the_gateway_undisturbed() -> None:
    other = [3400 - i for i in range(16)]
    image = {
        "units": {
            "1": {"holding": generic_16s_image()},
            "2": {"holding": generic_16s_image(other)},
        },
        "silent": [[2, "holding", 0]],  # the gateway drops unit 2's measurement reads
    }
    with ServerProcess(image) as server:
        first = make_driver(tcp_options(server.port, unit_id=1), "bms1")
        second = make_driver(tcp_options(server.port, unit_id=2), "bms2")

        async def scenario():  # type: ignore[no-untyped-def]
            await first.open()
            await second.open()
            readings = []
            for _ in range(6):
                # As the poll task does: the hung poll is cancelled by its timeout while its
                # request is on the shared connection, and the other unit polls meanwhile.
                hung = asyncio.create_task(asyncio.wait_for(second.read(), 0.2))
                await asyncio.sleep(0.05)
                readings.append(await asyncio.wait_for(first.read(), 2.0))
                with pytest.raises(TimeoutError):
                    await hung
                readings.append(await asyncio.wait_for(first.read(), 2.0))
            await first.close()
            await second.close()
            return readings

        readings = asyncio.run(scenario())
    assert not _CONNECTIONS
    for reading in readings:
        assert reading.quality == Quality.OK
        np.testing.assert_array_equal(reading.cell_voltage_v, np.array(CELLS_MV) / 1000.0)


def test_device_answering_random_bytes_fails_the_poll_promptly() -> None:
    with ServerProcess({"garbage": "random"}) as server:
        driver = make_driver(tcp_options(server.port, request_timeout_s=0.3))
        started = time.monotonic()
        with pytest.raises(DriverError):
            asyncio.run(poll_once(driver))
        elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert not _CONNECTIONS  # the failed open released its connection


def test_short_reply_on_one_block_flags_partial_and_keeps_the_others() -> None:
    with ServerProcess({"garbage": "short"}) as server:  # reads of > 40 registers come up short
        driver = make_driver(tcp_options(server.port, map="rack-hv-example"))
        reading = asyncio.run(poll_once(driver))
    assert Quality.PARTIAL in reading.quality and Quality.DECODE_ERROR in reading.quality
    assert any("short read (47 of 48 registers)" in n for n in reading.quality_notes)
    assert np.isnan(reading.cell_voltage_v).all()  # the 48-cell block is unusable
    assert reading.pack_voltage_v == 0.0 and reading.bms_soc_pct == 0.0  # the rest was read
