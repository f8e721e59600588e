"""Safety and thermal: risk rises on the way to a limit, not once it is crossed."""

import tomllib

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.alerts.engine import AlertEngine
from bess_edge.chemistry import LFP, NMC
from bess_edge.config import ThresholdRule
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.safety import check_limits
from bess_edge.diagnostics.thermal import (
    OUTLIER_HOLD_S,
    OUTLIER_K,
    ThermalMonitor,
    neighbour_excess_c,
    sensor_of_cell,
)
from bess_edge.resources import data_dir


# Idle: heat with no current to explain it. Daily: the heater starts while the string charges.
@pytest.mark.parametrize(("profile", "fault_at_s"), [("idle", 900.0), ("daily", 1500.0)])
def test_overheating_cell_raises_thermal_risk_before_the_hard_limit_is_crossed(profile, fault_at_s):
    heater = {"kind": "over_temperature", "cell": 7, "heat_w": 80.0, "at_s": fault_at_s}
    options = SimOptions(cells=16, profile=profile, day_length_s=4 * 3600, seed=5, faults=[heater])
    sim = SimulatedString(options, NMC, 100.0)
    diag = Diagnostician("string", NMC, 100.0)
    limit_c = NMC.discharge_temp_max_c
    raised_at_c = None
    for reading in sim.readings(duration_s=4 * 3600, poll_s=5.0):
        d = diag.update(reading)
        hottest = float(sim.temperature_c.max())
        if reading.ts_ms < fault_at_s * 1000:
            assert d.thermal_risk_level == 0, d.thermal_risk_reasons
        if d.thermal_risk_level >= 1 and raised_at_c is None:
            raised_at_c = hottest
            reasons = d.thermal_risk_reasons
        if hottest >= limit_c:
            break
    print(f"{profile}: risk raised at {raised_at_c} °C ({reasons}); limit {limit_c} °C")
    assert hottest >= limit_c, "the fault should have driven the cell past the limit"
    assert raised_at_c is not None and raised_at_c < limit_c - 10.0
    assert d.thermal_risk_level >= 2
    assert any("sensor 7" in r or "over-temperature" in r for r in d.thermal_risk_reasons)


def test_risk_names_the_level_and_the_reason_for_an_over_voltage():
    findings = check_limits(LFP, 280.0, np.array([3.3, 3.3, 3.80]), np.array([25.0]), 10.0)
    assert findings == [(3, "over-voltage: cell at 3.800 V")]


def _shipped_lfp_rules() -> AlertEngine:
    """An alert engine with the shipped LFP threshold rules and the built-in ones."""
    rules = [ThresholdRule(**r) for r in tomllib.loads(
        (data_dir("config") / "thresholds-lfp.toml").read_text())["thresholds"]]  # fmt: skip
    return AlertEngine(rules, 0, [])


def test_charging_at_minus_one_degree_is_a_limit_alert_not_a_runaway_precursor():
    """-1 °C while charging raised thermal_runaway_precursor ("under-temperature"); cold slows
    every reaction. The shipped cell-undertemperature rule is the alert for it."""
    engine = _shipped_lfp_rules()
    sim = SimulatedString(
        SimOptions(cells=16, profile="constant", current_a=20.0, ambient_c=-1.0, seed=3),
        LFP,
        280.0,
    )
    diag = Diagnostician("rack-1", LFP, 280.0)
    raised = []
    for i in range(40):  # 200 s at 5 s polls: past the rule's for_s = 60 s
        sim.advance(5.0)
        reading = sim.measure(1_700_000_000_000 + i * 5_000, "rack-1")
        d = diag.update(reading)
        assert d.thermal_risk_level == 0, d.thermal_risk_reasons
        raised += [t.rule for t in engine.evaluate(reading, d) if t.transition == "raised"]
    assert float(sim.temperature_c.max()) < 0.0
    assert "cell-undertemperature" in raised
    assert "thermal_runaway_precursor" not in raised


