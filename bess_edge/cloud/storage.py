"""The API's storage interface (:class:`bess_edge.storage.base.Storage`) over the cloud database.

One :class:`PostgresStorage` answers for one site, exactly as the gateway's SQLite backend does
for its own, so the same ``/api/v1`` and dashboard serve a site from the cloud; :class:`Fleet`
is the level above: the sites, and a storage per site. Alert ids are the gateway's, so an
acknowledgement asked for here (a row of ``ack_requests``) is sent by the ingest as the gateway's
own ``cmd/ack`` and the gateway, owner of its alert state, applies it and publishes the
``acknowledged`` transition like any other (DESIGN invariant 6). The alerts fleet rules raise in
the cloud (``cloud_alerts``) are in the same list with their id negated; the cloud owns those,
so the repair leader applies their acknowledgement itself.

Series are bucketed in the database (``GROUP BY`` on the bucket number over the
``(device_id, ts_ms)`` index, partitions outside the range pruned), never in Python.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from pydantic import BaseModel

from bess_edge.cloud.schema import DIAGNOSIS_HEADLINES
from bess_edge.cloud.writer import now_ms
from bess_edge.storage.models import (
    DIAGNOSIS_FIELDS,
    READING_FIELDS,
    AckRequest,
    Alert,
    AlertEvent,
    AlertQuery,
    CellSnapshot,
    DeviceOverview,
    Event,
    ReadingSummary,
    Series,
    SeriesField,
    StorageHealth,
    Stream,
)
from bess_edge.storage.per_thread import PerThread

_SUMMARY = (
    "seq, ts_ms, quality, " + ", ".join(READING_FIELDS) + ", coalesce(status_flags, 0), "
    "coalesce(fault_flags, 0), coalesce(cardinality(cell_voltage_v), 0), "
    "coalesce(quality_notes, '[]'::jsonb)"
)


# Every alert of the fleet as one relation: the gateways' episodes (alerts_current, their own
# ids) and the ones fleet rules raised in the cloud (cloud_alerts, ids negated).
_ALERTS = """
SELECT c.alert_id AS id, d.id AS device_id, d.device, s.site, c.rule, c.severity, c.state,
       c.message, c.raised_ms, c.updated_ms
FROM alerts_current c JOIN devices d ON d.id = c.device_id JOIN sites s ON s.id = d.site_id
UNION ALL
SELECT -a.id, d.id, d.device, s.site, t.name, coalesce(h.severity, t.severity),
       CASE WHEN a.cleared_ms IS NULL THEN 'raised' ELSE 'cleared' END, coalesce(h.message, ''),
       a.raised_ms, coalesce(a.cleared_ms, a.acknowledged_ms, a.raised_ms)
FROM cloud_alerts a JOIN alert_thresholds t ON t.id = a.threshold_id
JOIN devices d ON d.id = a.device_id JOIN sites s ON s.id = d.site_id
LEFT JOIN alert_history h ON h.source = 'cloud' AND h.alert_id = a.id AND h.device_id = a.device_id
     AND h.transition = 'raised'
"""


class SiteOverview(BaseModel):
    site: str
    name: str
    state: str | None  # the gateway's retained online/offline
    state_ts_ms: int | None
    last_seen_ms: int | None
    devices: int
    active_alerts: int
    open_gap_seqs: int


def _connections(url: str) -> PerThread[psycopg.Connection]:
    """One autocommit connection per thread, reopened when the server dropped it."""
    return PerThread(
        lambda: psycopg.connect(url, autocommit=True), lambda c: c.close(), lambda c: not c.closed
    )


class Fleet:
    """The level above devices: every site, and a :class:`PostgresStorage` per site."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.db = _connections(database_url)

    def sites(self) -> list[SiteOverview]:
        rows = (
            self.db.get()
            .execute(
                "SELECT s.site, s.name, s.state, s.state_ts_ms, s.last_seen_ms, "
                "(SELECT count(*) FROM devices d WHERE d.site_id = s.id AND d.device <> '_site'), "
                f"(SELECT count(*) FROM ({_ALERTS}) a WHERE a.site = s.site "
                " AND a.state <> 'cleared'), "
                "(SELECT coalesce(sum(g.seq_last - g.seq_first + 1), 0) FROM open_gaps g "
                " JOIN devices d ON d.id = g.device_id WHERE d.site_id = s.id) "
                "FROM sites s ORDER BY s.site"
            )
            .fetchall()
        )
        fields = SiteOverview.model_fields
        return [SiteOverview(**dict(zip(fields, row, strict=True))) for row in rows]

    def site(self, site: str) -> PostgresStorage | None:
        row = self.db.get().execute("SELECT 1 FROM sites WHERE site = %s", (site,)).fetchone()
        return PostgresStorage(self.url, site) if row else None

    def close(self) -> None:
        self.db.close()


