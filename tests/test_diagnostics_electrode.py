"""The electrode-level OCV model: windows fitted to a full-cell curve, and why a cell faded."""

import dataclasses
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import test_diagnostics_ocv_learn as ocv_learn_duty
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LEAD_ACID, LFP, NMC, Chemistry
from bess_edge.diagnostics import persist
from bess_edge.diagnostics.electrode import (
    MAX_RESIDUAL_V,
    degradation_modes,
    fit_cell,
    full_cell_ocv,
)
from bess_edge.diagnostics.electrode_ocp import LIBRARY, HalfCell
from bess_edge.diagnostics.electrode_tracker import ELECTRODE_REFIT_S, ElectrodeReference
from bess_edge.diagnostics.engine import Diagnostician
from bess_edge.model import Reading

SOC_PCT = np.linspace(0.0, 100.0, 41)
NOISE_V = 0.002  # what a commissioning table or a learned curve carries, at least


def _cell_curve(
    pos: HalfCell, neg: HalfCell, c_n: float, c_p: float, n_li: float, v_min: float, v_max: float
) -> tuple[np.ndarray, float]:
    """Windows of a cell built from electrode capacities [Ah] and its lithium [Ah], cycled
    between two voltage limits: (x0, x100, y0, y100) and its capacity [Ah]."""

    def x_at(volts: float) -> float:
        lo, hi = max(0.0, (n_li - c_p) / c_n), min(1.0, n_li / c_n)
        for _ in range(60):  # the cell voltage rises with x at fixed lithium
            mid = 0.5 * (lo + hi)
            y = (n_li - c_n * mid) / c_p
            v = float(pos(np.array([y]))[0] - neg(np.array([mid]))[0])
            lo, hi = (mid, hi) if v < volts else (lo, mid)
        return 0.5 * (lo + hi)

    x0, x100 = x_at(v_min), x_at(v_max)
    windows = np.array([x0, x100, (n_li - c_n * x0) / c_p, (n_li - c_n * x100) / c_p])
    return windows, c_n * (x100 - x0)


def _fit(chem: Chemistry, ocv: np.ndarray):
    return fit_cell(chem, SOC_PCT, ocv, sigma_v=np.full(ocv.size, NOISE_V))


# NMC: the LG M50's electrodes (Chen et al. 2020: C_n 5.83 Ah, C_p 8.73 Ah, 7.61 Ah of lithium,
# 2.5-4.2 V). LFP: the A123 cell's (Safari & Delacourt 2011), 2.5-3.65 V.
CELLS = {
    "nmc": (NMC, "nmc811_chen2020", "graphite_chen2020", 5.83, 8.73, 7.61, 2.5, 4.2),
    "lfp": (LFP, "lfp_safari2011", "graphite_safari2011", 2.6, 2.5, 2.45, 2.5, 3.65),
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    ("lli", "lam_pe", "lam_ne"),
    [(0.10, 0.0, 0.0), (0.0, 0.10, 0.0), (0.0, 0.0, 0.10), (0.06, 0.04, 0.03)],
)
def test_lithium_lost_is_told_apart_from_active_material_lost(cell, lli, lam_pe, lam_ne):
    chem, pos_name, neg_name, c_n, c_p, n_li, v_min, v_max = CELLS[cell]
    pos, neg = LIBRARY[pos_name], LIBRARY[neg_name]
    rng = np.random.default_rng(7)
    fresh_w, fresh_q = _cell_curve(pos, neg, c_n, c_p, n_li, v_min, v_max)
    aged_w, aged_q = _cell_curve(
        pos, neg, c_n * (1 - lam_ne), c_p * (1 - lam_pe), n_li * (1 - lli), v_min, v_max
    )
    noise = NOISE_V * rng.standard_normal((2, SOC_PCT.size))
    fresh = _fit(chem, full_cell_ocv(pos, neg, fresh_w, SOC_PCT / 100) + noise[0])
    aged = _fit(chem, full_cell_ocv(pos, neg, aged_w, SOC_PCT / 100) + noise[1])
    assert fresh is not None and aged is not None
    assert (aged.positive, aged.negative) == (pos_name, neg_name)
    assert fresh.matched and aged.residual_v < 1.5 * NOISE_V
    np.testing.assert_allclose(fresh.params, fresh_w, atol=0.02)
    # Capacities known to 0.5 %, as a commissioning test or the rests' fit gives them.
    m = degradation_modes(aged, aged_q, 0.005 * aged_q, fresh, fresh_q, 0.005 * fresh_q)
    print(cell, m)
    for fitted, sigma, truth in (
        (m.lli_pct, m.lli_sigma_pct, 100 * lli),
        (m.lam_pe_pct, m.lam_pe_sigma_pct, 100 * lam_pe),
        (m.lam_ne_pct, m.lam_ne_sigma_pct, 100 * lam_ne),
    ):
        assert abs(fitted - truth) < 2.0  # percentage points
        assert abs(fitted - truth) < 3.0 * sigma + 0.2
        assert sigma < 2.5


