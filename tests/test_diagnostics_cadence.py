"""The slow views of a Diagnosis are recomputed when what they read changes, and only then:
the fade projection and SOH forecast at a capacity refit, the cycle life when SOC moves, the
cells' leak currents when a settled rest moves their drift fit or the OCV slope changes, the
cells' counting capacity at a refit, a new string's rated life once, the 1-s pulse resistance
at pulse steps only; the temperature factor of the resistances once a poll; the per-cell and
thermal views when the caller asks (the daemon: once per diagnosis_interval_s), with the time
in between."""

import numpy as np
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC, Chemistry
from bess_edge.diagnostics import Diagnostician, engine, resistance
from bess_edge.diagnostics.anomaly import AnomalyDetector
from bess_edge.diagnostics.cycles import CycleLife, cycle_damage
from bess_edge.diagnostics.numeric import finite_median, finite_or
from bess_edge.diagnostics.resistance import ResistanceEstimator
from bess_edge.diagnostics.soc import SocFilter
from bess_edge.diagnostics.thermal import ThermalMonitor

CAPACITY_AH = 280.0
# Anchors need a sloped, trusted OCV curve: the simulated cells follow the preset exactly.
CHEM = NMC.with_overrides({"ocv_source": "file"})


def _spy(monkeypatch, owner, name: str) -> list[tuple]:
    """The arguments of every call of ``owner.name`` from now on; the real one still runs."""
    calls: list[tuple] = []
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **kw: calls.append(a) or real(*a, **kw))
    return calls


def _regulation(c_rate: float) -> SimulatedString:
    return SimulatedString(
        SimOptions(cells=16, profile="regulation", c_rate=c_rate, seed=1), CHEM, CAPACITY_AH
    )


def _refit_with_fade(diag: Diagnostician, days: int) -> None:
    """Rests at 90 and 30 % a day apart, the charge between them 1 % less each day: the
    capacity estimator refits at every rest and its history fades."""
    est, soc, t_s = diag.capacity, 90.0, 0.0
    for day in range(days):
        for target in (90.0, 30.0):
            charge_ah = (target - soc) / 100.0 * CAPACITY_AH * (1.0 - 0.01 * day)
            for _ in range(120):  # two hours polled every minute
                est.integrate(charge_ah / 2.0, 60.0, 0.0)
            soc, t_s = target, t_s + 7200.0
            est.observe_rest(float(CHEM.ocv(soc)), 60.0, t_s)
            est.end_rest(t_s, float(day), 0.0, 0.3)
        t_s += 86_400.0


def test_fade_and_forecast_follow_a_refit_and_are_not_recomputed_without_one(monkeypatch):
    calls = _spy(monkeypatch, engine, "fade_projection")
    sim = SimulatedString(SimOptions(cells=16, profile="idle", seed=1), CHEM, CAPACITY_AH)
    readings = iter(sim.readings(duration_s=100.0, poll_s=1.0))
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    before = [diag.update(next(readings)) for _ in range(10)][-1]
    assert len(calls) == 1  # nothing the views read changed in 10 polls
    assert np.isnan(before.capacity_fade_pct_per_year)

    _refit_with_fade(diag, days=3)
    after = diag.update(next(readings))
    assert len(calls) == 2
    diag.update(next(readings))
    assert len(calls) == 2
    # What a Diagnostician restored from this state computes from scratch.
    fresh = Diagnostician("rack", CHEM, CAPACITY_AH)
    fresh.restore_state(diag.export_state())
    expected = fresh.update(next(readings))
    assert after.capacity_fade_pct_per_year > 100.0  # 1 % a day
    for name in (
        "capacity_fade_pct_per_year",
        "eol_projected_ts_ms",
        "soh_forecast_pct",
        "soh_forecast_low_pct",
        "soh_forecast_high_pct",
    ):
        assert getattr(after, name) == getattr(expected, name), name
    assert after.soh_forecast_pct != before.soh_forecast_pct


def test_cycle_life_follows_the_soc_between_cached_polls():
    sim = SimulatedString(
        SimOptions(cells=4, profile="daily", c_rate=1.0, day_length_s=7200.0, seed=2),
        CHEM,
        CAPACITY_AH,
    )
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    for reading in sim.readings(duration_s=3 * 7200.0, poll_s=10.0):
        d = diag.update(reading)
        # The same cycles counted afresh: the cached damage is never stale.
        residue = diag.cycles.counter.residue_cycles()
        damage = diag.cycles.closed_damage + cycle_damage(CHEM, residue)
        assert d.life_used_pct == 100.0 * damage
    assert d.life_used_pct > 0.0


