"""A calibration charge anchors full SOC on a cell whose own limit is not its preset's, and
where its taper stopped short of full."""

import numpy as np
import pytest

from bess_edge.chemistry import LFP, NMC, Chemistry
from bess_edge.diagnostics.ocv_learn import OcvLearner

CAPACITY_AH = 100.0
POLL_S = 30.0
NOISE_C = 0.003  # the cell monitor's current noise, fraction of 1C


def _feed(learner: OcvLearner, volts, amps) -> list[float]:
    """Polls (voltage V, corrected current A) counted from an empty counter; the counter at
    each poll [Ah]."""
    counter, counters = 0.0, []
    for k, (v, a) in enumerate(zip(volts, amps, strict=True)):
        counter += a * POLL_S / 3600.0
        learner.observe(a, v, counter, k * POLL_S, 0.0, CAPACITY_AH)
        counters.append(counter)
    return counters


def _anchors_after(volts, amps, preset: Chemistry = LFP) -> tuple[np.ndarray, list[float]]:
    learner = OcvLearner(preset)
    counters = _feed(learner, volts, amps)
    learner.end_rest(None, (CAPACITY_AH, 10.0), (0.0, 1.0))
    return learner.anchors, counters


def test_a_cv_hold_at_the_cells_own_limit_below_the_presets_anchors_full():
    # An LFP cell whose BMS holds 3.60 V (the preset's limit is 3.65 V): C/4 up the knee, then
    # the hold, its current decaying from C/4 to C/20 within two minutes, read with 1 mV of
    # noise (3.603 then 3.598 V for 3.600), then a rest.
    cc_v = [3.40, 3.42, 3.45, 3.50, 3.56, 3.592]
    hold_a = [0.16, 0.09, 0.05]
    volts = [*cc_v, 3.603, 3.598, 3.600, 3.46, 3.45]
    amps = [*([0.25] * len(cc_v)), *hold_a, 0.0, 0.0]
    anchors, counters = _anchors_after(volts, np.array(amps) * CAPACITY_AH)
    assert LFP.cell_voltage_max_v - 0.03 > 3.6  # the preset's own margin misses this cell
    assert anchors.shape[0] == 1
    soc, _, counter_ah = anchors[0, :3]
    assert soc == 100.0  # two polls of taper are not read: a minute's leaves 0.07 % to go
    assert counter_ah == counters[len(cc_v) + len(hold_a) - 1]  # the end of the hold


@pytest.mark.parametrize("tau_s", [600.0, 1200.0, 1800.0])
def test_a_cv_taper_stopped_at_c20_anchors_the_charge_it_had_still_to_take(tau_s):
    # An NMC cell held at 4.2 V, its current decaying from C/4 as exp(-t/tau) (the held
    # voltage over the cell's resistance and its OCV's slope), read with noise every 30 s
    # until the BMS stops it at C/20: the charge still to go before the OCV reaches 4.2 V is
    # C/20 * tau, 0.8-2.5 % of the capacity; 100 % would count it as taken. The fit's scatter
    # over seeds is 6.5 % of that (30 seeds each).
    rng = np.random.default_rng(1)
    t_s = np.arange(0.0, tau_s * np.log(5.0), POLL_S)
    amps = (0.25 * np.exp(-t_s / tau_s) + NOISE_C * rng.standard_normal(t_s.size)) * CAPACITY_AH
    volts = np.round(4.2 + 0.001 * rng.standard_normal(t_s.size), 3)
    anchors, _ = _anchors_after([*volts, 4.1, 4.1], [*amps, 0.0, 0.0], NMC)
    left_pct = 100.0 * 0.25 * np.exp(-t_s[-1] / tau_s) * tau_s / 3600.0  # of CAPACITY_AH
    assert anchors.shape[0] == 1
    assert anchors[0, 0] == pytest.approx(100.0 - left_pct, abs=0.2 * left_pct)


def test_a_cc_charge_stopped_at_the_limit_anchors_full():
    # C/10 until the cell reads 4.18 V, no hold: no taper to read, so full as before.
    volts = [4.15, 4.16, 4.17, 4.18, 4.1]
    amps = np.array([0.1, 0.1, 0.1, 0.1, 0.0]) * CAPACITY_AH
    anchors, _ = _anchors_after(volts, amps, NMC)
    assert anchors.shape[0] == 1 and anchors[0, 0] == 100.0