def test_a_cell_unlike_every_library_curve_is_no_match_and_gets_no_modes():
    # A positive electrode no one published: Chen's NMC811 with a step of 80 mV at mid-
    # lithiation (a second phase), on Chen's graphite.
    base = LIBRARY["nmc811_chen2020"]
    odd = HalfCell(
        "odd", "nmc", "positive", lambda y: base.ocp(y) + 0.08 * np.tanh((0.55 - y) / 0.03)
    )
    neg = LIBRARY["graphite_chen2020"]
    windows = np.array([0.03, 0.9, 0.9, 0.27])
    ocv = full_cell_ocv(odd, neg, windows, SOC_PCT / 100)
    ocv += NOISE_V * np.random.default_rng(3).standard_normal(ocv.size)
    fit = _fit(NMC, ocv)
    assert fit is not None
    print(f"foreign cell: {fit.positive}/{fit.negative}, {1000 * fit.residual_v:.1f} mV RMS")
    assert fit.residual_v > 2 * MAX_RESIDUAL_V and not fit.matched
    # Even against a reference that did match, a poor fit gives no modes rather than a guess.
    reference = _fit(NMC, full_cell_ocv(base, neg, windows, SOC_PCT / 100))
    assert reference is not None and reference.matched
    m = degradation_modes(fit, 5.0, 0.01, reference, 5.0, 0.01)
    assert all(math.isnan(v) for v in dataclasses.astuple(m))


def test_a_chemistry_without_electrode_curves_gets_no_fit():
    ocv = np.linspace(1.95, 2.12, SOC_PCT.size)
    assert _fit(LEAD_ACID, ocv) is None


def _commissioned_and_aged_nmc():
    """An LG M50-like cell's commissioning fit and its curve after 5 % LLI and 8 % LAM_PE:
    (fresh fit, reference, aged OCV [V] on SOC_PCT, its sigma [V], aged capacity (Ah, sigma))."""
    pos, neg = LIBRARY["nmc811_chen2020"], LIBRARY["graphite_chen2020"]
    fresh_w, fresh_q = _cell_curve(pos, neg, 5.83, 8.73, 7.61, 2.5, 4.2)
    aged_w, aged_q = _cell_curve(pos, neg, 5.83, 8.73 * 0.92, 7.61 * 0.95, 2.5, 4.2)
    fresh = _fit(NMC, full_cell_ocv(pos, neg, fresh_w, SOC_PCT / 100))
    assert fresh is not None
    reference = ElectrodeReference(fresh, fresh_q, 0.005 * fresh_q)
    aged_ocv = full_cell_ocv(pos, neg, aged_w, SOC_PCT / 100)
    sigma = np.full(SOC_PCT.size, NOISE_V)
    return fresh, reference, aged_ocv, sigma, (aged_q, 0.005 * aged_q)


