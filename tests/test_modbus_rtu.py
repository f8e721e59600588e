"""The modbus driver over Modbus RTU on a pseudo-terminal pair (a null-modem cable made by socat),
against a real pymodbus serial server in another process."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.modbus_transport import _CONNECTIONS
from modbus_server import ServerProcess, pty_pair
from test_modbus_tcp import CELLS_MV, generic_16s_image, make_driver, seconds_to_fail_once_frozen

from bess_edge.model import Quality

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")

OTHER_MV = [3400 - i for i in range(16)]


def rtu_options(port: str, unit_id: int = 1) -> dict:
    return {
        "transport": "rtu",
        "serial_port": port,
        "baudrate": 115200,
        "parity": "N",
        "unit_id": unit_id,
        "map": "generic-16s-example",
        "request_timeout_s": 0.5,
    }


@pytest.fixture
def rtu_bus():
    """Two BMS (unit ids 1 and 2) on one serial line; yields the client end of the line."""
    image = {
        "units": {
            "1": {"holding": generic_16s_image()},
            "2": {"holding": generic_16s_image(OTHER_MV)},
        }
    }
    with pty_pair() as (server_end, client_end), ServerProcess(image, rtu=server_end):
        yield client_end


def test_rtu_over_a_serial_line_decodes_exactly(rtu_bus: str) -> None:
    driver = make_driver(rtu_options(rtu_bus))

    async def scenario():  # type: ignore[no-untyped-def]
        await driver.open()
        try:
            return await driver.read()
        finally:
            await driver.close()

    reading = asyncio.run(scenario())
    assert reading.quality == Quality.OK, reading.quality_notes
    np.testing.assert_array_equal(reading.cell_voltage_v, np.array(CELLS_MV) / 1000.0)
    assert reading.pack_current_a == pytest.approx(-12.345)
    assert reading.fault_flags == 0x0001_0004
    assert driver.info == {"serial_number": "JK16S-000042"}


def test_two_devices_on_one_bus_share_the_port_and_take_turns(rtu_bus: str) -> None:
    first = make_driver(rtu_options(rtu_bus, 1), "bms1")
    second = make_driver(rtu_options(rtu_bus, 2), "bms2")

    async def scenario():  # type: ignore[no-untyped-def]
        await first.open()
        await second.open()
        assert first._conn is second._conn  # one serial port, one client, one bus lock
        polls = [d.read() for _ in range(5) for d in (first, second)]
        readings = await asyncio.gather(*polls)
        await first.close()
        await second.close()
        return readings

    readings = asyncio.run(scenario())
    assert not _CONNECTIONS
    for i, reading in enumerate(readings):
        expected = CELLS_MV if i % 2 == 0 else OTHER_MV
        assert reading.quality == Quality.OK, reading.quality_notes
        np.testing.assert_array_equal(reading.cell_voltage_v, np.array(expected) / 1000.0)


def test_silent_rtu_device_raises_within_the_timeout() -> None:
    image = {"units": {"1": {"holding": generic_16s_image()}}}
    with pty_pair() as (server_end, client_end), ServerProcess(image, rtu=server_end) as server:
        elapsed = seconds_to_fail_once_frozen(make_driver(rtu_options(client_end)), server)
    assert elapsed < 3.0  # 0.5 s timeout; generous margin for a loaded box


def test_replies_with_bad_crc_fail_the_poll_promptly() -> None:
    with (
        pty_pair() as (server_end, client_end),
        ServerProcess({"garbage": "bad_crc"}, rtu=server_end),
    ):
        driver = make_driver(rtu_options(client_end))
        started = time.monotonic()
        with pytest.raises(DriverError):
            asyncio.run(driver.open())
        elapsed = time.monotonic() - started
    assert elapsed < 3.0  # 0.5 s timeout: a frame failing its CRC is dropped, never decoded
    assert not _CONNECTIONS
