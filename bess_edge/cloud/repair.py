"""Gap repair: find the seqs the database lacks and ask the gateways for them again.

Each worker of a shared subscription sees only a share of every stream, so gaps are found in
the database, where the shares meet, by one worker at a time: the one holding a session-level
advisory lock. When it dies its connection closes, the lock is released and another worker takes
the job at its next tick; everything it knows is in ``stream_progress`` and ``open_gaps``.

Per (site, device, stream): ``contiguous_seq`` (everything up to it is stored), ``max_seq``
(newest stored) and ``head_seq`` (what the gateway says it has published: its ping reply). A
missing range older than ``grace_s`` is asked for with ``cmd/republish``; at most one request per
stream is in flight (a new one only after ``retry_s``, or once the range arrived), and at most
``max_requests_per_s`` over the fleet. A gateway's retention bounds what it can send again: a
range it no longer holds stays in the ``gaps`` view, with the time it was first seen missing.

The same leader drops the daily partitions past ``retention_days`` and sends the acknowledgements
asked for through the cloud API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from bess_edge.cloud.config import IngestConfig
from bess_edge.cloud.partitions import DAY_MS, Partitions
from bess_edge.cloud.writer import now_ms
from bess_edge.sync.commands import MAX_REPUBLISH_ROWS

log = logging.getLogger(__name__)

REPAIR_LOCK = 0x62657375
RETENTION_EVERY_S = 600.0  # dropping old days (exclusive locks), and new streams in every partition
ACTIVE_SITE_MS = 3_600_000  # sites that sent data within this long are pinged
SCAN_MARGIN_MS = DAY_MS  # how far a gateway's clock may step back and its rows still be found
TABLES = {"telemetry": "telemetry", "diagnostics": "battery_diagnostics", "alerts": "alert_history"}

SendCommand = Callable[[str, str, dict[str, Any]], None]  # (site, verb, body)


@dataclass(slots=True)
class Progress:
    device_id: int
    stream: str
    site: str
    device: str
    contiguous: int
    max_seq: int
    head: int
    request_ms: int | None
    request_first: int | None
    request_last: int | None

    @property
    def complete(self) -> bool:
        """Nothing missing up to the newest seq or the gateway's head, nothing asked for: the
        stream has no ``open_gaps`` rows."""
        return (
            self.contiguous == self.max_seq
            and self.head <= self.max_seq
            and (self.request_ms is None)
        )


Ranges = list[tuple[int, int]]


def missing_ranges(contiguous: int, runs: Ranges, head: int) -> tuple[int, int, Ranges]:
    """From the runs of stored seqs above ``contiguous`` (sorted, disjoint, inclusive) and the
    gateway's head: the new contiguous seq, the newest stored seq, the missing ranges."""
    cursor = contiguous
    gaps: Ranges = []
    for first, last in runs:
        if first > cursor + 1:
            gaps.append((cursor + 1, first - 1))
        cursor = max(cursor, last)
    newest = cursor
    if head > cursor:
        gaps.append((cursor + 1, head))
    new_contiguous = gaps[0][0] - 1 if gaps else max(newest, contiguous)
    return new_contiguous, newest, gaps