def test_a_new_ocv_curve_gives_the_diagnosis_its_modes_and_they_survive_a_restart():
    fresh, reference, aged_ocv, sigma, aged_capacity = _commissioned_and_aged_nmc()
    diag = Diagnostician("rack", NMC, 5.0, electrode_reference=reference)
    reading = Reading("rack", 0, pack_voltage_v=3.6, pack_current_a=0.0)
    assert math.isnan(diag.update(reading).lli_pct)  # nothing new since commissioning

    diag.refit_electrodes(SOC_PCT, aged_ocv, sigma, capacity=aged_capacity)
    d = diag.update(Reading("rack", 1000, pack_voltage_v=3.6, pack_current_a=0.0))
    assert abs(d.lli_pct - 5.0) < 1.0 and abs(d.lam_pe_pct - 8.0) < 1.0
    assert abs(d.lam_ne_pct) < 1.0 and 0 < d.lam_pe_uncertainty_pct < 1.5
    assert d.electrode_pair == "nmc811_chen2020/graphite_chen2020"
    assert d.to_dict()["lli_pct"] == pytest.approx(d.lli_pct, rel=1e-5)

    restarted = Diagnostician("rack", NMC, 5.0)  # no commissioning file this time
    restarted.restore_state(diag.export_state())
    again = restarted.update(Reading("rack", 2000, pack_voltage_v=3.6, pack_current_a=0.0))
    assert again.lli_pct == d.lli_pct and again.lam_pe_uncertainty_pct == d.lam_pe_uncertainty_pct
    assert restarted.electrode.reference is not None
    np.testing.assert_allclose(restarted.electrode.reference.windows.params, fresh.params)


def test_without_a_reference_the_first_matched_fit_becomes_it():
    pos, neg = LIBRARY["lfp_safari2011"], LIBRARY["graphite_safari2011"]
    windows, q = _cell_curve(pos, neg, 2.6, 2.5, 2.45, 2.5, 3.65)
    diag = Diagnostician("rack", LFP, 2.3)
    ocv = full_cell_ocv(pos, neg, windows, SOC_PCT / 100)
    unknown_q = diag.refit_electrodes(SOC_PCT, ocv)  # the capacity is not known yet
    assert unknown_q is not None and unknown_q.matched and diag.electrode.reference is None
    diag.refit_electrodes(SOC_PCT, ocv, capacity=(q, 0.01 * q))
    d = diag.update(Reading("rack", 0, pack_voltage_v=3.3, pack_current_a=0.0))
    assert diag.electrode.reference is not None
    assert abs(d.lli_pct) < 0.5 and abs(d.lam_ne_pct) < 0.5  # nothing lost since itself


def test_points_known_only_loosely_neither_make_nor_break_a_match():
    # A learned curve: known to 2 mV near the rests, its prior's 60 mV (and 40 mV off) elsewhere.
    pos, neg = LIBRARY["nmc811_chen2020"], LIBRARY["graphite_chen2020"]
    windows = np.array([0.03, 0.9, 0.9, 0.27])
    ocv = full_cell_ocv(pos, neg, windows, SOC_PCT / 100)
    loose = (np.arange(SOC_PCT.size) % 3) == 0
    sigma = np.where(loose, 0.060, NOISE_V)
    ocv = ocv + np.where(loose, 0.040, NOISE_V * np.random.default_rng(5).standard_normal(ocv.size))
    fit = fit_cell(NMC, SOC_PCT, ocv, sigma)
    assert fit is not None and fit.matched, fit.mismatch if fit else None
    assert fit.points == int(np.sum(~loose)) and fit.residual_v < 3 * NOISE_V
    np.testing.assert_allclose(fit.params, windows, atol=0.02)

    # The same curve known well at only 10 points is no match, however well it fits.
    few = np.where(np.arange(SOC_PCT.size) < 10, NOISE_V, 0.060)
    sparse = fit_cell(NMC, SOC_PCT, ocv, few)
    assert sparse is not None and not sparse.matched
    assert "fewer than 12 points" in sparse.mismatch


