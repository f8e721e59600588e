"""POST /api/v1/diagnose/{kind} answers every Diagnosis field in some estimate's group."""

from __future__ import annotations

import dataclasses

import pytest

from bess_edge.api.diagnose import KIND_FIELDS, DiagnoseInput, run
from bess_edge.diagnostics.diagnosis import Diagnosis

FIELDS = [f.name for f in dataclasses.fields(Diagnosis)]


def test_every_diagnosis_field_is_in_a_group():
    """A field added to Diagnosis must be given a group in bess_edge/api/diagnose.py (a name
    prefix in FIELD_PREFIXES, or the name in FIELD_KINDS), or no kind but "all" answers it."""
    grouped = {name for group in KIND_FIELDS.values() for name in group}
    assert [name for name in FIELDS if name not in grouped] == []


def _series() -> DiagnoseInput:
    """Two minutes of a 4-cell string: 0.5C discharge, then a step to rest."""
    samples = [
        {"ts_ms": 1_000 * i, "pack_voltage_v": 13.2,
         "pack_current_a": -50.0 if i < 60 else 0.0,
         "cell_voltage_v": [3.30, 3.31, 3.29, 3.30], "cell_temperature_c": [25.0, 25.2]}
        for i in range(1, 120)
    ]  # fmt: skip
    return DiagnoseInput.model_validate({"capacity_ah": 100.0, "samples": samples})


@pytest.mark.parametrize(
    ("kind", "newer"),
    [
        ("soc", "ocv_source"),
        ("soh", "usable_capacity_ah"),
        ("soh", "soh_energy_pct"),
        ("soh", "soh_forecast_pct"),
        ("resistance", "r0_pulse_1s_ohm"),
        ("resistance", "r0_small_signal_ohm"),
        ("thermal", "thermal_risk_level"),
    ],
)
def test_an_estimate_answers_its_newer_fields_and_the_polls_context(kind, newer):
    result = run(kind, _series()).result
    assert newer in result
    assert {"quality_flags", "estimator_warnings", "rest_s"} <= set(result)
    assert "anomalous_cells" not in result  # the other estimates' fields are left out
