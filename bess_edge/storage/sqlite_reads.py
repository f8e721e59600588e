"""Read queries over the daemon's SQLite file, shared by the Store and the API's backend.

A mixin: the class using it provides ``conn`` (sqlite3) and ``db`` (sqlite_utils) on the same
file. The Store keeps answering the CLI with it; :class:`SqliteStorage` builds the API's
models on it, so no query exists twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

import sqlite_utils

from bess_edge.storage.cells import unpack_cells


class SqliteReads:
    conn: sqlite3.Connection
    db: sqlite_utils.Database

    def samples(
        self, device: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterable[dict[str, Any]]:
        """Samples of a device in time order, cell arrays unpacked to lists of floats."""
        where: list[str] = ["device = ?"]
        params: list[Any] = [device]
        if since_ms is not None:
            where.append("ts_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("ts_ms < ?")
            params.append(until_ms)
        sql = f"SELECT * FROM samples WHERE {' AND '.join(where)} ORDER BY seq"
        for row in self.db.query(sql, params):
            yield sample_row_to_dict(row)

    def latest_sample(self, device: str) -> dict[str, Any] | None:
        rows = list(
            self.db.query(
                "SELECT * FROM samples WHERE device = ? ORDER BY seq DESC LIMIT 1", [device]
            )
        )
        return sample_row_to_dict(rows[0]) if rows else None

    def latest_diagnosis(self, device: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT data FROM diagnoses WHERE device = ? ORDER BY seq DESC LIMIT 1", (device,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM alerts WHERE id = ?", [alert_id]))
        return rows[0] if rows else None

    def alert_history(
        self,
        active_only: bool = False,
        limit: int = 1000,
        *,
        filters: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Alert episodes, newest first, each with its transitions (oldest first).

        ``filters`` narrows by column: ``id``, ``state``, ``device``, ``rule``, ``severity``
        (equal) and ``since_ms`` / ``until_ms`` (on ``raised_ts_ms``); None values are ignored.
        """
        where, params = [], []
        if active_only:
            where.append("state = 'active'")
        for key, value in (filters or {}).items():
            if value is None:
                continue
            if key in ("id", "state", "device", "rule", "severity"):
                where.append(f"{key} = ?")
            elif key == "since_ms":
                where.append("raised_ts_ms >= ?")
            elif key == "until_ms":
                where.append("raised_ts_ms < ?")
            else:
                raise ValueError(f"unknown alert filter {key!r}")
            params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        alerts = list(
            self.db.query(
                f"SELECT * FROM alerts {clause} ORDER BY id DESC LIMIT ?", [*params, limit]
            )
        )
        if alerts:
            marks = ",".join("?" * len(alerts))
            events: dict[int, list[dict[str, Any]]] = {}
            for e in self.db.query(
                "SELECT alert_id, seq, ts_ms, transition, actor, note FROM alert_events "
                f"WHERE alert_id IN ({marks}) ORDER BY id",
                [a["id"] for a in alerts],
            ):
                events.setdefault(e.pop("alert_id"), []).append(e)
            for a in alerts:
                a["events"] = events.get(a["id"], [])
        return alerts


def sample_row_to_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A samples row as plain data: cell BLOBs unpacked, JSON columns parsed."""
    out = dict(row)
    out["cell_voltage_v"] = [round(v, 5) for v in unpack_cells(row["cell_voltage_v"]).tolist()]
    out["cell_temperature_c"] = [
        round(v, 3) for v in unpack_cells(row["cell_temperature_c"]).tolist()
    ]
    out["extra"] = json.loads(row["extra"]) if row["extra"] else {}
    out["quality_notes"] = json.loads(row["quality_notes"]) if row["quality_notes"] else []
    return out
