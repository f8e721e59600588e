"""Anomalies on a simulated string: a leaking cell is named, healthy cells are left alone."""

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.anomaly import robust_zscore

CAPACITY_AH = 100.0


def _string(chemistry, faults=(), seed=3, offset_a=0.2):
    options = SimOptions(
        cells=16,
        profile="daily",
        day_length_s=6 * 3600,
        seed=seed,
        current_offset_a=offset_a,
        faults=list(faults),
    )
    return SimulatedString(options, chemistry, CAPACITY_AH)


# 0.5 A on 100 Ah is 12 %/day, a soft short; the string rests 2.5 h in each 6-h "day". On the
# LFP plateau the OCV moves ~0.1 mV per % SOC, so the same drift is a tenth of the voltage signal:
# it gets a larger leak and more time.
@pytest.mark.parametrize(
    ("chemistry", "leak_a", "bound_h"), [(NMC, 0.5, 6.0), (LFP, 1.0, 12.0)], ids=["nmc", "lfp"]
)
def test_cell_with_high_self_discharge_is_named_within_a_bounded_time(chemistry, leak_a, bound_h):
    leak = {"kind": "self_discharge", "cell": 5, "current_a": leak_a}
    sim = _string(chemistry, [leak])
    diag = Diagnostician("string", chemistry, CAPACITY_AH)
    named_after_h = None
    for reading in sim.readings(duration_s=bound_h * 3600, poll_s=5.0):
        d = diag.update(reading)
        assert set(d.anomalous_cells) <= {5}, d.anomaly_reasons
        if d.anomalous_cells == [5]:
            named_after_h = reading.ts_ms / 3.6e6
            break
    print(f"{chemistry.name}: leaking cell named after {named_after_h} h")
    assert named_after_h is not None
    assert "self-discharge" in d.anomaly_reasons[0]
    assert d.cell_self_discharge_a[5] == pytest.approx(leak_a, rel=0.4)


def test_no_healthy_cell_is_flagged_over_two_days_of_cycling():
    sim = _string(NMC, seed=11, offset_a=-0.3)
    diag = Diagnostician("string", NMC, CAPACITY_AH)
    false_positives = 0
    polls = 0
    for reading in sim.readings(duration_s=48 * 3600, poll_s=10.0):
        d = diag.update(reading)
        polls += 1
        false_positives += len(d.anomalous_cells)
    print(f"false positives: {false_positives} cell-polls flagged in {polls} polls of 16 cells")
    assert false_positives == 0
    assert d.equivalent_full_cycles > 1.0  # the run really cycled the string


def test_robust_zscore_singles_out_the_outlier_and_ignores_nan():
    v = np.array([3.30, 3.301, 3.299, 3.30, 3.25, np.nan, 3.302])
    z = robust_zscore(v)
    assert np.isnan(z[5])
    assert z[4] < -3.5
    assert np.all(np.abs(np.delete(z, [4, 5])) < 1.5)
