"""Cycle counting and life: the streaming rainflow counter against the ASTM reference package."""

import numpy as np
import pytest
import rainflow

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics.cycles import CycleLife, RainflowCounter, cycle_damage, dod_histogram


def _stream(series: np.ndarray) -> list[tuple[float, float]]:
    counter = RainflowCounter()
    cycles = []
    for value in series:
        cycles += counter.push(float(value))
    return sorted(cycles + counter.residue_cycles())


@pytest.mark.parametrize("seed", range(20))
def test_streaming_rainflow_counts_equal_the_reference_package_on_random_profiles(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(0, 400))
    if seed % 3 == 0:  # SOC-like random walk, clipped, with plateaus from rounding
        series = np.clip(50 + np.cumsum(rng.normal(0, 4, length)), 0, 100).round(0)
    elif seed % 3 == 1:  # small integers: many repeated values and equal ranges
        series = rng.integers(0, 6, length).astype(float)
    else:
        series = rng.normal(size=length)
    reference = sorted((rng_, count) for rng_, _, count, _, _ in rainflow.extract_cycles(series))
    assert _stream(series) == reference
    totals: dict[float, float] = {}
    for range_, count in _stream(series):
        totals[range_] = totals.get(range_, 0.0) + count
    assert sorted(totals.items()) == rainflow.count_cycles(series)


def test_rainflow_state_survives_export_mid_series():
    series = np.random.default_rng(7).normal(size=300).cumsum()
    first = RainflowCounter()
    cycles = [c for v in series[:150] for c in first.push(float(v))]
    second = RainflowCounter()
    second.load(first.state())
    cycles += [c for v in series[150:] for c in second.push(float(v))]
    cycles += second.residue_cycles()
    assert sorted(cycles) == _stream(series)


def test_hysteresis_drops_noise_cycles_but_keeps_the_daily_cycle():
    rng = np.random.default_rng(1)
    day = np.concatenate([np.linspace(20, 90, 500), np.linspace(90, 20, 500)])
    noisy = np.tile(day, 3) + rng.normal(0, 0.1, 3000)
    counter = RainflowCounter(hysteresis=0.5)
    cycles = [c for v in noisy for c in counter.push(float(v))] + counter.residue_cycles()
    deep = sum(count for range_, count in cycles if range_ > 60)
    assert deep == pytest.approx(3.0, abs=0.5)
    assert sum(count for range_, count in cycles if range_ < 5) == 0


def test_damage_of_reference_depth_cycles_matches_the_woehler_curve():
    # cycle_life_ref full cycles at dod_ref is exactly one life.
    for chem in (NMC, LFP):
        cycles = [(chem.dod_ref * 100.0, 1.0)] * 10
        assert cycle_damage(chem, cycles) == pytest.approx(10 / chem.cycle_life_ref)
    # Shallower cycles do less damage per cycle.
    assert cycle_damage(NMC, [(20.0, 1.0)]) < cycle_damage(NMC, [(80.0, 1.0)]) / 4


def test_dod_histogram_bins_cycles_by_depth():
    hist = dod_histogram([(5.0, 1.0), (55.0, 0.5), (55.0, 1.0), (100.0, 1.0)])
    assert hist.tolist() == [1, 0, 0, 0, 0, 1.5, 0, 0, 0, 1]


def test_daily_cycles_give_equivalent_full_cycles_histogram_and_remaining_life():
    life = CycleLife(NMC, nominal_capacity_ah=100.0)
    step_pct = 20.0 * 60.0 / 3600.0  # 20 A for a minute on 100 Ah
    soc = 10.0
    for _ in range(10):  # ten days of 10 % -> 86.7 % -> 10 % at 20 A, a sample a minute
        for direction in (1, -1):
            for _ in range(230):
                soc += direction * step_pct
                life.update(soc, 20.0 * direction, 60.0)
    depth = 230 * step_pct / 100.0
    summary = life.summary()
    assert life.equivalent_full_cycles == pytest.approx(10 * depth, rel=1e-6)
    assert summary["dod_histogram"][7] == pytest.approx(10.0)
    # Miner's rule at one depth: the whole life is cycle_life(depth) such cycles.
    assert life.equivalent_full_cycles + summary["remaining_cycles"] == pytest.approx(
        float(NMC.cycle_life(depth)) * depth, rel=0.02
    )
