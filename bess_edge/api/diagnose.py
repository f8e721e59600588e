"""Run the gateway's Diagnostician over a posted time series (for data without a gateway).

Input is JSON (:class:`DiagnoseInput`) or the CSV that ``bess-edge export`` writes (``ts_ms``,
``pack_voltage_v``, ``pack_current_a``, ``cell_voltage_v_0`` ..., ``cell_temperature_c_0`` ...;
other columns are ignored). The answer holds the fields of the asked-for estimate at the last
sample, and its trajectory over the series.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from bess_edge.chemistry import get_chemistry
from bess_edge.diagnostics.diagnosis import Diagnosis
from bess_edge.diagnostics.engine import Diagnostician
from bess_edge.model import Reading

Kind = Literal["soc", "soh", "resistance", "cycles", "balance", "thermal", "anomaly", "all"]
# Each estimate's headline field, whose trajectory over the series is returned.
HEADLINES: dict[str, str] = {
    "soc": "soc_pct", "soh": "soh_pct", "resistance": "r0_ohm",
    "cycles": "equivalent_full_cycles", "balance": "cell_spread_v",
    "thermal": "thermal_runaway_score", "anomaly": "anomalous_cells",
}  # fmt: skip
# Context of the poll, answered with every estimate.
COMMON = "common"

# Which estimates answer a Diagnosis field (docs/diagnostics.md says what each is). A NEW
# FIELD needs nothing here when its name starts with a prefix below; otherwise add its name to
# FIELD_KINDS (checked first). tests/test_api_diagnose_groups.py fails for a field in no group.
FIELD_KINDS: dict[str, tuple[str, ...]] = {
    "cell_soc_pct": ("soc",),
    "current_offset_a": ("soc",),
    "current_offset_uncertainty_a": ("soc",),
    "soh_resistance_pct": ("soh", "resistance"),
    "recoverable_capacity_ah": ("soh",),
    "equivalent_full_cycles": ("cycles",),
    "life_used_pct": ("cycles",),
    "remaining_cycles": ("cycles",),
    "dod_histogram": ("cycles",),
    "cell_spread_v": ("balance",),
    "cell_soc_spread_pct": ("balance",),
    "cell_deviation_v": ("balance",),
    "cell_self_discharge_a": ("balance",),
    "weak_cells": ("balance",),
    "cell_zscore": ("anomaly",),
    "device_id": (COMMON,),
    "ts_ms": (COMMON,),
    "rest_s": (COMMON,),
    "quality_flags": (COMMON,),
    "estimator_warnings": (COMMON,),
    "diagnostics_error": (COMMON,),
}
FIELD_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("soc_", ("soc",)),
    ("ocv_", ("soc",)),
    ("soh_", ("soh",)),
    ("capacity_", ("soh",)),
    ("usable_", ("soh",)),
    ("eol_", ("soh",)),
    ("r0_", ("resistance",)),
    ("cell_r0_", ("resistance",)),
    ("cell_capacity_", ("soh", "balance")),
    ("imbalance_", ("balance",)),
    ("balancing_", ("balance",)),
    ("thermal_", ("thermal",)),
    ("temperature_", ("thermal",)),
    ("anomal", ("anomaly",)),
    # Why the cell faded (electrode.py): ageing, so the SOH estimate answers it.
    ("lli_", ("soh",)),
    ("lam_", ("soh",)),
    ("electrode_", ("soh",)),
)


def kinds_of(name: str) -> tuple[str, ...]:
    """The estimates (or COMMON) that answer the Diagnosis field ``name``; () for none."""
    if name in FIELD_KINDS:
        return FIELD_KINDS[name]
    return next((kinds for prefix, kinds in FIELD_PREFIXES if name.startswith(prefix)), ())


def _groups() -> dict[str, tuple[str, ...]]:
    """Each estimate's fields in Diagnosis order, its headline first."""
    groups: dict[str, list[str]] = {kind: [] for kind in (*HEADLINES, COMMON)}
    for f in dataclasses.fields(Diagnosis):
        for kind in kinds_of(f.name):
            groups[kind].append(f.name)
    return {
        kind: tuple(sorted(names, key=lambda n: n != HEADLINES.get(kind)))
        for kind, names in groups.items()
    }


