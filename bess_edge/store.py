"""The SQLite buffer: the only code that writes SQL, and the point of truth (DESIGN invariant 1).

One :meth:`Store.commit_cycles` call is one transaction: the samples, their diagnoses, alert
transitions, device states and the outbox rows that tell sync what to publish, with per-stream
sequence numbers that are committed with the data so they never repeat after a crash.

The files are capped at ``storage.max_size_mb``, the WAL and its index included: the WAL gets a
share of the cap (checkpointed at half of it, truncated back to it), the database file the rest.
When full, the oldest *telemetry* (samples and diagnoses) goes first, unsent rows counted as
dropped; alerts are never dropped (invariant 2).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from bess_edge.model import Reading, now_ms
from bess_edge.storage.cells import pack_cells
from bess_edge.storage.models import READING_FIELDS
from bess_edge.storage.sqlite_reads import SqliteReads

log = logging.getLogger(__name__)

# Outbox priorities: sync drains lower numbers first, so live alerts overtake a telemetry backlog.
STREAM_PRIORITY = {"alerts": 0, "diagnostics": 1, "telemetry": 2}
SITE_DEVICE = "_site"  # the device name of site-wide alerts (buffer full, ...)
# The WAL's share of the cap: an eighth, at most SQLite's default checkpoint size (1,000 pages of
# 4 KiB); without a limit the WAL keeps its largest size for ever (a 2 MB cap reached 6.35 MB).
WAL_MAX_BYTES = 4 * 1024 * 1024
WAL_MIN_BYTES = 64 * 1024
SHM_BYTES = 32 * 1024  # the WAL index (-shm): 32 KiB per 4,096 WAL frames
CAP_SLACK = 1.05  # SQLITE_FULL only this far past the data cap that enforce_cap keeps to
SCHEMA_PAGES = 28  # a new store's pages after MIGRATIONS

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE seqs (
        device TEXT NOT NULL, stream TEXT NOT NULL, next_seq INTEGER NOT NULL,
        PRIMARY KEY (device, stream));
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL, quality INTEGER NOT NULL,
        pack_voltage_v REAL, pack_current_a REAL, pack_power_w REAL,
        bms_soc_pct REAL, bms_soh_pct REAL,
        cell_voltage_min_v REAL, cell_voltage_max_v REAL,
        cell_temperature_min_c REAL, cell_temperature_max_c REAL,
        status_flags INTEGER NOT NULL, fault_flags INTEGER NOT NULL,
        cell_voltage_v BLOB, cell_temperature_c BLOB, extra TEXT, quality_notes TEXT,
        UNIQUE (device, seq));
    CREATE INDEX samples_device_ts ON samples (device, ts_ms);
    CREATE TABLE diagnoses (
        id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL, data TEXT NOT NULL, UNIQUE (device, seq));
    CREATE INDEX diagnoses_device_ts ON diagnoses (device, ts_ms);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY, device TEXT NOT NULL, rule TEXT NOT NULL, cell INTEGER,
        severity TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL, value REAL,
        raised_ts_ms INTEGER NOT NULL, cleared_ts_ms INTEGER,
        acked_ts_ms INTEGER, acked_by TEXT, ack_note TEXT);
    CREATE INDEX alerts_state ON alerts (state);
    CREATE TABLE alert_events (
        id INTEGER PRIMARY KEY, alert_id INTEGER NOT NULL REFERENCES alerts (id),
        device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
        transition TEXT NOT NULL, actor TEXT, note TEXT, UNIQUE (device, seq));
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,
        stream TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,
        ref_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL);
    CREATE INDEX outbox_order ON outbox (priority, id);
    CREATE INDEX outbox_ref ON outbox (stream, ref_id);
    CREATE TABLE device_state (
        device TEXT PRIMARY KEY, comms TEXT NOT NULL, last_ok_ts_ms INTEGER,
        last_attempt_ts_ms INTEGER, consecutive_failures INTEGER NOT NULL,
        last_error TEXT, polls INTEGER NOT NULL, poll_errors INTEGER NOT NULL);
    CREATE TABLE estimator_state (
        device TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, data BLOB NOT NULL);
    """,
    # 2: acknowledgements requested by `bess-edge ack` (another process), applied by the daemon,
    # which owns the alert state; `result` is "acknowledged" or why it was refused.
    """
    CREATE TABLE pending_acks (
        id INTEGER PRIMARY KEY, alert_id INTEGER NOT NULL, actor TEXT NOT NULL, note TEXT,
        requested_ts_ms INTEGER NOT NULL, done_ts_ms INTEGER, result TEXT);
    CREATE INDEX pending_acks_open ON pending_acks (done_ts_ms);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# name -> (table and columns, what is slower without it). outbox_head: published_heads, asked
# on every consumer ping, finds each stream's oldest unpublished seq (440 ms -> < 1 ms at a
# million rows). samples_trend: the API's downsampled trends read the pack scalars from this
# index instead of rows that start with the cell BLOBs (24 h of a 1,000-cell rack: docs/api.md).
READ_INDEXES = {
    "outbox_head": (
        "outbox (device, stream, seq)",
        "consumer pings are answered more slowly meanwhile",
    ),
    "samples_trend": (
        f"samples (device, ts_ms, {', '.join(READING_FIELDS)})",
        "API trends read whole sample rows meanwhile",
    ),
    "alert_events_alert": (
        "alert_events (alert_id)",
        "alert lists read through every alert event meanwhile",
    ),
}


class StoreFull(Exception):
    """A cycle could not be committed even after dropping old telemetry (disk truly full)."""


@dataclass(slots=True)
class AlertTransition:
    """One step of an alert episode: raised, acknowledged or cleared.

    ``alert_id`` is allocated by the alert engine (see :meth:`Store.max_alert_id`) so that the
    engine can refer to an episode before its row is committed.
    """

    alert_id: int
    device: str
    rule: str
    transition: str  # "raised" | "acknowledged" | "cleared"
    ts_ms: int
    severity: str = "warning"
    message: str = ""
    cell: int | None = None
    value: float | None = None
    actor: str | None = None  # who acknowledged: "cli:user", "mqtt", ...
    note: str | None = None


@dataclass(slots=True)
class DeviceStatus:
    """The poll task's view of a device, committed with each cycle."""

    device: str
    comms: str
    last_ok_ts_ms: int | None
    last_attempt_ts_ms: int
    consecutive_failures: int
    last_error: str | None
    polls: int
    poll_errors: int


