"""SOC, current offset, R0 and capacity against the simulated string's true state."""

import dataclasses

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.soc import (
    BIAS_LEARNING_SOC_SIGMA_PCT,
    BIAS_WALK_C_PER_SQRT_S,
    CURRENT_NOISE_C,
    PRESET_SOC_POSITION_SIGMA_PCT,
    SOC_WALK_PCT_PER_SQRT_S,
    SocFilter,
    sampled_charge_sigma_as,
)
from bess_edge.model import Reading

CAPACITY_AH = 100.0


def _run(
    chemistry, hours, initial_soc_pct=None, profile="daily", offset_a=0.5, poll_s=2.0, c_rate=0.25
):
    options = SimOptions(
        cells=8,
        profile=profile,
        c_rate=c_rate,
        day_length_s=6 * 3600,
        seed=2,
        current_offset_a=offset_a,
        initial_soc_pct=50.0,
    )
    sim = SimulatedString(options, chemistry, CAPACITY_AH)
    # The simulated cells follow the preset's curve exactly: for them it is a measured table
    # (how a preset's unknown error is carried is tested in test_diagnostics_ocv_table.py).
    measured = chemistry.with_overrides({"ocv_source": "file"})
    diag = Diagnostician("string", measured, CAPACITY_AH, initial_soc_pct=initial_soc_pct)
    trace = []
    for reading in sim.readings(duration_s=hours * 3600, poll_s=poll_s):
        d = diag.update(reading)
        trace.append(
            (reading.ts_ms / 3.6e6, d.soc_pct - float(sim.soc.mean()), d.soc_uncertainty_pct)
        )
    return sim, d, np.array(trace)


def test_nmc_soc_converges_from_30_points_wrong_within_minutes_of_regulation():
    # The string is at 50 %; the filter is told 80 % with the 30-point sigma of a guess.
    _, d, trace = _run(NMC, hours=2, initial_soc_pct=80.0, profile="regulation")
    after = trace[trace[:, 0] > 5 / 60]
    print(f"NMC SOC error after 5 min: max {np.abs(after[:, 1]).max():.2f} %")
    assert np.abs(after[:, 1]).max() < 2.0
    assert d.soc_uncertainty_pct < 2.0


def test_lfp_soc_is_honest_on_the_plateau_and_converges_at_the_knee():
    # 0.4C for 1.2 h charges the string from 50 % to the knee above 90 % every day.
    _, _, trace = _run(LFP, hours=12, initial_soc_pct=80.0, poll_s=5.0, c_rate=0.4)
    # Until the knee the filter must say it does not know: the error stays within 3 sigma.
    assert np.all(np.abs(trace[:, 1]) <= 3 * trace[:, 2] + 1.0)
    after_knee = trace[trace[:, 0] > 2.0]
    print(f"LFP SOC error after the first full charge: max {np.abs(after_knee[:, 1]).max():.2f} %")
    assert np.abs(after_knee[:, 1]).max() < 3.0


def test_current_sensor_offset_is_estimated_and_removed():
    _, d, _ = _run(NMC, hours=6, offset_a=0.5, poll_s=5.0)
    assert d.current_offset_a == pytest.approx(0.5, abs=0.1)


def test_r0_and_capacity_match_the_simulated_cells():
    sim, d, _ = _run(NMC, hours=7)
    true_r0 = float(sim.r0_ohm.mean())
    true_capacity = float(sim.capacity_ah.mean())
    print(
        f"R0 {d.cell_r0_mean_ohm * 1e3:.4f} mΩ vs {true_r0 * 1e3:.4f}; "
        f"capacity {d.capacity_ah:.2f} Ah vs {true_capacity:.2f}"
    )
    assert d.cell_r0_mean_ohm == pytest.approx(true_r0, rel=0.10)
    assert d.r0_ohm == pytest.approx(sim.r0_ohm.sum(), rel=0.10)
    np.testing.assert_allclose(d.cell_r0_ohm, sim.r0_ohm, rtol=0.10)
    assert d.capacity_ah == pytest.approx(true_capacity, rel=0.03)
    assert d.soh_pct == pytest.approx(100.0 * true_capacity / CAPACITY_AH, abs=3.0)
    assert d.soh_resistance_pct == pytest.approx(100.0, abs=5.0)


