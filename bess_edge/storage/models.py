"""What a storage backend answers: plain Pydantic models, shared by the gateway and the cloud.

They are also the API's response models, so ``/docs`` documents exactly what a backend returns.
Times are integer ms since the Unix epoch (UTC); units are in the field names; a value that was
not measured (NaN on the device) is null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# Pack scalars of the samples table that a trend can show, in display order.
READING_FIELDS = (
    "pack_voltage_v",
    "pack_current_a",
    "pack_power_w",
    "bms_soc_pct",
    "bms_soh_pct",
    "cell_voltage_min_v",
    "cell_voltage_max_v",
    "cell_temperature_min_c",
    "cell_temperature_max_c",
)
# Scalar estimates of a Diagnosis that a trend can show (bess_edge/diagnostics/diagnosis.py).
DIAGNOSIS_FIELDS = (
    "soc_pct",
    "soc_uncertainty_pct",
    "soh_pct",
    "capacity_ah",
    "r0_ohm",
    "cell_spread_v",
    "temperature_max_c",
    "temperature_spread_c",
    "thermal_runaway_score",
    "equivalent_full_cycles",
)
Stream = Literal["readings", "diagnoses"]


class DeviceState(BaseModel):
    """The daemon's poll state of a device (comms ``ok`` / ``degraded`` / ``lost``)."""

    comms: str
    last_ok_ts_ms: int | None
    last_attempt_ts_ms: int | None
    consecutive_failures: int
    last_error: str | None
    polls: int
    poll_errors: int


class ReadingSummary(BaseModel):
    """One poll's pack scalars, without the cell arrays (see :class:`CellSnapshot`)."""

    seq: int
    ts_ms: int
    quality: int
    pack_voltage_v: float | None
    pack_current_a: float | None  # > 0 charging
    pack_power_w: float | None
    bms_soc_pct: float | None
    bms_soh_pct: float | None
    cell_voltage_min_v: float | None
    cell_voltage_max_v: float | None
    cell_temperature_min_c: float | None
    cell_temperature_max_c: float | None
    status_flags: int
    fault_flags: int
    cell_count: int
    quality_notes: list[Any] = []


class DeviceOverview(BaseModel):
    """A device at a glance: comms, latest reading, latest diagnosis (scalars and cell lists,
    per-cell arrays left out) and how many of its alerts are active."""

    device: str
    state: DeviceState | None
    reading: ReadingSummary | None
    diagnosis: dict[str, Any] | None
    active_alerts: int


class SeriesField(BaseModel):
    """One quantity per bucket; null where the bucket had no finite value."""

    min: list[float | None]
    max: list[float | None]
    mean: list[float | None]


class Series(BaseModel):
    """A time range cut into ``bucket_ms`` buckets (at most ``max_points``); empty buckets are
    left out, so ``ts_ms`` (each bucket's start) may have gaps where the device was silent."""

    device: str
    stream: Stream
    since_ms: int
    until_ms: int
    bucket_ms: int
    ts_ms: list[int]
    count: list[int]  # rows that fell in each bucket
    fields: dict[str, SeriesField]


class CellSnapshot(BaseModel):
    """Cell arrays of the poll at or just before a time, with the diagnosis of that poll."""

    device: str
    seq: int
    ts_ms: int
    cell_voltage_v: list[float | None]
    cell_temperature_c: list[float | None]
    weak_cells: list[int] = []  # low capacity or high resistance (diagnosis)
    anomalous_cells: list[int] = []
    cell_soc_pct: list[float | None] = []
    cell_r0_ohm: list[float | None] = []


class AlertEvent(BaseModel):
    seq: int
    ts_ms: int
    transition: str  # raised | acknowledged | cleared
    actor: str | None
    note: str | None


class Alert(BaseModel):
    """One alert episode, raised -> (acknowledged) -> cleared."""

    id: int
    device: str
    rule: str
    cell: int | None
    severity: str
    state: str  # active | cleared
    message: str
    value: float | None
    raised_ts_ms: int
    cleared_ts_ms: int | None
    acked_ts_ms: int | None
    acked_by: str | None
    ack_note: str | None
    events: list[AlertEvent] = []


class AlertQuery(BaseModel):
    """Filters of :meth:`Storage.alerts`; every one optional (None = any)."""

    state: Literal["active", "cleared"] | None = None
    device: str | None = None
    rule: str | None = None
    severity: Literal["info", "warning", "critical"] | None = None
    since_ms: int | None = None  # raised at or after
    until_ms: int | None = None  # raised before
    limit: int = Field(200, ge=1, le=10_000)


class Event(BaseModel):
    """Something the daemon did, newest first: today the alert transitions it committed."""

    ts_ms: int
    device: str
    kind: str  # "alert"
    transition: str
    alert_id: int
    rule: str
    severity: str
    message: str
    actor: str | None
    note: str | None


class AckRequest(BaseModel):
    """An acknowledgement queued for the daemon; ``result`` is set once it applied it."""

    id: int
    alert_id: int
    actor: str
    note: str | None
    requested_ts_ms: int
    done_ts_ms: int | None
    result: str | None


class StorageHealth(BaseModel):
    """Enough for /health and /metrics: is the data fresh, how big is the buffer."""

    backend: str
    newest_sample_ts_ms: int | None
    size_bytes: int | None
    unsent_rows: int | None