@dataclass(slots=True)
class Cycle:
    """Everything one poll produced, committed atomically."""

    reading: Reading | None = None
    diagnosis: dict[str, Any] | None = None  # Diagnosis.to_dict()
    alerts: list[AlertTransition] = field(default_factory=list)
    status: DeviceStatus | None = None
    estimator_state: bytes | None = None
    acks_done: list[tuple[int, str]] = field(default_factory=list)  # (pending_acks id, result)


@dataclass(slots=True)
class CommitResult:
    sample_seqs: list[int]
    dropped_telemetry: int  # unsent rows dropped to make room while committing


def _min_max(values: np.ndarray) -> tuple[float | None, float | None]:
    """Min and max ignoring NaN cells (fmin/fmax skip NaN); None when there is no value."""
    if values.size == 0:
        return None, None
    lo, hi = float(np.fmin.reduce(values)), float(np.fmax.reduce(values))
    return (lo, hi) if math.isfinite(lo) else (None, None)


def _real(value: float) -> float | None:
    return value if math.isfinite(value) else None


IDENTITY_KEY = "identity:"  # meta key prefix of a device's identity strings


def _json(value: Any) -> str:
    """JSON without NaN (which JSON cannot carry): NaN and inf become null.

    A diagnosis from ``Diagnosis.to_dict`` has none: it is dumped as it is, and only a value
    that JSON refuses is walked to replace them."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Store(SqliteReads):
    """The SQLite file. Use from one thread at a time (the daemon gives it one worker thread).

    Read queries shared with the API live in :class:`SqliteReads`.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_size_mb: float = 1024.0,
        retention_days: float = 30.0,
        synchronous: str = "full",
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_size_bytes = int(max_size_mb * 1024 * 1024)  # the database, WAL and index
        self.wal_limit_bytes = min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, self.max_size_bytes // 8))
        # What the database file's data may use; with CAP_SLACK the file stays within the rest.
        self.data_cap_bytes = int(
            max(0, self.max_size_bytes - self.wal_limit_bytes - SHM_BYTES) / CAP_SLACK
        )
        self.retention_ms = int(retention_days * 86_400_000)
        if readonly:
            # For the CLI beside a running daemon: never creates, migrates or locks the file.
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no data yet (has the daemon run?)")
            self.conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=30.0
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        self.db = sqlite_utils.Database(self.conn)
        if not readonly:
            self._configure(synchronous)
            self._migrate()
            self._create_read_indexes()
        # Outbox rows committed (or queued again) by this process, per stream: sync compares
        # them with what it has fetched, so it looks for a new alert before every backlog message,
        # and for new rows at all, without a query each time.
        self.outbox_rows_committed = dict.fromkeys(STREAM_PRIORITY, 0)
        self._next_seq: dict[tuple[str, str], int] = {
            (d, s): n for d, s, n in self.conn.execute("SELECT device, stream, next_seq FROM seqs")
        }

    # -- set-up ---------------------------------------------------------------------------

    def _configure(self, synchronous: str) -> None:
        c = self.conn
        new_file = c.execute("PRAGMA page_count").fetchone()[0] == 0
        if new_file:
            # Incremental auto-vacuum lets the cap hand freed pages back to the filesystem.
            c.execute("PRAGMA auto_vacuum = INCREMENTAL")
        c.execute("PRAGMA journal_mode = WAL")
        c.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        c.execute("PRAGMA foreign_keys = ON")
        page_size = c.execute("PRAGMA page_size").fetchone()[0]
        # SQLite refuses to grow past this, so a runaway never fills the disk: we get
        # SQLITE_FULL first and make room by dropping old telemetry (see _make_room).
        cap_pages = self.data_cap_bytes // page_size
        # Whatever the cap, room for the tables and indexes of MIGRATIONS: a store must open.
        c.execute(f"PRAGMA max_page_count = {max(SCHEMA_PAGES, int(cap_pages * CAP_SLACK))}")
        # Checkpoint at half the WAL's share; after a checkpoint the WAL file is cut back to it.
        wal_pages = self.wal_limit_bytes // page_size
        c.execute(f"PRAGMA wal_autocheckpoint = {max(8, wal_pages // 2)}")
        c.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this bess-edge "
                f"({SCHEMA_VERSION}); upgrade bess-edge or use another storage.path"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _statements(MIGRATIONS[target - 1]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {target}")
            log.info("store schema migrated", extra={"path": str(self.path), "version": target})

    def _create_read_indexes(self) -> None:
        """Indexes that only make a read fast (:data:`READ_INDEXES`), tried at every start.

        Not migrations: a store at its cap may have no room for one, and a migration that fails
        stops the daemon; without the index the read is only slower.
        """
        for name, (table_columns, meanwhile) in READ_INDEXES.items():
            try:
                self.conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table_columns}")
            except sqlite3.OperationalError as exc:
                log.warning(
                    f"{name.split('_')[0]} index not created (tried again at the next start); "
                    f"{meanwhile}",
                    extra={"path": str(self.path), "error": str(exc)},
                )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- writing --------------------------------------------------------------------------

    def commit_cycle(self, cycle: Cycle) -> CommitResult:
        return self.commit_cycles([cycle])

    def commit_cycles(self, cycles: Sequence[Cycle]) -> CommitResult:
        """Commit several poll cycles in one transaction (the batched write path).

        On SQLITE_FULL the oldest telemetry is dropped and the commit retried once; if it
        still does not fit, :class:`StoreFull` is raised and nothing of ``cycles`` is written.
        """
        dropped = 0
        for attempt in (1, 2):
            seqs_before = dict(self._next_seq)
            try:
                with self.transaction():
                    sample_seqs = self._write(cycles)
                break
            except BaseException as exc:
                # Rolled back: hand the sequence numbers out again, or subscribers see a gap.
                self._next_seq = seqs_before
                if not (isinstance(exc, sqlite3.OperationalError) and _is_full(exc)):
                    raise
                if attempt == 2:
                    raise StoreFull(f"{self.path}: {exc}") from exc
                # The cap or the disk itself is full: free a fifth of the data, and keep the
                # freed pages in the file so the retry can reuse them even on a full disk.
                log.warning("store full, dropping oldest telemetry", extra={"error": str(exc)})
                target = int(min(self.data_cap_bytes, self.used_bytes()) * 0.8)
                dropped += self._make_room(target, release_space=False)
        counts = self.outbox_rows_committed
        for cycle in cycles:
            if cycle.reading is not None:
                counts["telemetry"] += 1
                counts["diagnostics"] += cycle.diagnosis is not None
            counts["alerts"] += len(cycle.alerts)
        dropped += self.enforce_cap()
        return CommitResult(sample_seqs=sample_seqs, dropped_telemetry=dropped)

    def _take_seq(self, device: str, stream: str) -> int:
        seq = self._next_seq.get((device, stream), 1)
        self._next_seq[(device, stream)] = seq + 1
        return seq

    def _write(self, cycles: Sequence[Cycle]) -> list[int]:
        c = self.conn
        sample_rows, diag_rows, outbox_rows, seqs_written = [], [], [], set()
        sample_seqs: list[int] = []
        for cycle in cycles:
            r = cycle.reading
            if r is not None:
                seq = self._take_seq(r.device_id, "telemetry")
                sample_seqs.append(seq)
                seqs_written.add((r.device_id, "telemetry"))
                if r.identity:
                    c.execute(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (IDENTITY_KEY + r.device_id, _json(r.identity)),
                    )
                v_min, v_max = _min_max(r.cell_voltage_v)
                if v_min is None:  # no per-cell array: the extremes the device reports
                    v_min, v_max = _real(r.cell_voltage_min_v), _real(r.cell_voltage_max_v)
                t_min, t_max = _min_max(r.cell_temperature_c)
                sample_rows.append((
                    r.device_id, seq, r.ts_ms, int(r.quality),
                    _real(r.pack_voltage_v), _real(r.pack_current_a), _real(r.pack_power_w),
                    _real(r.bms_soc_pct), _real(r.bms_soh_pct),
                    v_min, v_max, t_min, t_max,
                    r.status_flags, r.fault_flags,
                    pack_cells(r.cell_voltage_v), pack_cells(r.cell_temperature_c),
                    _json(r.extra) if r.extra else None,
                    _json(r.quality_notes) if r.quality_notes else None,
                ))  # fmt: skip
                if cycle.diagnosis is not None:
                    dseq = self._take_seq(r.device_id, "diagnostics")
                    seqs_written.add((r.device_id, "diagnostics"))
                    diag_rows.append((r.device_id, dseq, r.ts_ms, _json(cycle.diagnosis)))
        if sample_rows:
            first = _insert_many(c, "samples", SAMPLE_COLUMNS, sample_rows)
            outbox_rows += [
                (STREAM_PRIORITY["telemetry"], "telemetry", row[0], row[1], first + i, row[2])
                for i, row in enumerate(sample_rows)
            ]
        if diag_rows:
            first = _insert_many(c, "diagnoses", DIAGNOSIS_COLUMNS, diag_rows)
            outbox_rows += [
                (STREAM_PRIORITY["diagnostics"], "diagnostics", row[0], row[1], first + i, row[2])
                for i, row in enumerate(diag_rows)
            ]
        for cycle in cycles:
            for t in cycle.alerts:
                outbox_rows.append(self._write_alert(t))
                seqs_written.add((t.device, "alerts"))
            if cycle.status is not None:
                s = cycle.status
                c.execute(
                    "INSERT OR REPLACE INTO device_state VALUES (?,?,?,?,?,?,?,?)",
                    (s.device, s.comms, s.last_ok_ts_ms, s.last_attempt_ts_ms,
                     s.consecutive_failures, s.last_error, s.polls, s.poll_errors),
                )  # fmt: skip
            c.executemany(
                "UPDATE pending_acks SET done_ts_ms = ?, result = ? WHERE id = ?",
                [(now_ms(), result, request) for request, result in cycle.acks_done],
            )
            if cycle.estimator_state is not None:
                device = cycle.reading.device_id if cycle.reading else cycle.status.device  # type: ignore[union-attr]
                c.execute(
                    "INSERT OR REPLACE INTO estimator_state VALUES (?,?,?)",
                    (device, now_ms(), cycle.estimator_state),
                )
        c.executemany(
            "INSERT INTO outbox (priority, stream, device, seq, ref_id, ts_ms) "
            "VALUES (?,?,?,?,?,?)",
            outbox_rows,
        )
        c.executemany(
            "INSERT OR REPLACE INTO seqs VALUES (?,?,?)",
            [(d, s, self._next_seq[(d, s)]) for d, s in seqs_written],
        )
        return sample_seqs

    def _write_alert(self, t: AlertTransition) -> tuple[Any, ...]:
        c = self.conn
        if t.transition == "raised":
            c.execute(
                "INSERT INTO alerts (id, device, rule, cell, severity, state, message, value, "
                "raised_ts_ms) VALUES (?,?,?,?,?,'active',?,?,?)",
                (t.alert_id, t.device, t.rule, t.cell, t.severity, t.message,
                 _real(t.value) if t.value is not None else None, t.ts_ms),
            )  # fmt: skip
        elif t.transition == "cleared":
            c.execute(
                "UPDATE alerts SET state = 'cleared', cleared_ts_ms = ? WHERE id = ?",
                (t.ts_ms, t.alert_id),
            )
        elif t.transition == "acknowledged":
            c.execute(
                "UPDATE alerts SET acked_ts_ms = ?, acked_by = ?, ack_note = ? WHERE id = ?",
                (t.ts_ms, t.actor, t.note, t.alert_id),
            )
        else:
            raise ValueError(f"unknown alert transition {t.transition!r}")
        seq = self._take_seq(t.device, "alerts")
        cur = c.execute(
            "INSERT INTO alert_events (alert_id, device, seq, ts_ms, transition, actor, note) "
            "VALUES (?,?,?,?,?,?,?)",
            (t.alert_id, t.device, seq, t.ts_ms, t.transition, t.actor, t.note),
        )
        return (STREAM_PRIORITY["alerts"], "alerts", t.device, seq, cur.lastrowid, t.ts_ms)

    # -- size cap and retention -----------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of the file that hold data (excluding free pages awaiting reuse)."""
        c = self.conn
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * c.execute("PRAGMA page_size").fetchone()[0]

    def enforce_cap(self) -> int:
        """Drop the oldest telemetry while the file is over 95 % of its cap; return unsent drops.

        Cheap enough to run after every commit: three PRAGMAs that read the file header.
        """
        if self.used_bytes() <= self.data_cap_bytes * 0.95:
            return 0
        return self._make_room(int(self.data_cap_bytes * 0.85), release_space=True)

    def _make_room(self, target_bytes: int, release_space: bool) -> int:
        """Delete the oldest samples and diagnoses until under ``target_bytes``.

        Returns how many of the deleted rows had not been published yet (a real loss, counted
        in ``counters.telemetry_dropped`` and logged); alerts are never touched. With
        ``release_space`` the freed pages go back to the filesystem; without, they stay in the
        file for reuse (on a full disk the file could not grow back).
        """
        dropped = 0
        while (used := self.used_bytes()) > target_bytes:
            deleted = unsent_here = 0
            # Delete the share of rows that should free the excess (plus one), so a small cap
            # with large rows does not empty the buffer in one step.
            share = (used - target_bytes) / used
            with self.transaction() as c:
                for table, stream in (("samples", "telemetry"), ("diagnoses", "diagnostics")):
                    rows = c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    limit = min(int(rows * share) + 1, 5000)
                    ids = [
                        row[0]
                        for row in c.execute(
                            f"SELECT id FROM {table} ORDER BY id LIMIT ?", (limit,)
                        )
                    ]
                    if not ids:
                        continue
                    marks = ",".join("?" * len(ids))
                    unsent = c.execute(
                        f"DELETE FROM outbox WHERE stream = ? AND ref_id IN ({marks})",
                        (stream, *ids),
                    ).rowcount
                    if unsent:  # the split for the buffer_dropping alert's message
                        self._add_counter(c, f"{table}_dropped", unsent)
                    unsent_here += unsent
                    c.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
                    deleted += len(ids)
                if unsent_here:
                    self._add_counter(c, "telemetry_dropped", unsent_here)
            dropped += unsent_here
            if release_space:
                self.conn.execute("PRAGMA incremental_vacuum")
            if deleted == 0:
                break
        if dropped:
            log.warning(
                "storage cap reached: dropped unsent telemetry",
                extra={"dropped": dropped, "path": str(self.path)},
            )
        return dropped

    def purge_expired(self, now: int | None = None) -> int:
        """Delete published telemetry older than the retention window; return rows deleted."""
        cutoff = (now if now is not None else now_ms()) - self.retention_ms
        deleted = 0
        with self.transaction() as c:
            for table, stream in (("samples", "telemetry"), ("diagnoses", "diagnostics")):
                deleted += c.execute(
                    f"DELETE FROM {table} WHERE ts_ms < ? AND id NOT IN "
                    f"(SELECT ref_id FROM outbox WHERE stream = ?)",
                    (cutoff, stream),
                ).rowcount
        self.conn.execute("PRAGMA incremental_vacuum")
        return deleted

    # -- counters, state --------------------------------------------------------------------

    @staticmethod
    def _add_counter(c: sqlite3.Connection, name: str, delta: int) -> None:
        c.execute(
            "INSERT INTO counters VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, delta),
        )

    def counter(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def device_identities(self) -> dict[str, dict[str, str]]:
        """Each device's identity strings as last read (manufacturer, model, serial, ...)."""
        rows = self.conn.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
            (IDENTITY_KEY, IDENTITY_KEY[:-1] + chr(ord(IDENTITY_KEY[-1]) + 1)),
        )
        return {key.removeprefix(IDENTITY_KEY): json.loads(value) for key, value in rows}

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def max_alert_id(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0])

    def active_alerts(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM alerts WHERE state = 'active' ORDER BY id"))

    def last_cleared_alerts(self) -> list[dict[str, Any]]:
        """When each (device, rule, cell) last cleared: the alert engine's re-raise clock."""
        return list(
            self.db.query(
                "SELECT device, rule, cell, max(cleared_ts_ms) AS cleared_ts_ms FROM alerts "
                "WHERE state = 'cleared' GROUP BY device, rule, cell"
            )
        )

    def request_ack(self, alert_id: int, actor: str, note: str | None) -> int:
        """Queue an acknowledgement for the daemon (the CLI's only write); returns its id."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO pending_acks (alert_id, actor, note, requested_ts_ms) "
                "VALUES (?,?,?,?)",
                (alert_id, actor, note, now_ms()),
            )
        return int(cur.lastrowid or 0)

    def pending_acks(self) -> list[dict[str, Any]]:
        """Acknowledgements requested and not yet applied, oldest first."""
        return list(
            self.db.query("SELECT * FROM pending_acks WHERE done_ts_ms IS NULL ORDER BY id")
        )

    def ack_request(self, request_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM pending_acks WHERE id = ?", [request_id]))
        return rows[0] if rows else None

    def estimator_state(self, device: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT data FROM estimator_state WHERE device = ?", (device,)
        ).fetchone()
        return row[0] if row else None

    def device_status(self, device: str) -> DeviceStatus | None:
        row = self.conn.execute("SELECT * FROM device_state WHERE device = ?", (device,)).fetchone()
        return DeviceStatus(*row) if row else None

    def sample_count(self, device: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM samples WHERE device = ?", (device,)
            ).fetchone()[0]
        )

    def file_bytes(self) -> int:
        """Size on disk of the database and its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def outbox_depth(self) -> dict[str, int]:
        """Unpublished rows per stream."""
        return dict(self.conn.execute("SELECT stream, count(*) FROM outbox GROUP BY stream"))

    def outbox_oldest_ts_ms(self) -> int | None:
        """Timestamp of the oldest unpublished row (the first by id: rows are queued in time
        order), None when the outbox is empty."""
        row = self.conn.execute("SELECT ts_ms FROM outbox ORDER BY id LIMIT 1").fetchone()
        return int(row[0]) if row else None

    # -- sync: outbox draining (bess_edge/sync; issue 7) ------------------------------------

    def outbox_fetch(self, stream: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Unpublished rows of one stream with ``outbox.id > after_id``, oldest first.

        Each row carries ``outbox_id``, ``device``, ``seq`` and the published data: the samples
        row (cell BLOBs as stored), the diagnosis (its JSON text as stored, ``diagnosis_json``)
        or the alert event joined with its alert.
        ``data`` is None when the referenced row is gone (sync then just deletes the outbox row).
        """
        sql = _OUTBOX_FETCH[stream]
        # By priority, not stream: the (priority, id) index then finds the next alert at once
        # instead of scanning a telemetry backlog (priorities map one-to-one to streams).
        params = {"after": after_id, "limit": limit, "priority": STREAM_PRIORITY[stream]}
        rows = self.db.query(sql, params)
        return [_outbox_item(stream, row) for row in rows]

    def outbox_delete(self, outbox_ids: Sequence[int], sync_ts_ms: int) -> None:
        """Forget rows the broker acknowledged, and remember when sync last succeeded."""
        with self.transaction() as c:
            c.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in outbox_ids])
            c.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_sync_ts_ms', ?)", (str(sync_ts_ms),)
            )

    def outbox_requeue(
        self,
        device: str,
        stream: str,
        *,
        seq_first: int | None = None,
        seq_last: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100_000,
    ) -> int:
        """Queue already published rows again (a subscriber saw a gap); returns rows queued.

        Rows still in the outbox are not queued twice. Selection is by seq range (inclusive)
        and/or time range (``since_ms`` inclusive, ``until_ms`` exclusive).
        """
        table = _STREAM_TABLE[stream]
        where: list[str] = ["t.device = ?"]
        params: list[Any] = [device]
        for clause, value in (
            ("t.seq >= ?", seq_first),
            ("t.seq <= ?", seq_last),
            ("t.ts_ms >= ?", since_ms),
            ("t.ts_ms < ?", until_ms),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        with self.transaction() as c:
            queued = c.execute(
                "INSERT INTO outbox (priority, stream, device, seq, ref_id, ts_ms) "
                f"SELECT ?, ?, t.device, t.seq, t.id, t.ts_ms FROM {table} t "
                f"WHERE {' AND '.join(where)} AND NOT EXISTS (SELECT 1 FROM outbox o "
                "WHERE o.stream = ? AND o.ref_id = t.id) ORDER BY t.seq LIMIT ?",
                (STREAM_PRIORITY[stream], stream, *params, stream, limit),
            ).rowcount
        self.outbox_rows_committed[stream] += queued
        return queued

    def published_heads(self) -> dict[str, dict[str, int]]:
        """Per device and stream, the seq up to which everything has been acknowledged.

        That is one less than the oldest unpublished seq, or the last seq taken when the
        stream's outbox is empty: a subscriber missing seqs at or below it has a gap to repair.
        """
        heads: dict[str, dict[str, int]] = {}
        for (device, stream), next_seq in self._next_seq.items():
            (oldest,) = self.conn.execute(
                "SELECT min(seq) FROM outbox WHERE device = ? AND stream = ?", (device, stream)
            ).fetchone()
            head = (next_seq if oldest is None else oldest) - 1
            heads.setdefault(device, {})[stream] = min(head, next_seq - 1)
        return heads


SAMPLE_COLUMNS = (
    "device, seq, ts_ms, quality, pack_voltage_v, pack_current_a, pack_power_w, "
    "bms_soc_pct, bms_soh_pct, cell_voltage_min_v, cell_voltage_max_v, "
    "cell_temperature_min_c, cell_temperature_max_c, status_flags, fault_flags, "
    "cell_voltage_v, cell_temperature_c, extra, quality_notes"
)
DIAGNOSIS_COLUMNS = "device, seq, ts_ms, data"


def _insert_many(
    c: sqlite3.Connection, table: str, columns: str, rows: list[tuple[Any, ...]]
) -> int:
    """executemany INSERT; returns the rowid of the first row.

    Rowids are consecutive: one writer, inside one transaction, with no explicit ids.
    """
    marks = ",".join("?" * (columns.count(",") + 1))
    c.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    last = c.execute("SELECT last_insert_rowid()").fetchone()[0]
    return int(last) - len(rows) + 1


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


_STREAM_TABLE = {"telemetry": "samples", "diagnostics": "diagnoses", "alerts": "alert_events"}
_OUTBOX_FETCH = {
    "telemetry": "SELECT o.id AS outbox_id, o.device AS o_device, o.seq AS o_seq, t.* "
    "FROM outbox o LEFT JOIN samples t ON t.id = o.ref_id "
    "WHERE o.priority = :priority AND o.id > :after ORDER BY o.id LIMIT :limit",
    "diagnostics": "SELECT o.id AS outbox_id, o.device AS o_device, o.seq AS o_seq, t.* "
    "FROM outbox o LEFT JOIN diagnoses t ON t.id = o.ref_id "
    "WHERE o.priority = :priority AND o.id > :after ORDER BY o.id LIMIT :limit",
    "alerts": "SELECT o.id AS outbox_id, o.device AS o_device, o.seq AS o_seq, t.*, "
    "a.rule, a.cell, a.severity, a.message, a.value "
    "FROM outbox o LEFT JOIN alert_events t ON t.id = o.ref_id "
    "LEFT JOIN alerts a ON a.id = t.alert_id "
    "WHERE o.priority = :priority AND o.id > :after ORDER BY o.id LIMIT :limit",
}


def _outbox_item(stream: str, row: dict[str, Any]) -> dict[str, Any]:
    item = {"outbox_id": row["outbox_id"], "device": row["o_device"], "seq": row["o_seq"]}
    if row["id"] is None:
        item["data"] = None
    elif stream == "telemetry":
        item["data"] = row  # cell BLOBs kept: the payload encoder unpacks them with numpy
    elif stream == "diagnostics":
        item["data"] = {"ts_ms": row["ts_ms"], "diagnosis_json": row["data"]}
    else:
        item["data"] = {
            k: row[k]
            for k in ("ts_ms", "alert_id", "transition", "actor", "note", "rule", "cell",
                      "severity", "message", "value")
        }  # fmt: skip
    return item