def test_lfp_plateau_poll_without_a_voltage_reading_leaves_the_filter_as_the_update_would():
    """A step whose voltages all say "somewhere on the plateau" skips the measurement update:
    run in full, that update changes neither the state nor its covariance, bit for bit."""
    for channels, with_bias in ((1, True), (16, False)):
        soc = SocFilter(LFP, channels, estimate_bias=with_bias)
        soc.reset(np.full(channels, 10.0), np.full(channels, 3.0), CAPACITY_AH)
        for _ in range(5):  # below the plateau: the voltage corrects, correlations build up
            volts, ohms = np.full(channels, float(LFP.ocv(10.0))), np.full(channels, 1e-3)
            soc.step(20.0, 1.0, volts, ohms, ohms, CAPACITY_AH, 0.02)
        x, p = soc.x.copy(), soc.p.copy()
        if with_bias:  # correlations the identity must keep
            assert p[0, 0, 1] != 0.0 and p[0, 0, 2] != 0.0
        nothing = np.full(channels, np.nan)
        soc._correct(nothing, np.zeros(channels, dtype=bool), nothing)
        assert np.array_equal(soc.x, x) and np.array_equal(soc.p, p)


def test_cell_filters_predict_their_covariance_as_the_matrix_product_does():
    """The cells' filters (no offset state) predict P as J P Jᵀ with J = diag(1, a) element by
    element: equal to the stacked matrix product bit for bit, whatever P and the decay."""
    rng = np.random.default_rng(7)
    soc = SocFilter(NMC, 16, estimate_bias=False)
    soc.reset(rng.uniform(10.0, 90.0, 16), rng.uniform(0.5, 5.0, 16), CAPACITY_AH)
    for _ in range(200):
        half = rng.standard_normal((16, 2, 2)) * rng.uniform(1e-4, 10.0, (16, 1, 1))
        soc.p = half @ half.transpose(0, 2, 1)
        dt_s, r1 = float(rng.uniform(0.1, 30.0)), np.full(16, 1e-3)
        a = np.exp(-dt_s / NMC.tau1_s)
        jac = np.zeros((16, 2, 2))
        jac[:, 0, 0], jac[:, 1, 1] = 1.0, a
        expected = jac @ soc.p @ jac.transpose(0, 2, 1)
        k = 100.0 * dt_s / (3600.0 * CAPACITY_AH)
        sigma_i = CURRENT_NOISE_C * CAPACITY_AH
        expected[:, 0, 0] += (k * sigma_i) ** 2 + SOC_WALK_PCT_PER_SQRT_S**2 * dt_s
        expected[:, 1, 1] += (r1 * (1 - a) * sigma_i) ** 2
        # No current, no voltage: the prediction alone, nothing to correct.
        soc.step(0.0, dt_s, np.full(16, np.nan), r1, r1, CAPACITY_AH)
        assert np.array_equal(soc.p, expected)


def _random_covariance(rng: np.random.Generator, channels: int, states: int) -> np.ndarray:
    half = rng.standard_normal((channels, states, states)) * rng.uniform(0.01, 3.0, states)
    return half @ half.transpose(0, 2, 1)


