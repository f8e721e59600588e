"""Run the gateway's Diagnostician over a posted time series (for data without a gateway).

Input is JSON (:class:`DiagnoseInput`) or the CSV that ``bess-edge export`` writes (``ts_ms``,
``pack_voltage_v``, ``pack_current_a``, ``cell_voltage_v_0`` ..., ``cell_temperature_c_0`` ...;
other columns are ignored). The answer holds the fields of the asked-for estimate at the last
sample, and its trajectory over the series.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from bess_edge.chemistry import get_chemistry
from bess_edge.diagnostics.engine import Diagnostician
from bess_edge.model import Reading

Kind = Literal["soc", "soh", "resistance", "cycles", "balance", "thermal", "anomaly", "all"]
# What each estimate is made of (Diagnosis fields; docs/diagnostics.md); the first is the
# headline whose trajectory is returned.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "soc": ("soc_pct", "soc_uncertainty_pct", "current_offset_a", "cell_soc_pct"),
    "soh": ("soh_pct", "capacity_ah", "capacity_uncertainty_ah", "soh_resistance_pct",
            "capacity_fade_pct_per_year", "eol_projected_ts_ms", "eol_projected_efc"),
    "resistance": ("r0_ohm", "cell_r0_mean_ohm", "soh_resistance_pct", "cell_r0_ohm"),
    "cycles": ("equivalent_full_cycles", "life_used_pct", "remaining_cycles", "dod_histogram"),
    "balance": ("cell_spread_v", "cell_soc_spread_pct", "imbalance_trend_pct_per_day",
                "weak_cells", "balancing_recommendation"),
    "thermal": ("thermal_runaway_score", "thermal_risk", "thermal_risk_reasons",
                "temperature_max_c", "temperature_spread_c", "temperature_rate_max_k_per_min"),
    "anomaly": ("anomalous_cells", "anomaly_reasons", "cell_zscore"),
}  # fmt: skip
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
    fields = KIND_FIELDS.get(kind) or KIND_FIELDS["soc"]
    headline = fields[0]
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
    if last.get("diagnostics_error"):
        result["diagnostics_error"] = last["diagnostics_error"]
    return DiagnoseResult(
        kind=kind, samples=len(data.samples), ts_ms=data.samples[-1].ts_ms, result=result,
        trajectory={"ts_ms": times, headline: values},
    )  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
