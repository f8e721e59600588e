"""A real BMS's DBC that bess-edge did not write: foxBMS 2, read in place from ../shared/.

config/can-foxbms.toml maps its multiplexed ``f_CellVoltages`` / ``f_CellTemperatures`` with an
indexed pattern; frames encoded from foxBMS's own DBC must come back as full per-cell arrays, and
the PCAN trace recorded on a foxBMS must replay into SQLite.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from typing import Any

import numpy as np
import pytest
from bess_edge.drivers.can import CanDriver
from bess_edge.drivers.can_decode import FrameDecoder
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.can_map import CanOptions, load_dbc
from can_support import messages, read_after, unique_channel, virtual_bus
from conftest import REPO
from thirdparty import FOXBMS

from bess_edge.chemistry import NMC
from bess_edge.config import load_config
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.thermal import OUTLIER_HOLD_S
from bess_edge.model import Quality, Reading
from bess_edge.store import Store

pytestmark = pytest.mark.skipif(
    not (FOXBMS / "foxbms.dbc").is_file(), reason=f"foxBMS test files not found in {FOXBMS}"
)


def foxbms_device(**options: Any) -> dict[str, Any]:
    """config/can-foxbms.toml's device, its DBC path made absolute for any working directory."""
    device = tomllib.loads((REPO / "config" / "can-foxbms.toml").read_text())["devices"][0]
    device["options"] |= {"dbc": str(FOXBMS / "foxbms.dbc"), **options}
    return device


def foxbms_state() -> Reading:
    rng = np.random.default_rng(2)
    return Reading(
        device_id="foxbms-1",
        pack_voltage_v=798.4,
        pack_current_a=-20.5,  # discharging
        cell_voltage_v=np.round(rng.uniform(3.55, 3.75, 216), 3),
        cell_temperature_c=np.round(rng.uniform(18, 35, 180)),
        fault_flags=0b0001,
    )


def test_frames_encoded_from_the_foxbms_dbc_decode_into_full_cell_arrays(make_config, tmp_path):
    channel = unique_channel("foxbms")
    config = make_config([foxbms_device(interface="virtual", channel=channel)])
    device = load_config(config).devices[0]
    driver = CanDriver(device, device.parsed_options)
    sent = foxbms_state()
    frames = FrameEncoder(driver.options.slots(), invert_current=True).frames(sent)
    assert sum(f.frame_id == 0x250 for f in frames) == 54  # 216 cells in blocks of 4
    assert sum(f.frame_id == 0x260 for f in frames) == 30  # 180 sensors in blocks of 6

    with virtual_bus(channel) as tx:
        got = asyncio.run(read_after(driver, tx, messages(frames)))
    assert got.cell_voltage_v.size == 216 and got.cell_temperature_c.size == 180
    np.testing.assert_allclose(got.cell_voltage_v, sent.cell_voltage_v, atol=0.0005)  # mV
    np.testing.assert_allclose(got.cell_temperature_c, sent.cell_temperature_c, atol=0.5)
    assert got.pack_voltage_v == pytest.approx(798.4, abs=0.005)
    assert got.pack_current_a == pytest.approx(-20.5, abs=0.005)
    assert got.fault_flags == 0b0001
    assert got.quality == Quality.OK, got.quality_notes
    # foxBMS sends power in kW (0.01 kW steps); the DBC's unit converts it to W.
    assert got.pack_power_w == pytest.approx(798.4 * -20.5, abs=5.0)
    # On the wire foxBMS's convention holds: discharge is positive.
    db = load_dbc(str(FOXBMS / "foxbms.dbc"))
    string_values = next(f for f in frames if f.frame_id == 0x243)
    assert db.decode_message(0x243, string_values.data)["Current"] == pytest.approx(20.5)


def test_replay_plays_the_foxbms_pcan_trace_into_sqlite(make_config, tmp_path):
    config = make_config([foxbms_device()])
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bess_edge", "replay", str(FOXBMS / "can-log.trc")),
            *("--config", str(config), "--fast"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "9 frames read, 7 decoded, 2 not mapped, 0 unknown id" in result.stdout
    assert "1 Readings written" in result.stdout
    store = Store(tmp_path / "bess-edge.db", readonly=True)
    try:
        sample = store.latest_sample("foxbms-1")
    finally:
        store.close()
    assert sample is not None
    # Frame 0x250 multiplexer 2 of the trace: cells 8..11 = 1996, 2005, 2001, 1999 mV.
    np.testing.assert_allclose(sample["cell_voltage_v"][8:12], [1.996, 2.005, 2.001, 1.999])
    # Frame 0x260 multiplexer 1: sensors 6..11 = 25, 25, 25, 25, 26, 26 °C.
    np.testing.assert_allclose(sample["cell_temperature_c"][6:12], [25, 25, 25, 25, 26, 26])
    assert sample["pack_voltage_v"] == pytest.approx(63.93)  # 0x243, string 0
    assert sample["ts_ms"] // 1000 == 1740489946  # the trace's own start time, 2025-02-25


def test_a_hot_cell_on_a_foxbms_string_is_flagged_within_the_hold_time():
    """Sensor 37 at 31 °C, >= 5 K above every other one (24-26 °C, foxBMS's 1 °C steps): it was
    never flagged (the precursor score weighs a hot spot at 0.35 and waits for two minutes of
    rates). Real frames from foxBMS's DBC, one burst per second, decoded and diagnosed."""
    options = CanOptions.model_validate(foxbms_device()["options"])
    encoder = FrameEncoder(options.slots(), invert_current=True)
    decoder = FrameDecoder.for_options(options, "foxbms-1")
    diag = Diagnostician("foxbms-1", NMC, 100.0)
    state = foxbms_state()
    rng = np.random.default_rng(8)
    base_temps = np.round(rng.uniform(24.0, 26.0, 180))
    hot_from_s, flagged_at_s = 60, None
    for second in range(hot_from_s + 60):
        state.cell_temperature_c = base_temps.copy()
        if second >= hot_from_s:
            state.cell_temperature_c[37] = 31.0
        state.cell_voltage_v = np.round(3.65 + rng.normal(0, 0.002, 216), 3)
        for f in encoder.frames(state):
            decoder.ingest(f.frame_id, f.data, float(second))
        reading = decoder.reading("foxbms-1", second + 0.5, 1_740_000_000_000 + second * 1000)
        d = diag.update(reading)
        hot = [r for r in d.thermal_risk_reasons if "hot cell at sensor 37" in r]
        if second < hot_from_s:
            assert d.thermal_risk_level == 0, d.thermal_risk_reasons
        elif hot and flagged_at_s is None:
            flagged_at_s = second
            assert d.thermal_risk_level >= 1
            assert "31.0 °C" in hot[0]
    assert flagged_at_s is not None, "the hot cell was never flagged"
    print(f"hot cell flagged {flagged_at_s - hot_from_s} s after it appeared")
    assert flagged_at_s - hot_from_s <= OUTLIER_HOLD_S + 2