class Repairer:
    def __init__(self, conn: psycopg.Connection, cfg: IngestConfig, send: SendCommand) -> None:
        self.conn = conn  # autocommit: each statement stands alone, the lock is the session's
        self.cfg = cfg
        self.send = send
        self.leader = False
        self.tokens = cfg.max_requests_per_s
        self.last_tick = time.monotonic()
        self.open_seqs = 0  # for the metric, as of the last tick
        self.oldest_gap_ms: int | None = None
        self.partitions = Partitions()
        self.next_retention = 0.0
        self.floor_ms: dict[tuple[int, str], int] = {}  # per complete stream, see _runs

    def tick(self) -> bool:
        """One round if this worker holds the repair lock; False otherwise."""
        if not self.leader:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (REPAIR_LOCK,)).fetchone()
            self.leader = bool(row and row[0])
            if not self.leader:
                return False
            log.info("this worker now runs gap repair")
        now = time.monotonic()
        self.tokens = min(
            self.cfg.max_requests_per_s,
            self.tokens + (now - self.last_tick) * self.cfg.max_requests_per_s,
        )
        self.last_tick = now
        everywhere = now >= self.next_retention
        if everywhere:
            self.next_retention = now + RETENTION_EVERY_S
            self.partitions.drop_older_than(self.conn, now_ms() - self.cfg.retention_days * DAY_MS)
        self._ping_sites()
        self._send_acks()
        self._start_new_streams(everywhere)
        advanced: list[tuple[int, str, int, int]] = []
        for progress in self._progress():
            self._repair(progress, advanced)
        if advanced:  # one statement for every stream that only moved on
            device_ids, streams, contiguous, newest = zip(*advanced, strict=True)
            self.conn.execute(
                "UPDATE stream_progress p SET contiguous_seq = v.contiguous, "
                "max_seq = greatest(p.max_seq, v.newest) FROM unnest(%s::int[], %s::text[], "
                "%s::bigint[], %s::bigint[]) AS v(device_id, stream, contiguous, newest) "
                "WHERE p.device_id = v.device_id AND p.stream = v.stream",
                (list(device_ids), list(streams), list(contiguous), list(newest)),
            )
        row = self.conn.execute(
            "SELECT coalesce(sum(seq_last - seq_first + 1), 0), min(since_ms) FROM open_gaps"
        ).fetchone()
        assert row is not None
        self.open_seqs, self.oldest_gap_ms = int(row[0]), row[1]
        return True

    def _ping_sites(self) -> None:
        now = now_ms()
        rows = self.conn.execute(
            "UPDATE sites SET last_ping_ms = %s WHERE last_seen_ms > %s AND "
            "(last_ping_ms IS NULL OR last_ping_ms < %s) RETURNING site",
            (now, now - ACTIVE_SITE_MS, now - int(self.cfg.ping_s * 1000)),
        ).fetchall()
        for (site,) in rows:
            self.send(site, "ping", {})

    def _send_acks(self) -> None:
        """Acknowledgements asked for through the cloud API, as the gateway's ``cmd/ack``; the
        reply (``id`` ``ack-<n>``) closes the request. Sent again after retry_s without one."""
        now = now_ms()
        rows = self.conn.execute(
            "UPDATE ack_requests a SET sent_ms = %s FROM sites s WHERE s.id = a.site_id AND "
            "a.done_ms IS NULL AND (a.sent_ms IS NULL OR a.sent_ms < %s) "
            "RETURNING a.id, s.site, a.alert_id, a.actor, a.note",
            (now, now - int(self.cfg.retry_s * 1000)),
        ).fetchall()
        for request_id, site, alert_id, actor, note in rows:
            if alert_id < 0:  # a fleet rule's alert: the cloud owns it, no gateway to ask
                self._ack_cloud_alert(request_id, -alert_id, actor, note)
                continue
            body: dict[str, Any] = {"id": f"ack-{request_id}", "alert_id": alert_id,
                                    "actor": actor[:256]}  # fmt: skip
            if note is not None:
                body["note"] = note[:256]
            self.send(site, "ack", body)

    def _ack_cloud_alert(
        self, request_id: int, cloud_id: int, actor: str, note: str | None
    ) -> None:
        """Acknowledge a ``cloud_alerts`` episode (once, while open) with its history row, and
        close the request as a gateway's reply would."""
        now = now_ms()
        with self.conn.transaction():
            row = self.conn.execute(
                "UPDATE cloud_alerts a SET acknowledged_ms = %s, actor = %s "
                "FROM alert_thresholds t WHERE a.id = %s AND t.id = a.threshold_id AND "
                "a.acknowledged_ms IS NULL AND a.cleared_ms IS NULL "
                "RETURNING a.device_id, t.name, t.severity",
                (now, actor, cloud_id),
            ).fetchone()
            if row is not None:
                self.conn.execute(
                    "INSERT INTO alert_history (device_id, ts_ms, source, alert_id, transition, "
                    "rule, severity, actor, note) VALUES (%s, %s, 'cloud', %s, 'acknowledged', "
                    "%s, %s, %s, %s)",
                    (row[0], now, cloud_id, row[1], row[2], actor, note),
                )
            self.conn.execute(
                "UPDATE ack_requests SET done_ms = %s, result = %s WHERE id = %s",
                (now, "acknowledged" if row else "already acknowledged or cleared", request_id),
            )

    def _start_new_streams(self, everywhere: bool) -> None:
        """A progress row for each stream with stored rows and none yet: from seq 1 with
        ``from_first``, else from the lowest seq stored. Each tick only streams with rows of
        the last ``SCAN_MARGIN_MS`` are looked for (the newest partitions); ``everywhere``
        (every ``RETENTION_EVERY_S``) all of them, for a gateway whose clock is far behind."""
        for stream, table in TABLES.items():
            only = None
            if not everywhere:
                only = [device_id for (device_id,) in self.conn.execute(
                    "SELECT d.id FROM devices d WHERE NOT EXISTS (SELECT 1 FROM stream_progress p "
                    "WHERE p.device_id = d.id AND p.stream = %s) AND EXISTS (SELECT 1 FROM "  # type: ignore[arg-type]
                    f"{table} t WHERE t.device_id = d.id AND t.seq IS NOT NULL AND t.ts_ms >= %s)",
                    (stream, now_ms() - SCAN_MARGIN_MS),
                )]  # fmt: skip
                if not only:
                    continue
            self.conn.execute(
                "INSERT INTO stream_progress (device_id, stream, contiguous_seq, max_seq) "
                f"SELECT d.id, %s, m.low - 1, m.low - 1 FROM devices d "  # type: ignore[arg-type]
                f"CROSS JOIN LATERAL (SELECT {'1' if self.cfg.from_first else 'min(seq)'} AS low "
                f"FROM {table} t WHERE t.device_id = d.id AND t.seq IS NOT NULL "
                "HAVING count(*) > 0) m "
                "WHERE NOT EXISTS (SELECT 1 FROM stream_progress p WHERE p.device_id = d.id "
                "AND p.stream = %s) AND (%s::int[] IS NULL OR d.id = ANY(%s)) "
                "ON CONFLICT DO NOTHING",
                (stream, stream, only, only),
            )

    def _progress(self) -> list[Progress]:
        rows = self.conn.execute(
            "SELECT p.device_id, p.stream, s.site, d.device, p.contiguous_seq, p.max_seq, "
            "p.head_seq, p.request_ms, p.request_first, p.request_last FROM stream_progress p "
            "JOIN devices d ON d.id = p.device_id JOIN sites s ON s.id = d.site_id"
        ).fetchall()
        return [Progress(*row) for row in rows]

    def _runs(self, p: Progress) -> list[tuple[int, int, int | None]]:
        """Runs of consecutive seqs from ``contiguous`` on that are stored, or were refused for
        good (dead letters with a seq: they will not come any better if asked for again), each
        as (first, last, time of the last one if stored).

        Without a time bound this is an index probe in every partition of the table, each
        tick, for each stream. A complete stream (nothing missing, nothing asked for) is
        looked for only from its contiguous seq's time less ``SCAN_MARGIN_MS``, so only the
        last day or two of partitions: a gateway's seqs follow its clock. If its clock stepped
        back further, its new rows are out of sight until its next ping reply shows a head
        beyond them; the stream is then no longer complete and is read whole again.
        """
        floor = self.floor_ms.get((p.device_id, p.stream)) if p.complete else None
        table = TABLES[p.stream]
        since = "" if floor is None else "AND ts_ms >= %(floor)s "  # prunes the partitions
        rows = self.conn.execute(
            "SELECT min(seq), max(seq), (array_agg(ts_ms ORDER BY seq DESC))[1] FROM ("
            "SELECT seq, ts_ms, seq - row_number() OVER (ORDER BY seq) AS run FROM ("
            "SELECT seq, max(ts_ms) AS ts_ms FROM ("
            f"SELECT seq, ts_ms FROM {table} WHERE device_id = %(device_id)s "  # type: ignore[arg-type]
            f"AND seq >= %(contiguous)s {since}"
            "UNION ALL SELECT seq, NULL FROM dead_letter WHERE site = %(site)s AND "
            "device = %(device)s AND stream = %(stream)s AND seq >= %(contiguous)s) u "
            "GROUP BY seq) s) r GROUP BY run ORDER BY 1",
            {"device_id": p.device_id, "contiguous": p.contiguous, "floor": floor, "site": p.site,
             "device": p.device, "stream": p.stream},
        ).fetchall()  # fmt: skip
        return [(int(a), int(b), None if ts is None else int(ts)) for a, b, ts in rows]

    def _repair(self, p: Progress, advanced: list[tuple[int, str, int, int]]) -> None:
        """Rewrite the stream's gaps and ask for the oldest; a complete stream that is still
        complete only goes on ``advanced`` (written for all at once), or nowhere if idle."""
        runs = self._runs(p)
        contiguous, newest, gaps = missing_ranges(p.contiguous, [r[:2] for r in runs], p.head)
        for _, last, last_ts in runs:
            if last == contiguous and last_ts is not None:  # the next bound (see _runs)
                self.floor_ms[(p.device_id, p.stream)] = last_ts - SCAN_MARGIN_MS
        if not gaps and p.complete:
            if (contiguous, newest) != (p.contiguous, p.max_seq):
                advanced.append((p.device_id, p.stream, contiguous, newest))
            return
        now = now_ms()
        with self.conn.transaction():
            old = self.conn.execute(
                "SELECT seq_first, seq_last, since_ms FROM open_gaps WHERE device_id = %s AND "
                "stream = %s",
                (p.device_id, p.stream),
            ).fetchall()
            since = {}
            for first, last in gaps:
                overlapping = [s for a, b, s in old if a <= last and b >= first]
                since[first] = min(overlapping, default=now)
            self.conn.execute(
                "DELETE FROM open_gaps WHERE device_id = %s AND stream = %s",
                (p.device_id, p.stream),
            )
            if gaps:
                self.conn.cursor().executemany(
                    "INSERT INTO open_gaps VALUES (%s, %s, %s, %s, %s)",
                    [(p.device_id, p.stream, a, b, since[a]) for a, b in gaps],
                )
            in_flight = p.request_ms is not None and now - p.request_ms < self.cfg.retry_s * 1000
            if in_flight and p.request_first is not None and p.request_last is not None:
                req_first, req_last = p.request_first, p.request_last
                in_flight = any(a <= req_last and b >= req_first for a, b in gaps)
            request = None
            due = [(a, b) for a, b in gaps if now - since[a] >= self.cfg.grace_s * 1000]
            if due and not in_flight and self.tokens >= 1:
                first, last = due[0]
                request = (first, min(last, first + MAX_REPUBLISH_ROWS - 1))
                self.tokens -= 1
            self.conn.execute(
                "UPDATE stream_progress SET contiguous_seq = %s, max_seq = greatest(max_seq, %s), "
                "request_ms = CASE WHEN %s THEN request_ms ELSE %s END, "
                "request_first = CASE WHEN %s THEN request_first ELSE %s END, "
                "request_last = CASE WHEN %s THEN request_last ELSE %s END, "
                "requests = requests + %s WHERE device_id = %s AND stream = %s",
                (
                    contiguous, newest,
                    in_flight, now if request else None,
                    in_flight, request[0] if request else None,
                    in_flight, request[1] if request else None,
                    1 if request else 0, p.device_id, p.stream,
                ),
            )  # fmt: skip
        if request is not None:
            log.info(
                "asking for a gap again",
                extra={"site": p.site, "device": p.device, "stream": p.stream,
                       "seq_first": request[0], "seq_last": request[1]},
            )  # fmt: skip
            self.send(
                p.site,
                "republish",
                {"device": p.device, "stream": p.stream, "seq_first": request[0],
                 "seq_last": request[1]},
            )  # fmt: skip