def test_leak_currents_between_rests_equal_a_fresh_computation(monkeypatch):
    real = AnomalyDetector._leak
    computed = _spy(monkeypatch, AnomalyDetector, "_leak")
    leak = {"kind": "self_discharge", "cell": 5, "current_a": 0.5}
    sim = SimulatedString(
        SimOptions(cells=16, profile="daily", day_length_s=6 * 3600, seed=3, faults=[leak]),
        CHEM,
        CAPACITY_AH,
    )
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    polls = 0
    for reading in sim.readings(duration_s=8 * 3600, poll_s=10.0):
        d = diag.update(reading)
        polls += 1
        anomaly = diag.cells.anomaly
        slope = anomaly._leak_cache[1]
        fresh_leak, fresh_limit = real(anomaly, slope), anomaly._leak_limit(slope)
        np.testing.assert_allclose(d.cell_self_discharge_a, fresh_leak, rtol=1e-9, atol=0)
        np.testing.assert_allclose(anomaly._leak_view(slope)[1], fresh_limit, rtol=1e-9, atol=0)
        # The cells named as leaking are those a fresh comparison names.
        leaking = np.flatnonzero(finite_or(fresh_leak) > fresh_limit)
        np.testing.assert_array_equal(anomaly._leak_view(slope)[2], leaking)
        assert set(leaking) <= set(d.anomalous_cells)
    assert d.cell_self_discharge_a[5] > 0.2  # the rests did measure the leak
    assert 5 in d.anomalous_cells
    assert polls / 10 < len(computed) < polls / 2  # each settled poll, not every poll


def test_cell_resistance_ratios_equal_a_fresh_computation_and_are_computed_per_step(monkeypatch):
    computed = _spy(monkeypatch, ResistanceEstimator, "_cell_ratio")
    sim = _regulation(c_rate=0.3)
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    for reading in sim.readings(duration_s=1200.0, poll_s=1.0):
        diag.update(reading)
        res = diag.cells.resistance
        r0 = res.r0_25c_ohm[1:]
        np.testing.assert_array_equal(res.cell_r0_ratio, r0 / finite_median(r0))
    assert np.isfinite(diag.cells.resistance.cell_r0_ratio).all()
    assert len(computed) < 1200 * 0.75  # polls without a step reuse the last one


def test_pulse_resistance_is_recomputed_at_pulse_steps_only_and_equals_a_fresh_computation(
    monkeypatch,
):
    """Steps below 0.4C (most of a regulation duty's) move the small-signal fit, not the 1-s
    pulse sums: the pulse views read the same until a pulse step."""
    computed = _spy(monkeypatch, ResistanceEstimator, "_pulse_sigma")
    sim = _regulation(c_rate=2.0)
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    for reading in sim.readings(duration_s=600.0, poll_s=1.0):
        diag.update(reading)
        res = diag.cells.resistance
        fresh = ResistanceEstimator(CHEM, CAPACITY_AH, 16)
        fresh.load(res.state())
        for view in ("pulse_1s_ohm", "pulse_1s_sigma_ohm", "small_signal_25c_ohm", "r0_25c_ohm"):
            np.testing.assert_array_equal(getattr(res, view), getattr(fresh, view))
    assert np.isfinite(diag.cells.resistance.pulse_1s_ohm).all()
    assert 0 < len(computed) - 600 < 0.2 * 600  # 600 of them the fresh estimators'


def test_temperature_factor_is_computed_once_a_poll(monkeypatch):
    """The SOC filters, the resistance fit and the current limits read R(T)/R(25 °C) of the
    same temperatures each poll: one computation serves all three."""
    calls = []
    real = resistance.temperature_factor

    def spy(chem, temperature_c):
        calls.append(1)
        return real(chem, temperature_c)

    monkeypatch.setattr(engine, "temperature_factor", spy)
    monkeypatch.setattr(resistance, "temperature_factor", spy)
    sim = SimOptions(cells=16, profile="regulation", c_rate=0.5, ambient_c=35.0, seed=3)
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    for polls, reading in enumerate(
        SimulatedString(sim, CHEM, CAPACITY_AH).readings(duration_s=300.0, poll_s=1.0), 1
    ):
        diag.update(reading)
        assert len(calls) == polls
    assert diag.cells.resistance.steps.min() > 0  # the resistance fit used its steps


def test_cells_counting_capacity_is_kept_between_refits_and_equals_a_fresh_computation():
    """What each cell's SOC filter counts with (the string's capacity times the cell's ratio
    once it is trusted) is the same array until the capacity or the ratios change."""

    def fresh(diag: Diagnostician) -> np.ndarray:
        cap = diag.cells.capacity.result(diag.capacity.capacity_ah, diag.capacity.capacity_sigma_ah)
        with np.errstate(invalid="ignore"):
            trusted = cap.ratio_sigma < engine.TRUSTED_CAPACITY_SIGMA * cap.ratio
        return diag.capacity_ah * np.where(trusted, cap.ratio, 1.0)

    sim = SimulatedString(SimOptions(cells=16, profile="idle", seed=1), CHEM, CAPACITY_AH)
    readings = iter(sim.readings(duration_s=100.0, poll_s=1.0))
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    diag.update(next(readings))
    first = diag._cell_counting_capacity_ah()
    for _ in range(5):
        diag.update(next(readings))
        assert diag._cell_counting_capacity_ah() is first
    np.testing.assert_array_equal(first, np.full(16, CAPACITY_AH))
    _refit_with_fade(diag, days=3)
    diag.update(next(readings))
    after = diag._cell_counting_capacity_ah()
    assert diag.capacity_ah != CAPACITY_AH
    np.testing.assert_array_equal(after, fresh(diag))
    assert not after.flags.writeable


