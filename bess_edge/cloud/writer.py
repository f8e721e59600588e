"""The write path: validated batches into PostgreSQL, one transaction per batch of messages.

Samples and diagnoses are COPYed (PostgreSQL's fastest way in) straight into their tables; when
a batch holds an item that is already stored, that COPY fails on the unique index and the batch
goes through a staging table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` instead. Either
way redelivery and republish are harmless, so the caller may retry a batch whose commit it
never saw. The caller acknowledges the batch's MQTT messages only after
:meth:`Writer.write` returned, i.e. after the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bess_edge.cloud.copytext import copy_text
from bess_edge.cloud.messages import Batch, Refusal
from bess_edge.cloud.partitions import DAY_MS, Partitions, day_of
from bess_edge.cloud.schema import DIAGNOSIS_HEADLINES, TELEMETRY_SCALARS
from bess_edge.cloud.thresholds import FleetRules
from bess_edge.sync.payload import STREAMS

log = logging.getLogger(__name__)

FUTURE_LIMIT_MS = DAY_MS  # a gateway clock a day ahead is wrong, not early

_TELEMETRY_COLUMNS = (
    "device_id", "seq", "ts_ms", "quality", *TELEMETRY_SCALARS, "status_flags", "fault_flags",
    "cell_voltage_v", "cell_temperature_c", "extra", "quality_notes",
)  # fmt: skip
_DIAGNOSTICS_COLUMNS = ("device_id", "seq", "ts_ms", *DIAGNOSIS_HEADLINES, "diagnosis")
_ALERT_COLUMNS = (
    "device_id", "seq", "ts_ms", "alert_id", "transition", "rule", "severity", "message", "cell",
    "value", "actor", "note",
)  # fmt: skip


@dataclass
class WriteResult:
    items: int = 0  # items in valid messages
    inserted: dict[str, int] = field(default_factory=dict)  # new rows per stream
    refused: int = 0  # dead letters written


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Writer:
    """One database connection's write path; not thread-safe (one per worker thread).

    The connection is in autocommit mode: a batch is one explicit transaction, and registering
    a device stands alone (idempotent, so it may be repeated)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        worker: str,
        retention_days: int,
        auto_register_sites: bool = False,
        from_first: bool = True,
        max_seq_ahead: int = 1_000_000,
    ) -> None:
        self.conn = conn
        self.worker = worker
        self.retention_ms = retention_days * DAY_MS
        self.auto_register_sites = auto_register_sites
        self.from_first = from_first
        self.max_seq_ahead = max_seq_ahead
        self.partitions = Partitions()
        self.rules = FleetRules()
        self.devices: dict[tuple[str, str], int] = {}
        self.sites: dict[str, int] = {}
        self.newest_seq: dict[tuple[int, str], int] = {}  # per stream, for max_seq_ahead
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (LIKE telemetry) ON COMMIT DELETE ROWS"
        )
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_diagnostics (LIKE battery_diagnostics) "
            "ON COMMIT DELETE ROWS"
        )
        self.refresh()

    def refresh(self) -> None:
        """Re-read what other workers and the repair loop keep in the database: the newest seq
        of every stream and the fleet rules. Called every tick."""
        rows = self.conn.execute(
            "SELECT device_id, stream, greatest(max_seq, head_seq) FROM stream_progress"
        ).fetchall()
        for device_id, stream, newest in rows:
            key = (device_id, stream)
            self.newest_seq[key] = max(self.newest_seq.get(key, 0), newest)
        self.rules.load(self.conn)

    # -- the batch ------------------------------------------------------------------------------

    def write_isolating(self, messages: Sequence[Batch | Refusal]) -> WriteResult:
        """:meth:`write`, and if PostgreSQL refuses a value the schema let through (a cell
        beyond ``real``, a flag word beyond ``bigint``), the batch again message by message and
        item by item: the items it refuses become dead letters and the rest is written. Without
        this one such item would fail its batch forever and stop the worker behind it."""
        try:
            return self.write(messages)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            if len(messages) > 1:
                parts = [[m] for m in messages]
            else:
                (message,) = messages
                if isinstance(message, Refusal) or len(message.items) == 1:
                    assert isinstance(message, Batch)
                    item = message.items[0]
                    reason = f"database refused it: {str(exc).strip()[:300]}"
                    log.warning("item refused", extra={"topic": message.stream, "reason": reason})
                    refusal = self._refusal(message, reason, item, counted=True)
                    return self.write([refusal])
                parts = [[Batch(message.site, message.device, message.stream, [item])]
                         for item in message.items]  # fmt: skip
        total = WriteResult()
        for part in parts:
            result = self.write_isolating(part)
            total.items += result.items
            total.refused += result.refused
            for stream, n in result.inserted.items():
                total.inserted[stream] = total.inserted.get(stream, 0) + n
        return total

    def write(self, messages: Sequence[Batch | Refusal]) -> WriteResult:
        """Commit every message of the batch (rows and dead letters) in one transaction."""
        result = WriteResult()
        received_ms = now_ms()
        refusals = [m for m in messages if isinstance(m, Refusal)]
        telemetry: list[tuple[Any, ...]] = []
        diagnostics: list[tuple[Any, ...]] = []
        alerts: list[tuple[Any, ...]] = []
        newest: dict[int, tuple[str, dict[str, Any]]] = {}  # device_id -> (site, newest item)
        seen_sites: set[int] = set()
        days: set[int] = set()
        for message in messages:
            if isinstance(message, Refusal):
                continue
            device_id = self._device_id(message.site, message.device)
            if device_id is None:
                refusal = self._refusal(message, f"unknown site {message.site!r}")
                log.warning("message refused", extra={"topic": refusal.topic,
                                                      "reason": refusal.reason})  # fmt: skip
                refusals.append(refusal)
                continue
            seen_sites.add(self.sites[message.site])
            result.items += len(message.items)
            for item in self._accepted_items(message, device_id, received_ms, refusals):
                days.add(day_of(item["ts_ms"]))
                if message.stream == "telemetry":
                    telemetry.append(_telemetry_row(device_id, item))
                    top = newest.get(device_id)
                    if top is None or item["ts_ms"] > top[1]["ts_ms"]:
                        newest[device_id] = (message.site, item)
                elif message.stream == "diagnostics":
                    diagnostics.append(_diagnostics_row(device_id, item))
                else:
                    alerts.append(tuple(item.get(c) if c != "device_id" else device_id
                                        for c in _ALERT_COLUMNS))  # fmt: skip
        self.partitions.ensure(self.conn, days)
        with self.conn.transaction():
            cur = self.conn.cursor()
            if telemetry:
                result.inserted["telemetry"] = self._copy_insert(
                    cur, "telemetry", "stage_telemetry", _TELEMETRY_COLUMNS, telemetry
                )
            if diagnostics:
                result.inserted["diagnostics"] = self._copy_insert(
                    cur, "battery_diagnostics", "stage_diagnostics", _DIAGNOSTICS_COLUMNS,
                    diagnostics,
                )  # fmt: skip
            if alerts:
                result.inserted["alerts"] = self._alerts(cur, alerts)
            if refusals:
                self._dead_letters(cur, refusals, received_ms)
                result.refused = len(refusals)
            if seen_sites:
                cur.execute(
                    "UPDATE sites SET last_seen_ms = %s WHERE id = ANY(%s)",
                    (received_ms, sorted(seen_sites)),
                )
            if newest and self.rules.rules:
                self.rules.evaluate(
                    cur, {d: {**item, "site": site} for d, (site, item) in newest.items()}
                )
        return result

    def _accepted_items(
        self, message: Batch, device_id: int, received_ms: int, refusals: list[Refusal]
    ) -> list[dict[str, Any]]:
        """The items inside the time window and not absurdly far ahead of their stream; each
        other one becomes its own dead letter (with its seq, so it is not asked for again)."""
        key = (device_id, message.stream)
        known = self.newest_seq.get(key, 0 if self.from_first else None)
        oldest_ms = received_ms - self.retention_ms
        newest_ms = received_ms + FUTURE_LIMIT_MS
        accepted = []
        for item in message.items:
            seq, ts_ms = item["seq"], item["ts_ms"]
            reason = None
            if known is not None and seq > known + self.max_seq_ahead:
                reason = (
                    f"seq {seq} is more than {self.max_seq_ahead} ahead of the stream's {known}"
                )
            elif not oldest_ms <= ts_ms <= newest_ms:
                reason = f"ts_ms {ts_ms} outside the accepted window [{oldest_ms}, {newest_ms}]"
            if reason is not None:
                # A time outside the window is this item's for good: it counts as received
                # (its seq is kept). A seq far ahead is not a real seq: it must not open a gap.
                refusal = self._refusal(message, reason, item, counted=reason.startswith("ts_ms"))
                refusals.append(refusal)
                log.warning("item refused", extra={"topic": refusal.topic, "reason": reason})
                continue
            accepted.append(item)
        if accepted:
            top = max(item["seq"] for item in accepted)
            self.newest_seq[key] = max(self.newest_seq.get(key, 0), top)
        return accepted

    def _refusal(
        self,
        message: Batch,
        reason: str,
        item: dict[str, Any] | None = None,
        counted: bool = False,
    ) -> Refusal:
        body = repr(item if item is not None else message.items[:3]).encode()[:65536]
        return Refusal(
            topic=f"{message.site}/{message.device}/{message.stream}",
            reason=reason,
            payload=body,
            payload_bytes=len(body),
            site=message.site,
            device=message.device,
            stream=message.stream,
            seq=item["seq"] if item is not None and counted else None,
        )

    # -- statements -----------------------------------------------------------------------------

    def _copy_insert(
        self,
        cur: psycopg.Cursor,
        table: str,
        stage: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
    ) -> int:
        """COPY straight into the table, in a savepoint; if any row is already there (a
        redelivery, a republish overlapping what arrived), roll that back and go through the
        staging table with ON CONFLICT DO NOTHING. Duplicates are rare, so the common batch
        pays for one COPY only: the staging path cost 40 % of the write rate."""
        names = ", ".join(columns)
        text = copy_text(rows)
        try:
            sql = f"COPY {table} ({names}) FROM STDIN"
            with self.conn.transaction(), cur.copy(sql) as copy:  # type: ignore[arg-type]
                copy.write(text)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass
        with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:  # type: ignore[arg-type]
            copy.write(text)
        cur.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "  # type: ignore[arg-type]
            "ON CONFLICT DO NOTHING"
        )
        inserted = cur.rowcount
        cur.execute(f"TRUNCATE {stage}")  # type: ignore[arg-type]  # two COPYs per transaction
        return inserted

    def _alerts(self, cur: psycopg.Cursor, rows: list[tuple[Any, ...]]) -> int:
        names = ", ".join(_ALERT_COLUMNS)
        placeholders = ", ".join(["%s"] * len(_ALERT_COLUMNS))
        inserted = 0
        for row in rows:
            cur.execute(
                f"INSERT INTO alert_history ({names}) VALUES ({placeholders}) "  # type: ignore[arg-type]
                "ON CONFLICT (device_id, seq) DO NOTHING",
                row,
            )
            inserted += cur.rowcount
            item = dict(zip(_ALERT_COLUMNS, row, strict=True))
            cur.execute(
                "INSERT INTO alerts_current (device_id, alert_id, seq, state, rule, severity, "
                "message, raised_ms, updated_ms, actor, note) VALUES (%(device_id)s, "
                "%(alert_id)s, %(seq)s, %(transition)s, %(rule)s, %(severity)s, %(message)s, "
                "CASE WHEN %(transition)s = 'raised' THEN %(ts_ms)s END, %(ts_ms)s, %(actor)s, "
                "%(note)s) ON CONFLICT (device_id, alert_id) DO UPDATE SET seq = excluded.seq, "
                "state = excluded.state, severity = excluded.severity, "
                "message = excluded.message, updated_ms = excluded.updated_ms, "
                "raised_ms = coalesce(alerts_current.raised_ms, excluded.raised_ms), "
                "actor = coalesce(excluded.actor, alerts_current.actor), "
                "note = coalesce(excluded.note, alerts_current.note) "
                "WHERE excluded.seq > alerts_current.seq",
                item,
            )
        return inserted

    def _dead_letters(self, cur: psycopg.Cursor, refusals: list[Refusal], received_ms: int) -> None:
        cur.executemany(
            "INSERT INTO dead_letter (received_ms, topic, reason, payload, payload_bytes, site, "
            "device, stream, seq, worker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (received_ms, r.topic, r.reason, r.payload, r.payload_bytes, r.site, r.device,
                 r.stream, r.seq, self.worker)
                for r in refusals
            ],
        )  # fmt: skip

    def record_heads(self, site: str, heads: dict[str, dict[str, int]]) -> None:
        """A ping reply: each stream's published head, so that a missing tail shows as a gap."""
        if site not in self.sites and self._known_site(site) is None:
            return
        with self.conn.transaction():
            for device, streams in heads.items():
                device_id = self._device_id(site, device)
                for stream, head in streams.items():
                    if device_id is None or stream not in STREAMS or head <= 0:
                        continue
                    base = 0 if self.from_first else head
                    self.conn.execute(
                        "INSERT INTO stream_progress (device_id, stream, contiguous_seq, "
                        "max_seq, head_seq) VALUES (%s, %s, %s, %s, %s) ON CONFLICT "
                        "(device_id, stream) DO UPDATE SET head_seq = "
                        "greatest(stream_progress.head_seq, excluded.head_seq)",
                        (device_id, stream, base, base, head),
                    )

    def record_ack(self, request_id: int, result: str) -> None:
        """The gateway's reply to a ``cmd/ack`` the cloud API asked for."""
        self.conn.execute(
            "UPDATE ack_requests SET done_ms = %s, result = %s WHERE id = %s AND done_ms IS NULL",
            (now_ms(), result[:500], request_id),
        )

    def record_state(self, site: str, state: str, ts_ms: int) -> None:
        """The gateway's retained online/offline message."""
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE sites SET state = %s, state_ts_ms = %s WHERE site = %s",
                (state, ts_ms, site),
            )

    # -- sites and devices ----------------------------------------------------------------------

    def _device_id(self, site: str, device: str) -> int | None:
        """The device's id, registering it on first sight; None when the site is unknown."""
        found = self.devices.get((site, device))
        if found is not None:
            return found
        site_id = self.sites.get(site) or self._known_site(site)
        if site_id is None:
            return None
        row = self.conn.execute(
            "INSERT INTO devices (site_id, device, first_seen_ms) VALUES (%s, %s, %s) "
            "ON CONFLICT (site_id, device) DO UPDATE SET device = excluded.device RETURNING id",
            (site_id, device, now_ms()),
        ).fetchone()
        assert row is not None
        device_id = self.devices[(site, device)] = int(row[0])
        return device_id

    def _known_site(self, site: str) -> int | None:
        """The site's id (registered now if ``auto_register_sites``), None if unknown."""
        row = self.conn.execute("SELECT id FROM sites WHERE site = %s", (site,)).fetchone()
        if row is None and self.auto_register_sites:
            row = self.conn.execute(
                "INSERT INTO sites (site, created_ms) VALUES (%s, %s) ON CONFLICT (site) "
                "DO UPDATE SET site = excluded.site RETURNING id",
                (site, now_ms()),
            ).fetchone()
        if row is None:
            return None
        self.sites[site] = int(row[0])
        return self.sites[site]


_TELEMETRY_VALUES = itemgetter(*_TELEMETRY_COLUMNS[1:-2])  # one C call for 16 of the 20 columns


def _telemetry_row(device_id: int, item: dict[str, Any]) -> tuple[Any, ...]:
    extra, notes = item["extra"], item["quality_notes"]
    return (
        device_id, *_TELEMETRY_VALUES(item),
        Jsonb(extra) if extra else None, Jsonb(notes) if notes else None,
    )  # fmt: skip


def _diagnostics_row(device_id: int, item: dict[str, Any]) -> tuple[Any, ...]:
    diagnosis = item["diagnosis"]
    headlines = []
    for key in DIAGNOSIS_HEADLINES:
        value = diagnosis.get(key)
        headlines.append(value if isinstance(value, int | float) else None)
    return (device_id, item["seq"], item["ts_ms"], *headlines, Jsonb(diagnosis))