KIND_FIELDS = _groups()
MAX_TRAJECTORY_POINTS = 1000


class SampleIn(BaseModel):
    ts_ms: int
    pack_voltage_v: float | None = None
    pack_current_a: float  # > 0 charging
    cell_voltage_v: list[float | None] = []
    cell_temperature_c: list[float | None] = []


class DiagnoseInput(BaseModel):
    chemistry: str = "lfp"
    capacity_ah: float = Field(gt=0, description="rated capacity of the series string")
    initial_soc_pct: float | None = Field(None, ge=0, le=100)
    samples: list[SampleIn] = Field(min_length=2)

    @field_validator("chemistry")
    @classmethod
    def _known(cls, value: str) -> str:
        get_chemistry(value)
        return value.lower()

    @field_validator("samples")
    @classmethod
    def _in_time_order(cls, value: list[SampleIn]) -> list[SampleIn]:
        for i in range(1, len(value)):
            if value[i].ts_ms <= value[i - 1].ts_ms:
                raise ValueError(f"samples[{i}].ts_ms is not after samples[{i - 1}].ts_ms")
        return value


class DiagnoseResult(BaseModel):
    kind: Kind
    samples: int
    ts_ms: int  # of the last sample, when ``result`` holds
    result: dict[str, Any]
    trajectory: dict[str, list[float | int | None]]  # ts_ms and the headline field


def samples_from_csv(text: str) -> list[dict[str, Any]]:
    """Rows of an export CSV as SampleIn-shaped dicts; ValueError names a bad row."""
    reader = csv.DictReader(io.StringIO(text))
    fields = list(reader.fieldnames or [])
    missing = [c for c in ("ts_ms", "pack_current_a") if c not in fields]
    if missing:
        raise ValueError(f"CSV header lacks {', '.join(missing)} (columns as bess-edge export)")
    volt_cols = _indexed(fields, "cell_voltage_v_")
    temp_cols = _indexed(fields, "cell_temperature_c_")
    out = []
    for line, row in enumerate(reader, start=2):
        try:
            out.append({
                "ts_ms": int(row["ts_ms"]),
                "pack_voltage_v": _num(row.get("pack_voltage_v")),
                "pack_current_a": float(row["pack_current_a"]),
                "cell_voltage_v": [_num(row[c]) for c in volt_cols],
                "cell_temperature_c": [_num(row[c]) for c in temp_cols],
            })  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ValueError(f"CSV line {line}: {exc}") from None
    return out


def _indexed(fields: list[str], prefix: str) -> list[str]:
    cols = [f for f in fields if f.startswith(prefix) and f[len(prefix) :].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(prefix) :]))


def _num(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def run(kind: Kind, data: DiagnoseInput) -> DiagnoseResult:
    doctor = Diagnostician(
        "posted", get_chemistry(data.chemistry), data.capacity_ah,
        initial_soc_pct=data.initial_soc_pct,
    )  # fmt: skip
    headline = HEADLINES.get(kind, HEADLINES["soc"])  # "all": the SOC's trajectory
    fields = KIND_FIELDS[COMMON] + KIND_FIELDS.get(kind, ())
    every = max(1, math.ceil(len(data.samples) / MAX_TRAJECTORY_POINTS))
    times: list[float | int | None] = []
    values: list[float | int | None] = []
    last: dict[str, Any] = {}
    for i, s in enumerate(data.samples):
        reading = Reading(
            "posted", ts_ms=s.ts_ms,
            pack_voltage_v=_nan(s.pack_voltage_v), pack_current_a=s.pack_current_a,
            cell_voltage_v=np.array([_nan(v) for v in s.cell_voltage_v]),
            cell_temperature_c=np.array([_nan(t) for t in s.cell_temperature_c]),
        )  # fmt: skip
        last = doctor.update(reading).to_dict()
        if i % every == 0 or i == len(data.samples) - 1:
            times.append(s.ts_ms)
            values.append(last.get(headline))
    result = last if kind == "all" else {k: last.get(k) for k in fields}
    return DiagnoseResult(
        kind=kind, samples=len(data.samples), ts_ms=data.samples[-1].ts_ms, result=result,
        trajectory={"ts_ms": times, headline: values},
    )  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