class PostgresStorage:
    """:class:`bess_edge.storage.base.Storage` for one site of the cloud database."""

    def __init__(self, database_url: str, site: str) -> None:
        self.site = site
        self.db = _connections(database_url)

    def close(self) -> None:
        self.db.close()

    def _rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.db.get().execute(sql, params).fetchall()  # type: ignore[arg-type]

    def _device_id(self, device: str) -> int | None:
        rows = self._rows(
            "SELECT d.id FROM devices d JOIN sites s ON s.id = d.site_id "
            "WHERE s.site = %s AND d.device = %s",
            (self.site, device),
        )
        return int(rows[0][0]) if rows else None

    # -- devices --------------------------------------------------------------------------

    def devices(self) -> list[DeviceOverview]:
        rows = self._rows(
            "SELECT d.id, d.device FROM devices d JOIN sites s ON s.id = d.site_id "
            "WHERE s.site = %s AND d.device <> '_site' ORDER BY d.device",
            (self.site,),
        )
        return [self._overview(device_id, device) for device_id, device in rows]

    def device(self, device: str) -> DeviceOverview | None:
        device_id = self._device_id(device)
        return None if device_id is None else self._overview(device_id, device)

    def _overview(self, device_id: int, device: str) -> DeviceOverview:
        reading = self._rows(
            f"SELECT {_SUMMARY} FROM telemetry WHERE device_id = %s "  # type: ignore[arg-type]
            "ORDER BY ts_ms DESC LIMIT 1",
            (device_id,),
        )
        summary = None
        if reading:
            names = list(ReadingSummary.model_fields)
            summary = ReadingSummary(**dict(zip(names, reading[0], strict=True)))
        diagnosis_rows = self._rows(
            "SELECT diagnosis FROM battery_diagnostics WHERE device_id = %s "
            "ORDER BY ts_ms DESC LIMIT 1",
            (device_id,),
        )
        diagnosis = None
        if diagnosis_rows:
            diagnosis = {k: v for k, v in diagnosis_rows[0][0].items() if not k.startswith("cell_")}
        active = self._rows(
            f"SELECT count(*) FROM ({_ALERTS}) a WHERE device_id = %s AND state <> 'cleared'",  # type: ignore[arg-type]
            (device_id,),
        )[0][0]
        return DeviceOverview(
            device=device, state=None, reading=summary, diagnosis=diagnosis,
            active_alerts=int(active),
        )  # fmt: skip

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
        device_id = self._device_id(device)
        if device_id is None:
            return None
        names = list(fields or (READING_FIELDS if stream == "readings" else DIAGNOSIS_FIELDS))
        bucket_ms = max(1, -(-(until_ms - since_ms) // max_points))
        if stream == "readings":
            table, columns = "telemetry", list(names)
        else:
            table = "battery_diagnostics"
            columns = [
                n if n in DIAGNOSIS_HEADLINES else f"(diagnosis->>'{n}')::float8" for n in names
            ]
        finite = [f"nullif(nullif(nullif({c}, 'NaN'), 'Infinity'), '-Infinity')" for c in columns]
        aggregates = ", ".join(f"min({c}), max({c}), avg({c})" for c in finite)
        rows = self._rows(
            f"SELECT (ts_ms - %(since)s) / %(bucket)s AS b, count(*), {aggregates} "  # type: ignore[arg-type]
            f"FROM {table} WHERE device_id = %(device)s AND ts_ms >= %(since)s "
            "AND ts_ms < %(until)s GROUP BY b ORDER BY b",
            {"since": since_ms, "until": until_ms, "bucket": bucket_ms, "device": device_id},
        )
        out = Series(
            device=device, stream=stream, since_ms=since_ms, until_ms=until_ms,
            bucket_ms=bucket_ms, ts_ms=[since_ms + int(row[0]) * bucket_ms for row in rows],
            count=[int(row[1]) for row in rows], fields={},
        )  # fmt: skip
        for i, name in enumerate(names):
            base = 2 + 3 * i
            out.fields[name] = SeriesField(
                min=[_finite(row[base]) for row in rows],
                max=[_finite(row[base + 1]) for row in rows],
                mean=[_finite(row[base + 2]) for row in rows],
            )
        return out

    # -- cells ----------------------------------------------------------------------------

    def cells(self, device: str, at_ms: int | None = None) -> CellSnapshot | None:
        device_id = self._device_id(device)
        if device_id is None:
            return None
        rows = self._rows(
            "SELECT seq, ts_ms, cell_voltage_v, cell_temperature_c FROM telemetry "
            "WHERE device_id = %s AND ts_ms <= %s ORDER BY ts_ms DESC, seq DESC LIMIT 1",
            (device_id, at_ms if at_ms is not None else 2**62),
        )
        if not rows:
            return None
        seq, ts_ms, volts, temps = rows[0]
        found = self._rows(
            "SELECT diagnosis FROM battery_diagnostics WHERE device_id = %s AND ts_ms = %s "
            "ORDER BY seq DESC LIMIT 1",
            (device_id, ts_ms),
        )
        diagnosis = found[0][0] if found else {}
        return CellSnapshot(
            device=device, seq=seq, ts_ms=ts_ms,
            cell_voltage_v=_rounded(volts or [], 5), cell_temperature_c=_rounded(temps or [], 3),
            weak_cells=diagnosis.get("weak_cells") or [],
            anomalous_cells=diagnosis.get("anomalous_cells") or [],
            cell_soc_pct=diagnosis.get("cell_soc_pct") or [],
            cell_r0_ohm=diagnosis.get("cell_r0_ohm") or [],
        )  # fmt: skip

    # -- alerts and events ----------------------------------------------------------------

    def alerts(self, query: AlertQuery) -> list[Alert]:
        where, params = ["site = %(site)s"], {"site": self.site, "limit": query.limit}
        if query.state == "active":
            where.append("state <> 'cleared'")
        elif query.state == "cleared":
            where.append("state = 'cleared'")
        for key in ("device", "rule", "severity"):
            if getattr(query, key) is not None:
                where.append(f"{key} = %({key})s")
                params[key] = getattr(query, key)
        if query.since_ms is not None:
            where.append("raised_ms >= %(since)s")
            params["since"] = query.since_ms
        if query.until_ms is not None:
            where.append("raised_ms < %(until)s")
            params["until"] = query.until_ms
        return self._alerts(" AND ".join(where), params)

    def alert(self, alert_id: int) -> Alert | None:
        found = self._alerts(
            "site = %(site)s AND id = %(id)s", {"site": self.site, "id": alert_id, "limit": 1}
        )
        return found[0] if found else None

    def _alerts(self, where: str, params: dict[str, Any]) -> list[Alert]:
        rows = self._rows(
            f"SELECT id, device_id, device, rule, severity, state, message, raised_ms, "  # type: ignore[arg-type]
            f"updated_ms FROM ({_ALERTS}) a WHERE {where} "
            "ORDER BY raised_ms DESC NULLS LAST, id DESC LIMIT %(limit)s",
            params,
        )
        histories = self._histories([(row[1], row[0]) for row in rows])
        out = []
        for alert_id, device_id, device, rule, severity, state, message, raised, updated in rows:
            history = histories.get((device_id, alert_id), [])
            # seq 0: a transition made in the cloud, in no gateway's alerts stream
            events = [AlertEvent(seq=h[0] or 0, ts_ms=h[1], transition=h[2], actor=h[3],
                                 note=h[4]) for h in history]  # fmt: skip
            raised_row = next((h for h in history if h[2] == "raised"), None)
            acked = next((e for e in events if e.transition == "acknowledged"), None)
            cleared = next((e for e in events if e.transition == "cleared"), None)
            out.append(Alert(
                id=alert_id, device=device, rule=rule,
                cell=raised_row[5] if raised_row else None, severity=severity,
                state="cleared" if state == "cleared" else "active", message=message,
                value=raised_row[6] if raised_row else None,
                raised_ts_ms=raised if raised is not None else (events[0].ts_ms if events
                                                                else updated),
                cleared_ts_ms=cleared.ts_ms if cleared else None,
                acked_ts_ms=acked.ts_ms if acked else None,
                acked_by=acked.actor if acked else None,
                ack_note=acked.note if acked else None, events=events,
            ))  # fmt: skip
        return out

    def _histories(self, alerts: list[tuple[int, int]]) -> dict[tuple[int, int], list[Any]]:
        """Each alert's transitions (seq, ts_ms, transition, actor, note, cell, value) in order,
        by (device id, alert id), in one query. A cloud alert's id is its cloud_alerts id
        negated: gateway ids are positive."""
        if not alerts:
            return {}
        devices, ids = zip(*alerts, strict=True)
        rows = self._rows(
            "SELECT h.device_id, CASE WHEN h.source = 'cloud' THEN -h.alert_id ELSE h.alert_id "
            "END, seq, ts_ms, transition, actor, note, cell, value FROM alert_history h "
            "JOIN unnest(%s::int[], %s::bigint[]) AS a(device_id, alert_id) "
            "ON h.device_id = a.device_id AND h.alert_id = abs(a.alert_id) "
            "AND h.source = CASE WHEN a.alert_id < 0 THEN 'cloud' ELSE 'gateway' END "
            "ORDER BY h.seq, h.id",
            (list(devices), list(ids)),
        )
        out: dict[tuple[int, int], list[Any]] = {}
        for device_id, alert_id, *event in rows:
            out.setdefault((device_id, alert_id), []).append(event)
        return out

    def events(self, limit: int = 100, device: str | None = None) -> list[Event]:
        params: dict[str, Any] = {"site": self.site, "limit": limit, "device": device}
        rows = self._rows(
            "SELECT h.ts_ms, d.device, 'alert', h.transition, h.alert_id, h.rule, h.severity, "
            "h.message, h.actor, h.note FROM alert_history h JOIN devices d ON d.id = h.device_id "
            "JOIN sites s ON s.id = d.site_id WHERE s.site = %(site)s AND h.source = 'gateway' "
            "AND (%(device)s::text IS NULL OR d.device = %(device)s) "
            "ORDER BY h.ts_ms DESC, h.id DESC LIMIT %(limit)s",
            params,
        )
        names = list(Event.model_fields)
        return [Event(**dict(zip(names, row, strict=True))) for row in rows]

    def request_ack(self, alert_id: int, actor: str, note: str | None) -> int:
        """Queue it; the ingest sends it to the gateway as ``cmd/ack``, or applies it itself
        to a fleet rule's alert (negative id), which no gateway knows (see repair.py)."""
        rows = self._rows(
            "INSERT INTO ack_requests (site_id, alert_id, actor, note, requested_ms) "
            "SELECT id, %s, %s, %s, %s FROM sites WHERE site = %s RETURNING id",
            (alert_id, actor, note, now_ms(), self.site),
        )
        return int(rows[0][0])

    def ack_request(self, request_id: int) -> AckRequest | None:
        rows = self._rows(
            "SELECT a.id, a.alert_id, a.actor, a.note, a.requested_ms, a.done_ms, a.result "
            "FROM ack_requests a JOIN sites s ON s.id = a.site_id "
            "WHERE a.id = %s AND s.site = %s",
            (request_id, self.site),
        )
        names = list(AckRequest.model_fields)
        return AckRequest(**dict(zip(names, rows[0], strict=True))) if rows else None

    def health(self) -> StorageHealth:
        newest = self._rows(
            "SELECT max(t.newest) FROM devices d JOIN sites s ON s.id = d.site_id "
            "CROSS JOIN LATERAL (SELECT max(ts_ms) AS newest FROM telemetry "
            "WHERE device_id = d.id) t WHERE s.site = %s",
            (self.site,),
        )[0][0]
        size = self._rows("SELECT pg_database_size(current_database())")[0][0]
        return StorageHealth(
            backend="postgresql", newest_sample_ts_ms=newest, size_bytes=int(size),
            unsent_rows=None,
        )  # fmt: skip


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _rounded(values: list[float | None], digits: int) -> list[float | None]:
    return [round(v, digits) if v is not None and math.isfinite(v) else None for v in values]
