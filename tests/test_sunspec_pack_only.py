"""A SunSpec battery with model 802 only: pack values and cell extremes, no per-cell voltages.

The case found on an unfamiliar device: a 16S LFP pack at 53.18 V whose BMS says 63.75 %. Its
CellVMax/CellVMin went to ``extra`` while the Reading's own fields stayed null, the diagnostics
guessed 17 series cells from the nominal voltage, estimated 5 % and raised a false soc-low.
A real pymodbus server serves the registers; the diagnostics and alerts are the daemon's own.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from bess_edge.drivers.sunspec import SunSpecDriver, SunSpecOptions
from modbus_server import ServerProcess, sunspec_image, sunspec_model
from test_modbus_tcp import poll_once

from bess_edge.alerts.engine import AlertEngine
from bess_edge.chemistry import LFP
from bess_edge.cli.status import collect, render
from bess_edge.config import DeviceConfig, ThresholdRule, load_config
from bess_edge.diagnostics import Diagnostician
from bess_edge.model import Quality, Reading
from bess_edge.store import Cycle, Store
from bess_edge.sync.consumer import load_validators
from bess_edge.sync.payload import Encoder

COMMON = sunspec_model(1, {"Mn": "Acme Storage", "Md": "LV-16S", "SN": "P-0042", "Vr": "1.7"})
PACK = {
    "AHRtg": 100, "AHRtg_SF": 0, "SoC": 6375, "SoC_SF": -2, "SoH": 98, "SoH_SF": 0, "ChaSt": 2,
    "V": 5318, "V_SF": -2, "CellVMax": 3330, "CellVMin": 3318, "CellVAvg": 3324, "CellV_SF": -3,
    "A": 0, "A_SF": -1, "W": 0, "W_SF": 0,
}  # fmt: skip
SOC_LOW = ThresholdRule(name="soc-low", metric="soc_pct", below=10, clear=15, for_s=60)


def pack_device(pack: dict[str, Any]) -> dict[str, Any]:
    image = sunspec_image([COMMON, sunspec_model(802, pack)], 40000)
    return {"units": {"1": {"holding": image}}}


def make_driver(port: int) -> SunSpecDriver:
    opts = {"transport": "tcp", "host": "127.0.0.1", "port": port, "request_timeout_s": 0.5}
    device = DeviceConfig(id="pack", driver="sunspec", options=opts)
    return SunSpecDriver(device, SunSpecOptions.model_validate(opts))


def poll(pack: dict[str, Any]) -> Reading:
    with ServerProcess(pack_device(pack)) as server:
        return asyncio.run(poll_once(make_driver(server.port)))


def diagnose(reading: Reading, series_cells: int | None = None):  # type: ignore[no-untyped-def]
    """Two minutes of this reading every 5 s through the diagnostics and a soc-low rule."""
    diag = Diagnostician("pack", LFP, 100.0, series_cells=series_cells)
    engine = AlertEngine([SOC_LOW], 0, [])
    raised, d = [], None
    for i in range(25):
        r = Reading(**{**{f: getattr(reading, f) for f in reading.__slots__}, "quality_notes": []})
        r.ts_ms, r.quality = 1_700_000_000_000 + i * 5_000, Quality.OK
        d = diag.update(r)
        raised += [t.rule for t in engine.evaluate(r, d) if t.transition == "raised"]
    return d, r, raised


def test_802_cell_extremes_fill_the_readings_fields_and_give_the_series_count():
    reading = poll(PACK)
    assert reading.cell_voltage_v.size == 0
    assert reading.cell_voltage_max_v == pytest.approx(3.330)
    assert reading.cell_voltage_min_v == pytest.approx(3.318)
    stats = reading.cell_stats()
    assert stats["cell_voltage_spread_v"] == pytest.approx(0.012)
    assert reading.extra["series_cells"] == 16  # 53.18 V / 3.324 V
    assert "cell_voltage_max_v" not in reading.extra


def test_the_soc_estimate_uses_the_devices_series_count_and_raises_no_false_soc_low():
    d, _, raised = diagnose(poll(PACK))
    assert d.soc_pct > 20.0, d.soc_pct  # 3.324 V per cell, not 53.18 / 17 = 3.128 V
    assert "soc-low" not in raised


def test_without_a_series_count_the_soc_is_not_guessed_from_the_pack_voltage():
    pack = {k: v for k, v in PACK.items() if k != "CellVAvg"}  # not implemented
    reading = poll(pack)
    assert "series_cells" not in reading.extra
    d, _, raised = diagnose(reading)
    assert math.isnan(d.soc_pct)
    assert raised == []
    d, _, _ = diagnose(reading, series_cells=16)  # the config's count
    assert d.soc_pct > 20.0


def test_an_estimate_contradicting_the_bms_raises_no_soc_alert_and_the_reading_says_so():
    pack = {k: v for k, v in PACK.items() if k != "CellVAvg"}
    d, r, raised = diagnose(poll(pack), series_cells=17)  # a wrong count: 3.128 V per cell
    assert d.soc_pct < 10.0 and d.soc_disputed
    assert Quality.INCONSISTENT in r.quality
    assert any("no SOC alert" in n for n in r.quality_notes), r.quality_notes
    assert "soc-low" not in raised


def test_an_exception_reply_on_the_common_model_is_flagged_not_swallowed():
    device = pack_device(PACK)
    common_at = 40000 + 2 + 2  # after "SunS" and model 1's ID and L: its first string
    device["exceptions"] = [[1, "holding", common_at, 4]]  # SERVER DEVICE FAILURE
    with ServerProcess(device) as server:
        driver = make_driver(server.port)
        reading = asyncio.run(poll_once(driver))
    assert driver.info == {}
    assert Quality.PARTIAL in reading.quality
    assert any("identity" in n for n in reading.quality_notes), reading.quality_notes
    assert reading.bms_soc_pct == pytest.approx(63.75)


def test_identity_strings_are_stored_shown_in_status_and_sent_with_telemetry(tmp_path):
    with ServerProcess(pack_device(PACK)) as server:
        driver = make_driver(server.port)

        async def two_polls() -> list[Reading]:
            await driver.open()
            try:
                return [await driver.read(), await driver.read()]
            finally:
                await driver.close()

        first, second = asyncio.run(two_polls())
    identity = {"manufacturer": "Acme Storage", "model": "LV-16S", "serial_number": "P-0042",
                "firmware": "1.7"}  # fmt: skip
    assert first.identity == identity and second.identity == {}
    store = Store(tmp_path / "gw.db")
    try:
        store.commit_cycles([Cycle(reading=first), Cycle(reading=second)])
        assert store.device_identities() == {"pack": identity}
        status = render(collect(load_config(_site(tmp_path)), store))
        rows = store.outbox_fetch("telemetry", 0, 10)
    finally:
        store.close()
    assert "device: manufacturer Acme Storage, model LV-16S, serial_number P-0042" in status
    (message,) = Encoder("bess", "s", "json", 65536, {"pack": identity}).messages("telemetry", rows)
    doc = json.loads(message.payload)
    assert doc["device_info"] == identity
    assert list(load_validators()["telemetry"].iter_errors(doc)) == []


def _site(tmp_path: Path) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(
        f'[site]\nid = "s"\n[storage]\npath = "{tmp_path / "gw.db"}"\n'
        '[[devices]]\nid = "pack"\ndriver = "sunspec"\nseries_cells = 16\n'
        '[devices.options]\nhost = "127.0.0.1"\n'
    )
    return config