def test_the_learned_curve_is_handed_to_the_electrode_model_at_most_daily():
    # A cell of the LG M50's electrodes, 8 % below its label, learned from rests (the duty of
    # test_diagnostics_ocv_learn.py).
    windows = np.array([0.06, 0.9, 0.85, 0.27])
    soc = np.linspace(0.0, 100.0, 41)
    pos, neg = LIBRARY["nmc811_chen2020"], LIBRARY["graphite_chen2020"]
    cell = NMC.with_ocv_table(soc, full_cell_ocv(pos, neg, windows, soc / 100), "file")
    options = SimOptions(
        cells=1, profile="constant", seed=3, initial_soc_pct=55.0, capacity_spread_pct=0.0,
        current_offset_a=0.8, soc_spread_pct=0.0,
    )  # fmt: skip
    sim = SimulatedString(options, cell, ocv_learn_duty.TRUE_AH)
    diag = Diagnostician("cell", NMC, ocv_learn_duty.LABEL_AH)
    t_ms, fitted_at, d = 0, set(), None
    for leg in ocv_learn_duty.LEGS:
        (d,), t_ms = ocv_learn_duty._run(diag, sim, [leg], t_ms)
        if math.isfinite(diag.electrode.refit_ts_s):
            fitted_at.add(diag.electrode.refit_ts_s)
    assert d is not None and d.ocv_source == "learned"
    assert d.electrode_pair and math.isfinite(d.electrode_fit_residual_v)
    times = sorted(fitted_at)
    print(f"electrode fits at {[round(t / 3600, 1) for t in times]} h: {d.electrode_pair}")
    assert len(times) >= 2 and np.all(np.diff(times) >= ELECTRODE_REFIT_S)
    # Most of the learned knots are known to 12-25 mV after two days: too loosely to tell
    # electrode pairs apart, so no modes are reported (the honest answer, not a guess).
    fit = diag.electrode.fit
    assert fit is not None and "fewer than 12 points" in fit.mismatch
    assert math.isnan(d.lli_pct) and math.isnan(d.lam_ne_pct)


def test_a_fit_on_another_thread_is_adopted_whole_and_equals_the_inline_one():
    fresh, reference, aged_ocv, sigma, aged_capacity = _commissioned_and_aged_nmc()
    readings = [Reading("rack", t, pack_voltage_v=3.6, pack_current_a=0.0) for t in (0, 1000)]

    inline = Diagnostician("rack", NMC, 5.0, electrode_reference=reference)
    assert inline.refit_electrodes(SOC_PCT, aged_ocv, sigma, aged_capacity)
    expected = [inline.update(r) for r in readings]

    # The worker's fit waits for a gate: the polls meanwhile see (and save) the state before it.
    gate = threading.Event()
    worker = ThreadPoolExecutor(1)
    threaded = Diagnostician(
        "rack", NMC, 5.0, electrode_reference=reference,
        fit_runner=lambda fn: worker.submit(lambda: gate.wait(10) and fn()),
    )  # fmt: skip
    saved_before = persist.unpack(threaded.export_state())[1]["electrode"]
    assert threaded.refit_electrodes(SOC_PCT, aged_ocv, sigma, aged_capacity) is None
    pending = threaded.update(readings[0])
    assert math.isnan(pending.lli_pct)
    assert pending.electrode_pair == f"{fresh.positive}/{fresh.negative}"  # the reference's
    saved_pending = persist.unpack(threaded.export_state())[1]["electrode"]
    assert saved_pending.keys() == saved_before.keys()
    for key, value in saved_before.items():
        np.testing.assert_array_equal(saved_pending[key], value)
    gate.set()
    worker.shutdown(wait=True)
    adopted = threaded.update(readings[1])
    fields = [
        "lli_pct", "lli_uncertainty_pct", "lam_pe_pct", "lam_pe_uncertainty_pct", "lam_ne_pct",
        "lam_ne_uncertainty_pct", "electrode_pair", "electrode_fit_residual_v",
    ]  # fmt: skip
    assert math.isfinite(adopted.lli_pct)
    assert [getattr(adopted, f) for f in fields] == [getattr(expected[1], f) for f in fields]
    saved_inline = persist.unpack(inline.export_state())[1]["electrode"]
    saved_adopted = persist.unpack(threaded.export_state())[1]["electrode"]
    assert saved_adopted.keys() == saved_inline.keys()
    for key, value in saved_inline.items():
        np.testing.assert_array_equal(saved_adopted[key], value)
