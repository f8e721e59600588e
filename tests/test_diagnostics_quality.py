"""Bad data never breaks diagnostics: it is flagged on the Reading and kept out of estimates."""

import math

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LEAD_ACID, LFP, NMC
from bess_edge.diagnostics import Diagnosis, Diagnostician
from bess_edge.model import Quality, Reading


def _garbage_readings(cells: int):
    rng = np.random.default_rng(0)
    nan = math.nan
    yield Reading("d", ts_ms=1_000)  # nothing at all
    yield Reading("d", ts_ms=2_000, pack_current_a=nan, cell_voltage_v=np.full(cells, nan))
    yield Reading(
        "d",
        ts_ms=3_000,
        pack_voltage_v=float(rng.uniform(-1e4, 1e4)),
        pack_current_a=nan,
        cell_voltage_v=rng.integers(0, 65535, cells) / 1000.0,
        cell_temperature_c=np.full(max(cells, 1), -273.0),
    )
    yield Reading("d", ts_ms=4_000, pack_current_a=1e9, cell_voltage_v=np.full(cells, np.inf))
    yield Reading("d", ts_ms=3_500, pack_current_a=5.0, cell_voltage_v=np.full(cells, 3.7))
    yield Reading("d", ts_ms=5_000, pack_current_a=5.0, cell_voltage_v=np.full(cells + 3, 3.7))
    yield Reading("d", ts_ms=10**13, pack_current_a=-5.0, cell_temperature_c=[25.0])


@pytest.mark.parametrize("chemistry", [NMC, LFP, LEAD_ACID], ids=lambda c: c.name)
@pytest.mark.parametrize("cells", [0, 1, 16])
def test_garbage_nan_and_empty_readings_never_raise_and_are_flagged(chemistry, cells):
    diag = Diagnostician("d", chemistry, 50.0)
    for reading in _garbage_readings(cells):
        d = diag.update(reading)
        assert isinstance(d, Diagnosis)
        assert d.diagnostics_error is None
        d.to_dict()  # JSON-ready whatever came in
    flagged = Diagnostician("d", chemistry, 50.0)
    r = list(_garbage_readings(cells))[2]
    flagged.update(r)
    assert Quality.MISSING in r.quality and Quality.OUT_OF_RANGE in r.quality
    assert any("cell_temperature_c" in note for note in r.quality_notes)


def test_out_of_range_cells_do_not_reach_the_estimators():
    diag = Diagnostician("d", NMC, 100.0)
    cells = np.full(16, 3.70)
    cells[3] = 65.535  # a decode error
    r = Reading("d", ts_ms=1_000, pack_current_a=0.0, cell_voltage_v=cells)
    d = diag.update(r)
    assert Quality.OUT_OF_RANGE in r.quality
    assert math.isnan(r.cell_voltage_v[3]), "stored as null, not as 65.535 V"
    assert r.cell_voltage_v[2] == 3.70
    assert d.cell_spread_v == pytest.approx(0.0)
    assert math.isnan(d.cell_zscore[3])
    assert d.soc_pct == pytest.approx(float(NMC.soc_from_ocv(3.70)), abs=0.5)


def test_stuck_voltage_sensor_is_flagged_frozen_and_masked():
    stuck = {"kind": "stuck_sensor", "cell": 4, "sensor": "voltage", "at_s": 60.0}
    options = SimOptions(cells=16, profile="regulation", c_rate=0.3, seed=1, faults=[stuck])
    sim = SimulatedString(options, NMC, 100.0)
    diag = Diagnostician("d", NMC, 100.0)
    for reading in sim.readings(duration_s=300, poll_s=1.0):
        d = diag.update(reading)
    assert Quality.FROZEN in reading.quality
    assert "cell_voltage_v frozen at [4]" in reading.quality_notes
    assert "frozen" in d.quality_flags
    assert math.isnan(d.cell_deviation_v[4])


def test_open_sense_wire_jump_is_flagged():
    diag = Diagnostician("d", LFP, 280.0)
    base = np.full(16, 3.30)
    diag.update(Reading("d", ts_ms=1_000, pack_current_a=0.0, cell_voltage_v=base))
    jumped = base.copy()
    jumped[9] = 2.95
    r = Reading("d", ts_ms=2_000, pack_current_a=0.0, cell_voltage_v=jumped)
    diag.update(r)
    assert Quality.JUMP in r.quality
    assert "[9]" in r.quality_notes[-1]


def test_bms_soc_far_from_a_converged_estimate_is_flagged_inconsistent():
    # The cell's own table: read through a preset, 3.73 V is 50 % to within 10 points only,
    # and 35 points would be within our 3 sigma plus the BMS's usual error.
    diag = Diagnostician("d", NMC.with_overrides({"ocv_source": "file"}), 100.0)
    cells = np.full(16, 3.73)  # 50 % rested
    r = None
    for k in range(1, 120):
        r = Reading("d", ts_ms=k * 1000, pack_current_a=0.0, bms_soc_pct=85.0, cell_voltage_v=cells)
        d = diag.update(r)
    assert d.soc_pct == pytest.approx(50.0, abs=2.0)
    assert Quality.INCONSISTENT in r.quality
    assert "bms_soc_pct=85.0" in r.quality_notes[-1]
