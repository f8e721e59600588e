"""A preset OCV table is not the cell's: SOC read through it says so in its uncertainty."""

import numpy as np
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.soc import (
    OCV_TABLE_ERROR_V,
    PRESET_SOC_POSITION_SIGMA_PCT,
    SocFilter,
)

CAPACITY_AH = 100.0
# A cell of the same family whose curve the preset misses by tens of mV, as real cells do
# (compare the PyBaMM cells in benchmarks/diagnostics_accuracy.py).
CELL = NMC.with_overrides(
    {
        "ocv_v": tuple(
            v + 0.035 * np.sin(np.pi * s / 100.0)
            for s, v in zip(NMC.ocv_soc_pct, NMC.ocv_v, strict=True)
        )
    }
)


def _errors(chemistry) -> tuple[np.ndarray, np.ndarray, list[str]]:
    options = SimOptions(cells=2, profile="regulation", c_rate=0.3, seed=4, initial_soc_pct=55.0)
    sim = SimulatedString(options, CELL, CAPACITY_AH)
    diag = Diagnostician("string", chemistry, CAPACITY_AH, initial_soc_pct=30.0)
    err, sigma = [], []
    for reading in sim.readings(duration_s=3 * 3600, poll_s=5.0):
        d = diag.update(reading)
        err.append(d.soc_pct - float(sim.soc.mean()))
        sigma.append(d.soc_uncertainty_pct)
    return np.array(err)[360:], np.array(sigma)[360:], [d.ocv_source]  # after 30 min


def test_soc_through_a_preset_table_is_covered_by_its_sigma():
    err, sigma, source = _errors(NMC)
    covered = np.mean(np.abs(err) <= 2.0 * sigma)
    print(
        f"preset: |error| max {np.abs(err).max():.2f} %, sigma {sigma.mean():.2f} %, "
        f"2σ cover {covered:.2f}"
    )
    assert source == ["preset"]
    assert np.abs(err).max() > 1.0  # the preset misleads: this is the case being tested
    assert covered >= 0.9


def test_the_cells_own_table_gives_a_tight_and_honest_soc():
    own = NMC.with_ocv_table(np.array(CELL.ocv_soc_pct), np.array(CELL.ocv_v), source="file")
    err, sigma, source = _errors(own)
    covered = np.mean(np.abs(err) <= 2.0 * sigma)
    print(
        f"file: |error| max {np.abs(err).max():.2f} %, sigma {sigma.mean():.2f} %, "
        f"2σ cover {covered:.2f}"
    )
    assert source == ["file"]
    assert np.abs(err).max() < 1.5
    assert covered >= 0.9


def _sigma_after_rest(chemistry, volts: float) -> float:
    """SOC sigma [%] after an hour of rest polls at ``volts``, starting from knowing nothing."""
    soc = SocFilter(chemistry, 1, estimate_bias=False)
    soc.reset(np.array([50.0]), np.array([40.0]), CAPACITY_AH)
    ohms = np.array([1e-3])
    for _ in range(1800):
        soc.step(0.0, 2.0, np.array([volts]), ohms, ohms, CAPACITY_AH)
    return float(soc.soc_sigma_pct[0])


def test_a_reading_through_a_preset_is_as_uncertain_as_the_curve_makes_its_error():
    """The table's error [V] becomes SOC through the curve, not along its local slope: at
    3.17 V the LFP preset is steep (16 mV per %), but 60 mV higher is its plateau at 17 %.
    And a preset is never better than PRESET_SOC_POSITION_SIGMA_PCT in SOC, even where steep."""
    error_v = OCV_TABLE_ERROR_V["preset"]
    spread = (LFP.soc_from_ocv(3.17 + error_v) - LFP.soc_from_ocv(3.17 - error_v)) / 2.0
    assert spread > 1.5 * error_v / 0.016  # the local slope gives 3.75 points
    expected = float(np.hypot(spread, PRESET_SOC_POSITION_SIGMA_PCT))
    assert _sigma_after_rest(LFP, 3.17) >= 0.98 * expected
    steep = float(NMC.ocv(3.0))  # NMC below 5 %: tens of mV per %
    assert _sigma_after_rest(NMC, steep) >= 0.98 * PRESET_SOC_POSITION_SIGMA_PCT
    # The cell's own table carries neither: the same reading leaves a tight SOC.
    measured = LFP.with_overrides({"ocv_source": "file"})
    assert _sigma_after_rest(measured, 3.17) < 1.0
