"""The gateway's storage backend: the daemon's SQLite file, read beside the running daemon.

Connections are read-only (``mode=ro``) and one per thread, so the API's worker threads read in
parallel under WAL without ever taking the write lock the daemon's commits need; the only write,
queueing an acknowledgement, goes through :meth:`Store.request_ack` exactly as ``bess-edge ack``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from bess_edge.storage.cells import unpack_cells
from bess_edge.storage.models import (
    DIAGNOSIS_FIELDS,
    READING_FIELDS,
    AckRequest,
    Alert,
    AlertQuery,
    CellSnapshot,
    DeviceOverview,
    DeviceState,
    Event,
    ReadingSummary,
    Series,
    SeriesField,
    StorageHealth,
    Stream,
)
from bess_edge.storage.per_thread import PerThread
from bess_edge.storage.sqlite_reads import SqliteReads

# Diagnoses are large JSON documents: at most this many are parsed per bucket (base.py).
DIAGNOSES_PER_BUCKET = 4
_SUMMARY_COLUMNS = (
    "seq, ts_ms, quality, " + ", ".join(READING_FIELDS) + ", status_flags, fault_flags, "
    "length(cell_voltage_v) / 4 AS cell_count, quality_notes"
)


class _Reader(SqliteReads):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)


class SqliteStorage:
    """:class:`bess_edge.storage.base.Storage` over the daemon's SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no data yet (has the daemon run?)")
        self._readers = PerThread(self._open_reader, lambda r: r.conn.close())

    # -- connections ----------------------------------------------------------------------

    def _open_reader(self) -> _Reader:
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=10.0,
            check_same_thread=False,
        )  # fmt: skip
        return _Reader(conn)

    @property
    def _r(self) -> _Reader:
        return self._readers.get()

    def close(self) -> None:
        self._readers.close()

    def _one(self, sql: str, *params: Any) -> Any:
        row = self._r.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    # -- devices --------------------------------------------------------------------------

    def _device_names(self) -> list[str]:
        rows = self._r.conn.execute(
            "SELECT device FROM device_state UNION "
            "SELECT device FROM seqs WHERE stream = 'telemetry' ORDER BY 1"
        )
        return [r[0] for r in rows]

    def devices(self) -> list[DeviceOverview]:
        return [self._overview(name) for name in self._device_names()]

    def device(self, device: str) -> DeviceOverview | None:
        return self._overview(device) if device in self._device_names() else None

    def _overview(self, device: str) -> DeviceOverview:
        r = self._r
        state_row = r.db.execute(
            "SELECT comms, last_ok_ts_ms, last_attempt_ts_ms, consecutive_failures, last_error, "
            "polls, poll_errors FROM device_state WHERE device = ?",
            [device],
        ).fetchone()
        state = DeviceState(**dict(zip(DeviceState.model_fields, state_row, strict=True)))
        reading_rows = list(
            r.db.query(
                f"SELECT {_SUMMARY_COLUMNS} FROM samples WHERE device = ? "
                "ORDER BY seq DESC LIMIT 1",
                [device],
            )
        )
        reading = None
        if reading_rows:
            row = reading_rows[0]
            row["quality_notes"] = json.loads(row["quality_notes"] or "[]")
            row["cell_count"] = row["cell_count"] or 0
            reading = ReadingSummary(**row)
        diagnosis = r.latest_diagnosis(device)
        if diagnosis is not None:
            diagnosis = {k: v for k, v in diagnosis.items() if not k.startswith("cell_")}
        active = self._one(
            "SELECT count(*) FROM alerts WHERE device = ? AND state = 'active'", device
        )
        return DeviceOverview(
            device=device,
            state=state if state_row else None,
            reading=reading,
            diagnosis=diagnosis,
            active_alerts=int(active or 0),
        )

    # -- time series ----------------------------------------------------------------------

    def series(
        self,
        device: str,
        stream: Stream,
        since_ms: int,
        until_ms: int,
        max_points: int,
        fields: list[str] | None = None,
    ) -> Series | None:
        if device not in self._device_names():
            return None
        names = list(fields or (READING_FIELDS if stream == "readings" else DIAGNOSIS_FIELDS))
        bucket_ms = max(1, -(-(until_ms - since_ms) // max_points))
        params: dict[str, Any] = {
            "device": device, "since": since_ms, "until": until_ms, "bucket": bucket_ms,
        }  # fmt: skip
        if stream == "readings":
            rows = self._reading_buckets(names, params)
        else:
            rows = self._diagnosis_buckets(names, params, max_points)
        out = Series(
            device=device, stream=stream, since_ms=since_ms, until_ms=until_ms,
            bucket_ms=bucket_ms, ts_ms=[since_ms + row[0] * bucket_ms for row in rows],
            count=[row[1] for row in rows], fields={},
        )  # fmt: skip
        for i, name in enumerate(names):
            base = 2 + 3 * i
            out.fields[name] = SeriesField(
                min=[_finite(row[base]) for row in rows],
                max=[_finite(row[base + 1]) for row in rows],
                mean=[_finite(row[base + 2]) for row in rows],
            )
        return out

    def _reading_buckets(self, names: list[str], params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """One range scan of the covering index ``samples_trend`` per bucket, in bucket order.

        A GROUP BY on the bucket number would sort all rows in a temporary B-tree first: twice
        the time for 86,400 rows. Each bucket's aggregates come back as one JSON array (SQLite
        writes REALs with 15 significant digits there, far beyond any sensor).
        """
        aggregates = ", ".join(f"min({n}), max({n}), avg({n})" for n in names)
        sql = (
            "WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + 1 FROM k "
            "WHERE b + 1 < (:until - :since + :bucket - 1) / :bucket) "
            f"SELECT b, (SELECT json_array(count(*), {aggregates}) FROM samples "
            "WHERE device = :device AND ts_ms >= :since + b * :bucket "
            "AND ts_ms < min(:until, :since + (b + 1) * :bucket)) FROM k"
        )
        rows = []
        for b, packed in self._r.conn.execute(sql, params):
            values = json.loads(packed)
            if values[0]:
                rows.append((b, *values))
        return rows

    def _diagnosis_buckets(
        self, names: list[str], params: dict[str, Any], max_points: int
    ) -> list[tuple[Any, ...]]:
        """At most DIAGNOSES_PER_BUCKET evenly strided diagnoses per bucket (base.py)."""
        count = self._one(
            "SELECT count(*) FROM diagnoses WHERE device = ? AND ts_ms >= ? AND ts_ms < ?",
            params["device"], params["since"], params["until"],
        )  # fmt: skip
        params = {
            **params,
            "stride": max(1, int(count or 0) // (max_points * DIAGNOSES_PER_BUCKET)),
        }
        # One JSON parse per row: all fields are extracted at once into a small array.
        paths = ", ".join(f"'$.{name}'" for name in names)
        columns = [
            f"json_extract(j, '$[{i}]')" if len(names) > 1 else "j" for i in range(len(names))
        ]
        aggregates = ", ".join(f"min({c}), max({c}), avg({c})" for c in columns)
        sql = (
            f"SELECT (ts_ms - :since) / :bucket AS b, count(*), {aggregates} "
            f"FROM (SELECT ts_ms, json_extract(data, {paths}) AS j FROM diagnoses "
            "WHERE device = :device AND ts_ms >= :since AND ts_ms < :until "
            "AND seq % :stride = 0) GROUP BY b ORDER BY b"
        )
        return self._r.conn.execute(sql, params).fetchall()

    # -- cells ----------------------------------------------------------------------------

    def cells(self, device: str, at_ms: int | None = None) -> CellSnapshot | None:
        at = at_ms if at_ms is not None else 2**62
        row = self._r.conn.execute(
            "SELECT seq, ts_ms, cell_voltage_v, cell_temperature_c FROM samples "
            "WHERE device = ? AND ts_ms <= ? ORDER BY ts_ms DESC, seq DESC LIMIT 1",
            (device, at),
        ).fetchone()
        if row is None:
            return None
        seq, ts_ms, volts, temps = row
        data = self._one(
            "SELECT data FROM diagnoses WHERE device = ? AND ts_ms = ? ORDER BY seq DESC LIMIT 1",
            device, ts_ms,
        )  # fmt: skip
        diagnosis = json.loads(data) if data else {}
        return CellSnapshot(
            device=device,
            seq=seq,
            ts_ms=ts_ms,
            cell_voltage_v=_finite_list(unpack_cells(volts).tolist(), 5),
            cell_temperature_c=_finite_list(unpack_cells(temps).tolist(), 3),
            weak_cells=diagnosis.get("weak_cells") or [],
            anomalous_cells=diagnosis.get("anomalous_cells") or [],
            cell_soc_pct=diagnosis.get("cell_soc_pct") or [],
            cell_r0_ohm=diagnosis.get("cell_r0_ohm") or [],
        )

    # -- alerts and events ----------------------------------------------------------------

    def alerts(self, query: AlertQuery) -> list[Alert]:
        filters = query.model_dump(exclude={"limit"})
        rows = self._r.alert_history(limit=query.limit, filters=filters)
        return [Alert(**row) for row in rows]

    def alert(self, alert_id: int) -> Alert | None:
        rows = self._r.alert_history(limit=1, filters={"id": alert_id})
        return Alert(**rows[0]) if rows else None

    def events(self, limit: int = 100, device: str | None = None) -> list[Event]:
        where = "WHERE e.device = ?" if device else ""
        rows = self._r.db.query(
            "SELECT e.ts_ms, e.device, 'alert' AS kind, e.transition, e.alert_id, a.rule, "
            "a.severity, a.message, e.actor, e.note FROM alert_events e "
            f"JOIN alerts a ON a.id = e.alert_id {where} ORDER BY e.id DESC LIMIT ?",
            [device, limit] if device else [limit],
        )
        return [Event(**row) for row in rows]

    def request_ack(self, alert_id: int, actor: str, note: str | None) -> int:
        from bess_edge.store import Store  # the write path, opened only for this one insert

        store = Store(self.path)
        try:
            return store.request_ack(alert_id, actor, note)
        finally:
            store.close()

    def ack_request(self, request_id: int) -> AckRequest | None:
        rows = list(self._r.db.query("SELECT * FROM pending_acks WHERE id = ?", [request_id]))
        return AckRequest(**rows[0]) if rows else None

    def health(self) -> StorageHealth:
        wal = self.path.with_name(self.path.name + "-wal")
        size = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return StorageHealth(
            backend="sqlite",
            newest_sample_ts_ms=self._one("SELECT max(ts_ms) FROM samples"),
            size_bytes=size,
            unsent_rows=int(self._one("SELECT count(*) FROM outbox") or 0),
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _finite_list(values: list[float], digits: int) -> list[float | None]:
    return [round(v, digits) if math.isfinite(v) else None for v in values]