def test_rated_life_of_a_new_string_is_computed_once_per_chemistry(monkeypatch):
    """Before any cycle the remaining life is the chemistry's rated one: a constant, which a
    new string's every poll read afresh."""
    real = Chemistry.cycle_life
    calls = _spy(monkeypatch, Chemistry, "cycle_life")
    life = CycleLife(NMC, CAPACITY_AH)
    for _ in range(100):
        assert life.summary()["remaining_cycles"] == float(real(NMC, NMC.dod_ref)) * NMC.dod_ref
    life.chemistry = LFP
    assert life.summary()["remaining_cycles"] == float(real(LFP, LFP.dod_ref)) * LFP.dod_ref
    assert len(calls) == 2


def test_cell_views_refresh_when_asked_with_the_time_since_and_safety_runs_every_poll(
    monkeypatch,
):
    refreshes = _spy(monkeypatch, AnomalyDetector, "update")
    thermal = _spy(monkeypatch, ThermalMonitor, "update")
    diag = Diagnostician("rack", CHEM, CAPACITY_AH)
    polls = list(_regulation(c_rate=0.3).readings(duration_s=30.0, poll_s=0.1))
    hot = polls[155]  # a skipped poll: over the discharge limit (60 °C) on one sensor
    hot.cell_temperature_c = hot.cell_temperature_c.copy()
    hot.cell_temperature_c[3] = 75.0
    last_refresh, socs = None, set()
    for i, reading in enumerate(polls):
        d = diag.update(reading, cell_views=i % 10 == 0)
        socs.add(d.soc_pct)
        if i % 10 == 0:
            last_refresh = d
        assert d.cell_spread_v == last_refresh.cell_spread_v  # carried between refreshes
        assert d.cell_zscore is last_refresh.cell_zscore
        cells = reading.cell_voltage_v
        np.testing.assert_array_equal(d.cell_deviation_v, cells - np.median(cells))
        assert (d.thermal_risk_level > 0) == (reading is hot)
    assert len(refreshes) == len(thermal) == 30
    # Each refresh after the first is given the ten polls' time since the one before.
    np.testing.assert_allclose([args[1] for args in refreshes[1:]], 1.0, rtol=1e-9)
    np.testing.assert_allclose([args[1] for args in thermal[1:]], 1.0, rtol=1e-9)
    assert len(socs) == len(polls)  # the SOC filter still ran at every poll


def test_a_hot_cell_is_named_within_a_refresh_of_when_every_poll_refreshes():
    """The thermal view (two-minute rates, a 30-s hold for a hot cell) refreshes with the
    per-cell views: at 10 Hz with a refresh a second, a hot cell is named at most 1 s later."""
    polls = list(_regulation(c_rate=0.3).readings(duration_s=60.0, poll_s=0.1))
    for reading in polls[50:]:  # sensor 3 runs 8 K hot from 5 s on
        reading.cell_temperature_c = reading.cell_temperature_c.copy()
        reading.cell_temperature_c[3] += 8.0
    named_s = []
    for every in (1, 10):
        diag = Diagnostician("rack", CHEM, CAPACITY_AH)
        named = [
            i
            for i, reading in enumerate(polls)
            if any(
                "hot cell" in why
                for why in diag.update(reading, i % every == 0).thermal_risk_reasons
            )
        ]
        assert named, f"hot cell never named with a refresh every {every} polls"
        named_s.append(named[0] * 0.1)
    assert abs(named_s[0] - (5.0 + 30.0)) <= 0.2  # the 30-s hold after the cell turned hot
    assert 0.0 <= named_s[1] - named_s[0] <= 1.0


def test_cells_soc_counted_once_a_refresh_stays_with_every_polls(monkeypatch):
    """The cells' SOC filter runs with the views: the charge since its last run as a mean
    current, the voltages' ohmic drop at this poll's current. Ten minutes of a 0.5C regulation
    duty at 10 Hz end within 0.1 % SOC of every poll's (0.04; the mean current for the ohmic
    drop too gave 0.2)."""
    polls = list(_regulation(c_rate=0.5).readings(duration_s=600.0, poll_s=0.1))
    cell_soc = []
    for every in (1, 10):
        steps = _spy(monkeypatch, SocFilter, "step")
        diag = Diagnostician("rack", CHEM, CAPACITY_AH)
        for i, reading in enumerate(polls):
            diag.update(reading, i % every == 0)
        assert len(steps) == len(polls) + len(range(0, len(polls), every))  # string: every poll
        cell_soc.append(diag.cells.soc.soc_pct.copy())
        monkeypatch.undo()
    assert np.abs(cell_soc[0] - cell_soc[1]).max() < 0.1