def test_a_cell_below_its_minimum_voltage_is_a_limit_alert_not_a_runaway_precursor():
    """One LFP cell read at 2.45 V (minimum 2.5 V) on an idle string raised
    thermal_runaway_precursor ("under-voltage", level 2). A low voltage is the shipped
    cell-undervoltage rule's alert; it is no sign of runaway by itself."""
    engine = _shipped_lfp_rules()
    sim = SimulatedString(
        SimOptions(cells=16, profile="idle", initial_soc_pct=5.0, seed=3), LFP, 280.0
    )
    diag = Diagnostician("rack-1", LFP, 280.0)
    raised = []
    for i in range(12):  # 60 s at 5 s polls: past the rule's for_s = 2 s
        sim.advance(5.0)
        reading = sim.measure(1_700_000_000_000 + i * 5_000, "rack-1")
        reading.cell_voltage_v[6] = 2.45
        d = diag.update(reading)
        assert d.thermal_risk_level == 0, d.thermal_risk_reasons
        raised += [t.rule for t in engine.evaluate(reading, d) if t.transition == "raised"]
    assert "cell-undervoltage" in raised
    assert "thermal_runaway_precursor" not in raised


def test_neighbour_excess_finds_the_hot_spot():
    excess = neighbour_excess_c(np.array([25.0, 25.5, 33.0, 25.2, np.nan]))
    assert excess[2] == pytest.approx(33.0 - 25.35)
    assert excess[4] != excess[4]  # NaN sensor stays unknown


def test_a_restored_thermal_monitor_scores_exactly_as_the_one_it_was_saved_from():
    """The saved state keeps its per-sensor layout (t_* temperatures, v_* voltage sags, one
    entry per sensor), and a monitor loaded from it continues bit for bit."""
    heater = {"kind": "over_temperature", "cell": 2, "heat_w": 60.0, "at_s": 600.0}
    options = SimOptions(cells=12, temperature_sensors=4, seed=3, faults=[heater])
    sim = SimulatedString(options, NMC, 100.0)
    readings = list(sim.readings(duration_s=3600, poll_s=5.0))
    running = ThermalMonitor(NMC, 100.0, 4)
    block = sensor_of_cell(12, 4)

    def poll(monitor, reading):
        deviation = reading.cell_voltage_v - np.median(reading.cell_voltage_v)
        per_block = np.array([deviation[block == k].mean() for k in range(4)])
        current = reading.pack_current_a
        return monitor.update(5.0, reading.cell_temperature_c, per_block, current)

    for reading in readings[:360]:
        poll(running, reading)
    saved = running.state()
    assert saved["t_s0"].shape == saved["v_pxy"].shape == (4,)
    restored = ThermalMonitor(NMC, 100.0, 4)
    restored.load(saved)
    for reading in readings[360:]:
        a, b = poll(running, reading), poll(restored, reading)
        np.testing.assert_array_equal(a.rate_k_per_min, b.rate_k_per_min)
        np.testing.assert_array_equal(a.precursor_score, b.precursor_score)
        assert a.findings == b.findings
    assert a.findings  # the heated cell was found


def test_a_sensor_between_two_unknown_ones_has_no_neighbour_excess():
    excess = neighbour_excess_c(np.array([np.nan, 40.0, np.nan, 25.0]))
    assert np.isnan(excess[1]) and np.isnan(excess[3])
    assert np.isnan(excess[0]) and np.isnan(excess[2])  # an unknown sensor stays unknown


def test_a_hot_cell_is_reported_once_it_has_stood_out_for_the_hold_and_a_cool_poll_restarts_it():
    monitor = ThermalMonitor(NMC, 100.0, 16)
    normal = np.full(16, 25.0)
    hot = normal.copy()
    hot[5] = 25.0 + OUTLIER_K + 1.0

    def polls_until_reported(temps):
        for poll in range(1, 100):
            if any(
                "hot cell at sensor 5" in why
                for _, why in monitor.update(5.0, temps, np.zeros(16), 0.0).findings
            ):
                return poll
        return None

    assert polls_until_reported(hot) == OUTLIER_HOLD_S / 5.0
    monitor.update(5.0, normal, np.zeros(16), 0.0)  # one poll without the excess
    assert polls_until_reported(hot) == OUTLIER_HOLD_S / 5.0