def test_a_slow_charge_across_the_top_anchors_nothing():
    # C/20 through the top of the curve (an EMS trickling in solar): the voltage creeps, the
    # current stays with its noise.
    rng = np.random.default_rng(2)
    volts = np.linspace(3.46, 3.50, 240)
    amps = (0.05 + NOISE_C * rng.standard_normal(volts.size)) * CAPACITY_AH
    anchors, _ = _anchors_after(volts, amps)
    assert anchors.shape[0] == 0


def test_a_rest_at_the_top_read_through_an_offset_anchors_nothing():
    # A day's rest after a full charge, the current read 2 % of 1C high: charging on paper,
    # the voltage flat, but the current does not decay.
    rng = np.random.default_rng(3)
    volts = 3.470 + 0.001 * rng.standard_normal(2880)
    amps = (0.02 + NOISE_C * rng.standard_normal(volts.size)) * CAPACITY_AH
    anchors, _ = _anchors_after(np.round(volts, 3), amps)
    assert anchors.shape[0] == 0


def test_a_charge_current_cut_in_steps_below_the_top_anchors_nothing():
    # An EMS stepping a charge down at 90 % SOC (3.34 V, the plateau): the voltage is flat and
    # the current falls, but not in the top of the curve.
    volts = [3.345, 3.344, 3.343, 3.343, 3.342]
    amps = np.array([0.25, 0.25, 0.1, 0.05, 0.05]) * CAPACITY_AH
    anchors, _ = _anchors_after(volts, amps)
    assert anchors.shape[0] == 0


def test_a_restart_in_the_middle_of_a_cv_taper_anchors_where_an_unbroken_one_does():
    # The daemon restarts (its state saved and loaded) halfway down a 1200-s taper: the taper
    # read so far and the hold tracker come back, so the anchor is the unbroken run's, not
    # 100 % (a taper of fewer than three polls after the restart is not read).
    rng = np.random.default_rng(3)
    t_s = np.arange(0.0, 1200.0 * np.log(5.0), POLL_S)
    amps = (0.25 * np.exp(-t_s / 1200.0) + NOISE_C * rng.standard_normal(t_s.size)) * CAPACITY_AH
    volts = np.round(4.2 + 0.001 * rng.standard_normal(t_s.size), 3)
    volts, amps = [*volts, 4.1, 4.1], [*amps, 0.0, 0.0]
    unbroken, _ = _anchors_after(volts, amps, NMC)
    before, half = OcvLearner(NMC), t_s.size - 2
    counter = 0.0
    for k in range(half):
        counter += amps[k] * POLL_S / 3600.0
        before.observe(amps[k], volts[k], counter, k * POLL_S, 0.0, CAPACITY_AH)
    after = OcvLearner(NMC)
    after.load(before.state())
    for k in range(half, len(volts)):
        counter += amps[k] * POLL_S / 3600.0
        after.observe(amps[k], volts[k], counter, k * POLL_S, 0.0, CAPACITY_AH)
    after.end_rest(None, (CAPACITY_AH, 10.0), (0.0, 1.0))
    assert unbroken[0, 0] < 99.5  # the taper was read: the case tested
    np.testing.assert_array_equal(after.anchors, unbroken)


@pytest.mark.parametrize("seed", range(20))
def test_a_c10_discharge_to_the_lower_limit_anchors_empty_through_a_sensor_reading_high(seed):
    """A BMS's calibration discharge at C/10 of the label, read through a sensor 1 % high with
    its noise: the last polls before the limit anchor empty (at exactly C/10 the gate took
    them or not by the noise). A 0.2C discharge to the same voltage does not: at that current
    the limit comes points before empty."""
    rng = np.random.default_rng(seed)
    volts = [3.05, 2.98, 2.93, 2.88, 2.83, 3.05]
    read = 0.1 * 1.01 + NOISE_C * rng.standard_normal(5)
    amps = -np.append(read, 0.0) * CAPACITY_AH
    anchors, counters = _anchors_after(volts, amps, NMC)
    assert anchors.shape[0] == 1 and anchors[0, 0] == 0.0
    assert anchors[0, 2] == pytest.approx(counters[4])
    anchors, _ = _anchors_after(volts, -np.append(np.full(5, 0.2), 0.0) * CAPACITY_AH, NMC)
    assert anchors.shape[0] == 0