@pytest.mark.parametrize("channels", [1, 16])
def test_filters_step_as_the_matrix_formulation_does(channels: int) -> None:
    """The string's filter (offset state, Python floats) and the cells' (numpy columns) predict
    P as J P Jᵀ + Q and correct it in Joseph form (I - K H) P (I - K H)ᵀ + K Kᵀ R: equal to
    those matrix products within 1e-12 on random states, whatever the gains."""
    rng = np.random.default_rng(11)
    with_bias = channels == 1
    states = 3 if with_bias else 2
    chemistry = dataclasses.replace(NMC, ocv_source="file")  # no table-error floor on P_00
    soc = SocFilter(chemistry, channels, estimate_bias=with_bias)
    soc.reset(np.full(channels, 50.0), np.full(channels, 2.0), CAPACITY_AH)
    for _ in range(300):
        soc.x = np.column_stack(
            [rng.uniform(20, 80, channels), rng.normal(0, 0.01, channels)]
            + ([rng.normal(0, 2.0, channels)] if with_bias else [])
        )
        soc.p = _random_covariance(rng, channels, states)
        dt_s, current = float(rng.uniform(0.1, 30.0)), float(rng.uniform(-300, 300))
        r1 = np.full(channels, 1e-3)
        bias = soc.x[:, 2] if with_bias else 0.0
        a = np.exp(-dt_s / chemistry.tau1_s)
        eta = np.where(current - bias > 0, chemistry.coulombic_efficiency, 1.0)
        k = 100.0 * eta * dt_s / (3600.0 * CAPACITY_AH)
        jac = np.zeros((channels, states, states))
        jac[:, 0, 0], jac[:, 1, 1] = 1.0, a
        if with_bias:
            jac[:, 2, 2], jac[:, 0, 2], jac[:, 1, 2] = 1.0, -k, -r1 * (1 - a)
        expected = jac @ soc.p @ jac.transpose(0, 2, 1)
        sigma_i = CURRENT_NOISE_C * CAPACITY_AH
        expected[:, 0, 0] += (k * sigma_i) ** 2 + SOC_WALK_PCT_PER_SQRT_S**2 * dt_s
        expected[:, 1, 1] += (r1 * (1 - a) * sigma_i) ** 2
        if with_bias:
            expected[:, 2, 2] += (BIAS_WALK_C_PER_SQRT_S * CAPACITY_AH) ** 2 * dt_s
        soc.step(current, dt_s, np.full(channels, np.nan), r1, r1, CAPACITY_AH)
        np.testing.assert_allclose(soc.p, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())

        # The correction with gains of any size (gated by a large innovation or not).
        z = soc.x[:, 0] + rng.normal(0, 5.0, channels)
        sigma2 = rng.uniform(0.01, 10.0, channels)
        prior = soc.p.copy()
        gate = np.maximum(prior[:, 0, 0] + sigma2, (z - soc.x[:, 0]) ** 2 / 9.0)
        gain = prior[:, :, 0] / gate[:, None]
        if with_bias:
            gain[:, 2] = np.where(prior[:, 0, 0] > BIAS_LEARNING_SOC_SIGMA_PCT**2, 0.0, gain[:, 2])
        i_kh = np.tile(np.eye(states), (channels, 1, 1))
        i_kh[:, :, 0] -= gain
        kkt = gain[:, :, None] * gain[:, None, :] * (gate - prior[:, 0, 0])[:, None, None]
        expected = i_kh @ prior @ i_kh.transpose(0, 2, 1) + kkt
        soc._correct(z, np.ones(channels, dtype=bool), sigma2)
        np.testing.assert_allclose(soc.p, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_only_a_single_channel_filter_estimates_the_current_offset() -> None:
    """The offset state is the string's one sensor: its filter steps in floats on channel 0,
    so a bank of offset-estimating filters is refused rather than stepped wrong."""
    with pytest.raises(ValueError, match="one channel"):
        SocFilter(NMC, 16, estimate_bias=True)
    assert SocFilter(NMC, 1, estimate_bias=True).states == 3


def _regulation_on_the_plateau(seed: int, with_sampling: bool) -> tuple[float, float]:
    """Eight hours of regulation (an Ornstein-Uhlenbeck current, 0.5C wide, a minute's
    memory, stepped every second) on LFP's plateau, polled every 30 s: the cells' filter
    counts each poll's current for the whole 30 s, as a BMS read over Modbus gives it. The
    final SOC error and sigma [%]."""
    rng = np.random.default_rng(seed)
    soc = SocFilter(LFP, 1, estimate_bias=False)
    soc.reset(np.array([50.0]), np.array([0.5]), CAPACITY_AH)
    true_pct, amps, last_poll_a = 50.0, 0.0, 0.0
    no_volts, ohms = np.full(1, np.nan), np.full(1, 1e-3)
    for _ in range(8 * 120):
        for _ in range(30):
            amps = (
                amps * np.exp(-1 / 60)
                + 0.3 * CAPACITY_AH * np.sqrt(1 - np.exp(-2 / 60)) * rng.standard_normal()
            )
            true_pct += 100.0 * amps / 3600.0 / CAPACITY_AH
        sigma_as = sampled_charge_sigma_as(amps - last_poll_a, 30.0) if with_sampling else 0.0
        soc.step(amps, 30.0, no_volts, ohms, ohms, CAPACITY_AH, charge_sigma_as=sigma_as)
        last_poll_a = amps
    return float(soc.soc_pct[0]) - true_pct, float(soc.soc_sigma_pct[0])


def test_a_current_sampled_slower_than_it_moves_widens_the_soc_sigma_to_cover_the_count():
    # Where the voltage says nothing (LFP's plateau), only the count moves SOC: its error is
    # what the 30-s samples miss of a current that moves within a minute, a random walk of
    # ~2-3 points over 8 h. Counted as current noise alone, the sigma stays near its start.
    runs = {
        with_sampling: np.array([_regulation_on_the_plateau(s, with_sampling) for s in range(40)])
        for with_sampling in (False, True)
    }
    covered = {k: float(np.mean(np.abs(r[:, 0]) <= 2 * r[:, 1])) for k, r in runs.items()}
    rms = float(np.sqrt(np.mean(runs[True][:, 0] ** 2)))
    sigma = {k: float(np.median(r[:, 1])) for k, r in runs.items()}
    print(
        f"error RMS {rms:.2f} %; without / with sampling: sigma {sigma}, within 2 sigma {covered}"
    )
    assert rms > 1.0  # the count's own error, the same in both
    assert covered[False] < 0.6
    assert covered[True] >= 0.9
    assert np.median(runs[True][:, 1]) < 3 * rms  # wide enough, not a blanket


def test_the_engine_counts_the_steps_between_polls_into_the_soc_sigma_and_the_charge_counter():
    # Two strings on LFP's plateau, polled every 30 s with the same currents, +-0.3C: one
    # alternating at every poll, one every 20 polls. Same charge, same |current|; only the
    # first moved between every two polls, so only its count is uncertain by the steps: in
    # the SOC filter and in the charge counter that the capacity anchors and the learner read.
    def after(block: int) -> tuple[float, float]:
        diag = Diagnostician("string", LFP.with_overrides({"ocv_source": "file"}), CAPACITY_AH)
        for k in range(960):
            amps = 0.3 * CAPACITY_AH * (1 if (k // block) % 2 == 0 else -1)
            volts = np.full(4, float(LFP.ocv(50.0)) + amps * 1e-3 / 4)
            reading = Reading(
                "string", ts_ms=(k + 1) * 30_000, pack_voltage_v=float(volts.sum()),
                pack_current_a=amps, cell_voltage_v=volts, cell_temperature_c=np.full(4, 25.0),
            )  # fmt: skip
            d = diag.update(reading)
        return d.soc_uncertainty_pct, diag.capacity.counter_var_ah2

    (sigma_every, counter_every), (sigma_20, counter_20) = after(1), after(20)
    # 912 more steps of 0.6C, each leaving half of 30 s of it unknown: 0.25 Ah, 0.25 % of SOC.
    expected = 912 * (0.5 * 0.6 * CAPACITY_AH * 30.0 / 3600.0) ** 2
    added = sigma_every**2 - sigma_20**2
    print(
        f"SOC sigma after 8 h: {sigma_every:.2f} % stepping every poll, {sigma_20:.2f} % every "
        f"20 (the offset's unknown on the plateau is most of both): {added:.0f} %² added; "
        f"counter {counter_every - counter_20:.0f} Ah² added; {expected:.0f} expected"
    )
    assert added == pytest.approx(expected, rel=0.3)
    assert counter_every - counter_20 == pytest.approx(expected, rel=0.1)


def test_readings_through_a_biased_table_do_not_hold_back_a_charge_the_count_sees():
    """A cell whose curve is the NMC preset's squeezed along SOC (it reads 0.8 s + 10 through
    the preset): through an hour at C/4 its voltages say SOC rose 20 points while 25 went in.
    The table's error floors the SOC sigma the filter reports, but not the covariance that
    weighs each reading against the count: raised at every poll, 120 readings of one biased
    table pulled as 120 independent ones and held the estimate 4.8 points back."""
    soc = SocFilter(NMC, 1, estimate_bias=False)
    true_pct = 40.0
    soc.reset(np.array([true_pct]), np.array([10.0]), CAPACITY_AH)

    def cell_ocv(s: float) -> float:
        return float(NMC.ocv(0.8 * s + 10.0))

    r0, r1 = np.array([NMC.r0_ohm(CAPACITY_AH)]), np.array([NMC.r1_ohm_ah / CAPACITY_AH])
    for _ in range(60):  # half an hour's rest: the estimate goes to what the table says
        soc.step(0.0, 30.0, np.array([cell_ocv(true_pct)]), r0, r1, CAPACITY_AH)
    start_pct, v_rc, decay, amps = float(soc.soc_pct[0]), 0.0, np.exp(-30.0 / NMC.tau1_s), 25.0
    for _ in range(120):
        true_pct += 100.0 * amps * 30.0 / 3600.0 / CAPACITY_AH
        v_rc = decay * v_rc + float(r1[0]) * (1.0 - decay) * amps
        volts = cell_ocv(true_pct) + v_rc + float(r0[0]) * amps
        soc.step(amps, 30.0, np.array([volts]), r0, r1, CAPACITY_AH)
    moved, sigma = float(soc.soc_pct[0]) - start_pct, float(soc.soc_sigma_pct[0])
    print(f"estimate moved {moved:.2f} points for 25; sigma {sigma:.2f}")
    assert moved == pytest.approx(25.0, abs=0.5)
    assert abs(float(soc.soc_pct[0]) - true_pct) < 2.0 * sigma
    assert sigma > PRESET_SOC_POSITION_SIGMA_PCT  # the table's error still reported
    restored = SocFilter(NMC, 1, estimate_bias=False)
    restored.load(soc.state())
    assert float(restored.soc_sigma_pct[0]) == sigma  # the floor is saved with the state


def test_a_reading_on_the_plateau_moves_the_estimate_to_its_edge_at_rest_not_under_load():
    """An LFP cell 25 mV below the preset at 93 % reads as the preset's 89.6 %, inside its
    20-90 % plateau. At rest that says "on the plateau" and the estimate goes to the edge;
    charging at C/4, the load model's error (R0·I, 17 mV here) reaches past the edge, so the
    reading says nothing and the count stands."""
    r0, r1 = np.array([LFP.r0_ohm(CAPACITY_AH)]), np.array([LFP.r1_ohm_ah / CAPACITY_AH])
    cell_v = float(LFP.ocv(93.0)) - 0.025
    assert 20.0 < float(LFP.soc_from_ocv(cell_v)) < 90.0  # on the preset's plateau: the case
    for amps, moved_to in ((25.0, None), (0.0, 90.0)):
        soc = SocFilter(LFP, 1, estimate_bias=False)
        soc.reset(np.array([93.0]), np.array([1.0]), CAPACITY_AH)
        v_rc = float(r1[0]) * (1.0 - np.exp(-1.0 / LFP.tau1_s)) * amps
        soc.step(amps, 1.0, np.array([cell_v + v_rc + float(r0[0]) * amps]), r0, r1, CAPACITY_AH)
        counted = 93.0 + 100.0 * amps / 3600.0 / CAPACITY_AH * LFP.coulombic_efficiency
        expected = counted if moved_to is None else moved_to
        assert float(soc.soc_pct[0]) == pytest.approx(expected, abs=0.01), amps
