"""End to end: the daemon polls real pymodbus server processes and commits what it read."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import read_db, wait_until
from modbus_server import ServerProcess
from test_modbus_tcp import CELLS_MV, generic_16s_image
from test_sunspec_discovery import BATTERY, storage_device

from bess_edge.model import Quality
from bess_edge.storage.cells import unpack_cells


def modbus_device(device_id: str, driver: str, port: int, **options: object) -> dict:
    return {
        "id": device_id,
        "driver": driver,
        "poll_interval_s": 0.2,
        "timeout_s": 0.8,
        "max_backoff_s": 1.0,
        "failures_before_lost": 2,
        "chemistry": "lfp",
        "capacity_ah": 280.0,
        "options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 0.3, **options},
    }


def latest(db, device: str):  # type: ignore[no-untyped-def]
    rows = read_db(
        db,
        "SELECT pack_voltage_v, pack_current_a, bms_soc_pct, quality, cell_voltage_v, "
        "cell_temperature_c, extra, fault_flags, quality_notes FROM samples WHERE device = ? "
        "ORDER BY seq DESC LIMIT 1",
        device,
    )
    return rows[0] if rows else None


def test_sunspec_device_is_discovered_and_decoded_by_the_daemon_into_sqlite(
    make_config, daemon, tmp_path
):
    db = tmp_path / "bess-edge.db"
    # The pack voltage matches its 8 cells, so diagnostics' consistency check stays quiet.
    battery = {**BATTERY, "V": 265}
    with ServerProcess(storage_device(battery=battery)) as server:
        config = make_config(devices=[modbus_device("ess", "sunspec", server.port)])
        proc = daemon(config)
        row = wait_until(lambda: latest(db, "ess"), timeout=30)
        assert proc.stop() == 0
    voltage, current, soc, quality, cells_v, cells_t, extra, fault_flags, notes = row
    assert voltage == pytest.approx(26.5)
    assert current == pytest.approx(123.4)
    assert soc == pytest.approx(87.3)
    assert quality == Quality.OK, notes
    assert fault_flags == (1 << 10) | (1 << 2)
    expected_v = [3.300, 3.301, 3.302, 3.303, 3.310, 3.311, 3.312, 3.313]
    np.testing.assert_allclose(unpack_cells(cells_v), expected_v, atol=1e-6)
    np.testing.assert_allclose(unpack_cells(cells_t), [25.0, 25.1, 25.2, 25.3] * 2, atol=1e-5)
    assert json.loads(extra)["string2_soc_pct"] == pytest.approx(88.0)


def test_silent_modbus_device_goes_comms_lost_and_recovers_without_delaying_another(
    make_config, daemon, tmp_path
):
    db = tmp_path / "bess-edge.db"
    image = {"units": {"1": {"holding": generic_16s_image()}}}
    with ServerProcess(image) as flaky_server, ServerProcess(image) as steady_server:
        config = make_config(
            devices=[
                modbus_device("flaky", "modbus", flaky_server.port, map="generic-16s-example"),
                modbus_device("steady", "modbus", steady_server.port, map="generic-16s-example"),
            ]
        )
        proc = daemon(config)
        wait_until(lambda: latest(db, "flaky") and latest(db, "steady"), timeout=30)
        flaky_server.pause()  # the BMS hangs: the TCP connection stays up, nothing answers
        paused_at_ms = time.time() * 1000
        wait_until(
            lambda: read_db(
                db, "SELECT 1 FROM alerts WHERE device = 'flaky' AND rule = 'comms_lost'"
            ),
            timeout=20,
        )
        time.sleep(2.0)  # several back-off rounds of the flaky device
        flaky_server.resume()
        wait_until(
            lambda: read_db(
                db,
                "SELECT 1 FROM alerts WHERE device = 'flaky' AND rule = 'comms_lost' "
                "AND state = 'cleared'",
            ),
            timeout=20,
        )
        resumed = wait_until(
            lambda: read_db(
                db, "SELECT count(*) FROM samples WHERE device = 'flaky' AND ts_ms > ?",
                time.time() * 1000 - 500,
            )[0][0],
            timeout=10,
        )  # fmt: skip
        assert proc.alive()
        assert proc.stop() == 0
    assert resumed > 0
    stamps = [
        r[0]
        for r in read_db(
            db, "SELECT ts_ms FROM samples WHERE device = 'steady' AND ts_ms > ? ORDER BY seq",
            paused_at_ms,
        )
    ]  # fmt: skip
    gaps_s = np.diff(stamps) / 1000.0
    print(f"steady device during the outage: {len(stamps)} polls, max gap {gaps_s.max():.3f} s")
    assert len(stamps) >= 10
    assert gaps_s.max() < 0.7  # interval 0.2 s; the flaky device's 0.8 s timeouts never show
    assert dict(read_db(db, "SELECT device, comms FROM device_state"))["flaky"] == "ok"


def test_garbage_from_a_modbus_device_is_stored_flagged_and_the_daemon_keeps_running(
    make_config, daemon, tmp_path
):
    db = tmp_path / "bess-edge.db"
    cells = list(CELLS_MV)
    cells[3] = 65_535  # a sense line reading full scale
    image = {"units": {"1": {"holding": generic_16s_image(cells, **{"0x0018": [300]})}}}
    with ServerProcess(image) as server:
        config = make_config(
            devices=[modbus_device("bms", "modbus", server.port, map="generic-16s-example")]
        )
        proc = daemon(config)
        row = wait_until(lambda: latest(db, "bms"), timeout=30)
        time.sleep(0.5)
        assert proc.alive()
        assert proc.stop() == 0
    quality = Quality(row[3])
    assert Quality.OUT_OF_RANGE in quality
    assert row[2] is None or np.isnan(row[2])  # SoC 300 % is not stored as a value
    assert np.isnan(unpack_cells(row[4])[3])
