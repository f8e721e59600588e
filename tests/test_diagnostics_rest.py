"""Rests and the current offset with sensors as they are: offsets up to ±3 % of 1C."""

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics import Diagnostician

CAPACITY_AH = 100.0


def _string(chemistry, offset_a: float, seed: int = 3) -> SimulatedString:
    options = SimOptions(
        cells=2,
        profile="daily",
        c_rate=0.25,
        day_length_s=6 * 3600,
        seed=seed,
        current_offset_a=offset_a,
        initial_soc_pct=50.0,
    )
    return SimulatedString(options, chemistry, CAPACITY_AH)


def _run(diag: Diagnostician, sim: SimulatedString, hours: float):
    rest_seen = 0.0
    d = None
    start_ms = round(sim.t_s * 1000)
    for reading in sim.readings(duration_s=hours * 3600, poll_s=10.0, start_ms=start_ms):
        d = diag.update(reading)
        rest_seen = max(rest_seen, d.rest_s)
    return d, rest_seen


@pytest.mark.parametrize("offset_a", [3.0, -3.0])
@pytest.mark.parametrize("chemistry", [NMC, LFP], ids=["nmc", "lfp"])
def test_offset_of_3_percent_of_1c_does_not_hide_rests_and_is_measured(chemistry, offset_a):
    # The daily profile rests 2.5 h after its charge: the rest must be seen, its mean current
    # taken as the offset (sign included), and the rest long enough to settle an OCV anchor.
    sim = _string(chemistry, offset_a)
    diag = Diagnostician("string", chemistry, CAPACITY_AH, initial_soc_pct=80.0)
    d, rest_seen = _run(diag, sim, hours=6.0)
    print(f"{chemistry.name} offset {offset_a}: estimate {d.current_offset_a:+.3f} A")
    assert rest_seen > 2 * 3600
    assert d.current_offset_a == pytest.approx(offset_a, abs=0.15)
    assert d.current_offset_uncertainty_a < 0.3


def test_a_wrong_sign_offset_is_detected_reported_and_corrected():
    sim = _string(NMC, 2.0)
    diag = Diagnostician("string", NMC, CAPACITY_AH, initial_soc_pct=50.0)
    _run(diag, sim, hours=1.5)  # charging by now
    # The filter is convinced of the opposite sign (as when a knee's SOC error was taken for
    # offset): -2 A with a sigma of 0.1 A.
    diag.string_soc.assume_bias(-2.0, 0.1)
    sigma_before = float(diag.string_soc.soc_sigma_pct[0])
    d, _ = _run(diag, sim, hours=4.5)  # through the long rest after the charge
    assert any("wrong sign" in w for w in d.estimator_warnings), d.estimator_warnings
    assert d.current_offset_a == pytest.approx(2.0, abs=0.15)
    assert sigma_before < d.soc_uncertainty_pct or np.abs(d.soc_pct - sim.soc.mean()) < 3.0


def test_offset_on_its_bound_is_reported_not_silently_kept():
    sim = _string(NMC, 0.5)
    diag = Diagnostician("string", NMC, CAPACITY_AH, initial_soc_pct=50.0)
    _run(diag, sim, hours=0.2)
    diag.string_soc.assume_bias(4.0, 0.01)  # pushed onto the ±4 %-of-1C bound
    d, _ = _run(diag, sim, hours=0.01)
    assert any("bound" in w for w in d.estimator_warnings), d.estimator_warnings
    assert d.current_offset_uncertainty_a >= 4.0 * 0.99
