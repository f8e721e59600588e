"""How general the electrode-level OCV model is: fits to PyBaMM cells, with and without their
own half-cell curves in the library (leave-one-out).

For each parameter set the full-cell OCV is computed from the set's own OCP functions over the
stoichiometric windows PyBaMM's electrode SOH solver gives at the set's voltage cut-offs (41
points, 0..100 % SOC). ``diagnostics/electrode.py`` fits it twice: with the whole library,
and with the set's own curves taken out (what a cell of unknown materials looks like). The
aged cells (the accuracy benchmark's ageing: lithium inventory and active material lost) are
fitted against their fresh cell's fit as reference; the true modes come from PyBaMM's
electrode capacities. A second table fits the commissioning tables of the accuracy benchmark's
cells (the bulk OCV along a C/20 discharge of the SPMe from its widened upper cut-off, at the
cell's temperature, with its C/20 capacity), as ``bess-edge commission`` would give them.

    .venv/bin/pip install -r benchmarks/requirements.txt
    nice -n 10 .venv/bin/python benchmarks/electrode_fit.py
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
import pybamm
from accuracy_cells import CELLS as ACCURACY_CELLS
from accuracy_cells import CellSpec, characterise

from bess_edge.chemistry import get_chemistry
from bess_edge.diagnostics.electrode import (
    ElectrodeWindows,
    degradation_modes,
    electrode_capacities,
    fit_windows,
)
from bess_edge.diagnostics.electrode_ocp import LIBRARY, HalfCell, curves

SOC_PCT = np.linspace(0.0, 100.0, 41)
# The library curves each parameter set is built from (Prada2013 borrows Chen's graphite).
OWN_CURVES = {
    "Chen2020": ("nmc811_chen2020", "graphite_chen2020"),
    "Mohtat2020": ("nmc532_mohtat2020", "graphite_mohtat2020"),
    "NCA_Kim2011": ("nca_kim2011", "graphite_kim2011"),
    "Prada2013": ("lfp_afshar2017", "graphite_chen2020"),
}
CELLS = (
    (CellSpec("nmc", "Chen2020", "nmc"), None),
    (CellSpec("nmc-aged", "Chen2020", "nmc", lli=0.08, lam_ne=0.05), "nmc"),
    (CellSpec("nmc-aged-pe", "Chen2020", "nmc", lli=0.03, lam_pe=0.10), "nmc"),
    (CellSpec("nmc532", "Mohtat2020", "nmc"), None),
    (CellSpec("nmc532-aged", "Mohtat2020", "nmc", lli=0.05, lam_pe=0.05), "nmc532"),
    (CellSpec("nca", "NCA_Kim2011", "nmc"), None),
    (CellSpec("nca-aged", "NCA_Kim2011", "nmc", lam_ne=0.08), "nca"),
    (CellSpec("lfp", "Prada2013", "lfp"), None),
    (CellSpec("lfp-aged", "Prada2013", "lfp", lli=0.06, lam_pe=0.04), "lfp"),
)


def full_cell(spec: CellSpec) -> tuple[np.ndarray, float, np.ndarray]:
    """OCV [V] on SOC_PCT, capacity [Ah], true (C_n, C_p, n_Li) [Ah] of a cell at 25 °C."""
    p = spec.parameters()
    fresh = pybamm.ParameterValues(spec.parameter_set)
    for key in ("Upper voltage cut-off [V]", "Lower voltage cut-off [V]"):
        p[key] = fresh[key]  # the accuracy benchmark widens them for its duty; not here
    param = pybamm.LithiumIonParameters()
    solver = pybamm.lithium_ion.ElectrodeSOHSolver(p, param=param)
    esoh = solver.solve(
        {
            "V_min": p["Lower voltage cut-off [V]"],
            "V_max": p["Upper voltage cut-off [V]"],
            "Q_n": p.evaluate(param.n.Q_init),
            "Q_p": p.evaluate(param.p.Q_init),
            "Q_Li": p.evaluate(param.Q_Li_particles_init),
        }
    )
    s = SOC_PCT / 100.0
    x = esoh["x_0"] + (esoh["x_100"] - esoh["x_0"]) * s
    y = esoh["y_0"] + (esoh["y_100"] - esoh["y_0"]) * s
    u_p, u_n = p["Positive electrode OCP [V]"], p["Negative electrode OCP [V]"]
    ocv = np.asarray(u_p(y), dtype=float) - np.asarray(u_n(x), dtype=float)
    truth = np.array([float(esoh[k]) for k in ("Q_n", "Q_p", "Q_Li")])
    return ocv, float(esoh["Q"]), truth


def fit(spec: CellSpec, ocv: np.ndarray, leave_out: bool) -> tuple[ElectrodeWindows | None, float]:
    chem = get_chemistry(spec.preset)
    own = OWN_CURVES[spec.parameter_set] if leave_out else ()
    library: dict[str, HalfCell] = {k: v for k, v in LIBRARY.items() if k not in own}
    t0 = time.process_time()
    w = fit_windows(
        SOC_PCT,
        ocv,
        curves(chem.positive_materials, "positive", library),
        curves(chem.negative_materials, "negative", library),
    )
    return w, time.process_time() - t0


def main() -> None:
    fresh: dict[str, tuple[dict[bool, ElectrodeWindows | None], float, np.ndarray]] = {}
    print(
        "cell | library | pair | residual mV | x0 x100 y0 y100 (true) | "
        "LLI / LAM_PE / LAM_NE % fitted ± 1σ (true) | CPU s"
    )
    for spec, reference in CELLS:
        ocv, q, truth = full_cell(spec)
        fits: dict[bool, ElectrodeWindows | None] = {}
        for leave_out in (False, True):
            w, cpu = fit(spec, ocv, leave_out)
            fits[leave_out] = w
            modes = ""
            if reference is not None and w is not None:
                ref_w = fresh[reference][0][leave_out]
                ref_q, ref_truth = fresh[reference][1], fresh[reference][2]
                true = 100.0 * (1.0 - truth / ref_truth)  # C_n, C_p, n_Li
                if ref_w is not None:
                    m = degradation_modes(w, q, 0.0, ref_w, ref_q, 0.0)
                    # What the modes would be without the match test (a match gives the same).
                    raw = 100.0 * (
                        1.0
                        - electrode_capacities(w.params, q)
                        / electrode_capacities(ref_w.params, ref_q)
                    )
                    modes = (
                        f"{m.lli_pct:.2f}±{m.lli_sigma_pct:.2f} ({true[2]:.2f}) / "
                        f"{m.lam_pe_pct:.2f}±{m.lam_pe_sigma_pct:.2f} ({true[1]:.2f}) / "
                        f"{m.lam_ne_pct:.2f}±{m.lam_ne_sigma_pct:.2f} ({true[0]:.2f}); "
                        f"ungated {raw[2]:.1f} / {raw[1]:.1f} / {raw[0]:.1f}"
                    )
            if w is None:
                print(f"{spec.name} | {'leave-one-out' if leave_out else 'full'} | no pair")
                continue
            fitted_caps = electrode_capacities(w.params, q)
            print(
                f"{spec.name} | {'leave-one-out' if leave_out else 'full'} | "
                f"{w.positive}/{w.negative} | {1000 * w.residual_v:.2f}"
                f"{'' if w.matched else ' (no match)'} | "
                + " ".join(f"{v:.3f}" for v in w.params)
                + " | C_n C_p n_Li "
                + " ".join(f"{v:.3f}" for v in fitted_caps)
                + " (true "
                + " ".join(f"{v:.3f}" for v in truth)
                + f") | {modes} | {cpu:.2f}"
            )
        if reference is None:
            fresh[spec.name] = (fits, q, truth)
        if not math.isfinite(q):
            raise SystemExit(f"{spec.name}: no capacity")


def commissioning_tables() -> None:
    """The accuracy benchmark's commissioning tables (cached solutions) through the model."""
    fresh_of = {"nmc-aged-35c": "nmc", "lfp-aged-35c": "lfp"}
    done: dict[str, tuple[ElectrodeWindows | None, float, np.ndarray]] = {}
    print("\ncommissioning table | pair | residual mV | LLI / LAM_PE / LAM_NE % (true)")
    for spec in ACCURACY_CELLS:
        truth_table = characterise(spec, True)
        inner = (truth_table.grid_pct >= 5.0) & (truth_table.grid_pct <= 95.0)
        chem = get_chemistry(spec.preset)
        w = fit_windows(
            truth_table.grid_pct[inner],
            truth_table.ocv_v[inner],
            curves(chem.positive_materials, "positive"),
            curves(chem.negative_materials, "negative"),
        )
        _, _, caps = full_cell(spec)
        q = truth_table.capacity_ah
        done[spec.name] = (w, q, caps)
        modes = ""
        ref = done.get(fresh_of.get(spec.name, ""))
        if ref is not None and w is not None and ref[0] is not None:
            m = degradation_modes(w, q, 0.0, ref[0], ref[1], 0.0)
            true = 100.0 * (1.0 - caps / ref[2])
            modes = (
                f"{m.lli_pct:.2f}±{m.lli_sigma_pct:.2f} ({true[2]:.2f}) / "
                f"{m.lam_pe_pct:.2f}±{m.lam_pe_sigma_pct:.2f} ({true[1]:.2f}) / "
                f"{m.lam_ne_pct:.2f}±{m.lam_ne_sigma_pct:.2f} ({true[0]:.2f})"
            )
        if w is None:
            print(f"{spec.name} | no pair")
            continue
        print(
            f"{spec.name} | {w.positive}/{w.negative} | {1000 * w.residual_v:.2f}"
            f"{'' if w.matched else ' (' + w.mismatch + ')'} | {modes}"
        )


if __name__ == "__main__":
    main()
    commissioning_tables()
