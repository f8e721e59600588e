"""Daily partitions of ``telemetry`` and ``battery_diagnostics``: created ahead of the rows that
need them, dropped past the retention.

Partitioning by day keeps each partition's indexes small enough to stay in memory while it is
written, and makes retention a ``DROP TABLE`` instead of a ``DELETE`` of millions of rows.
There is no default partition: a row whose time is outside the window the ingest accepts is
refused (dead letter) rather than parked somewhere no query looks.
"""

from __future__ import annotations

import datetime as dt
import logging

import psycopg

from bess_edge.cloud.schema import PARTITIONED

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
PARTITION_LOCK = 0x62657374  # serialises CREATE/DROP of partitions between workers


def day_of(ts_ms: int) -> int:
    return ts_ms // DAY_MS


def partition_name(table: str, day: int) -> str:
    date = dt.datetime.fromtimestamp(day * DAY_MS / 1000, tz=dt.UTC)
    return f"{table}_{date:%Y%m%d}"


class Partitions:
    """Remembers which days exist, so the write path asks the database only for a new day."""

    def __init__(self) -> None:
        self.known: set[int] = set()

    def ensure(self, conn: psycopg.Connection, days: set[int]) -> None:
        """Create the missing daily partitions, in their own short transaction (the caller has
        none open)."""
        missing = days - self.known
        if not missing:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for day in sorted(missing):
                for table in PARTITIONED:
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} "  # type: ignore[arg-type]
                        f"PARTITION OF {table} FOR VALUES FROM ({day * DAY_MS}) "
                        f"TO ({(day + 1) * DAY_MS})"
                    )
        self.known |= missing

    def drop_older_than(self, conn: psycopg.Connection, cutoff_ms: int) -> list[str]:
        """Drop whole days that end at or before ``cutoff_ms``; returns the dropped tables."""
        dropped = []
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for table in PARTITIONED:
                rows = conn.execute(
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
                    (table,),
                ).fetchall()
                for name, bound in rows:
                    upper = int(bound.rsplit("(", 1)[1].rstrip(")").strip("'"))
                    if upper <= cutoff_ms:
                        conn.execute(f"DROP TABLE {name}")  # type: ignore[arg-type]
                        dropped.append(name)
        if dropped:
            self.known -= {day for day in self.known if (day + 1) * DAY_MS <= cutoff_ms}
            log.info("partitions dropped past the retention", extra={"tables": dropped})
        return dropped
