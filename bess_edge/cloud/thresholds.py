"""Fleet rules (``alert_thresholds``): one limit for every site, checked as telemetry arrives.

A gateway's own rules raise its alerts offline; these are the operator's second line over the
whole fleet (a rule added once instead of 500 config edits). Each rule looks at the newest
sample of each device in a batch: over the threshold raises a cloud alert (one open per rule and
device, enforced by a partial unique index, so two workers cannot raise it twice); back past the
clear level clears it. Every transition is also a row of ``alert_history`` (source ``cloud``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from bess_edge.cloud.schema import TELEMETRY_SCALARS


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    name: str
    metric: str
    op: str
    threshold: float
    clear: float
    severity: str
    site: str | None

    def violated(self, value: float) -> bool:
        return value > self.threshold if self.op == ">" else value < self.threshold

    def back_to_normal(self, value: float) -> bool:
        return value <= self.clear if self.op == ">" else value >= self.clear


class FleetRules:
    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.open: set[tuple[int, int]] = set()  # (rule id, device id) with an open alert

    def load(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT id, name, metric, op, threshold, coalesce(clear, threshold), severity, site "
            "FROM alert_thresholds WHERE enabled"
        ).fetchall()
        self.rules = [Rule(*row) for row in rows if row[2] in TELEMETRY_SCALARS]
        self.open = {
            (r, d)
            for r, d in conn.execute(
                "SELECT threshold_id, device_id FROM cloud_alerts WHERE cleared_ms IS NULL"
            ).fetchall()
        }

    def evaluate(self, cur: psycopg.Cursor, newest: dict[int, dict[str, Any]]) -> None:
        """Raise or clear against each device's newest sample, inside the batch's transaction."""
        for rule in self.rules:
            for device_id, item in newest.items():
                value = item.get(rule.metric)
                if value is None or (rule.site is not None and rule.site != item["site"]):
                    continue
                key = (rule.id, device_id)
                if rule.violated(value) and key not in self.open:
                    self._raise(cur, rule, device_id, item["ts_ms"], value)
                    self.open.add(key)
                elif key in self.open and rule.back_to_normal(value):
                    self._clear(cur, rule, device_id, item["ts_ms"], value)
                    self.open.discard(key)

    def _raise(
        self, cur: psycopg.Cursor, rule: Rule, device_id: int, ts_ms: int, value: float
    ) -> None:
        row = cur.execute(
            "INSERT INTO cloud_alerts (threshold_id, device_id, raised_ms, value) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (threshold_id, device_id) "
            "WHERE cleared_ms IS NULL DO NOTHING RETURNING id",
            (rule.id, device_id, ts_ms, value),
        ).fetchone()
        if row is not None:
            self._history(cur, row[0], rule, device_id, ts_ms, value, "raised",
                          f"{rule.metric} {value:g} {rule.op} {rule.threshold:g} (fleet rule "
                          f"{rule.name})")  # fmt: skip

    def _clear(
        self, cur: psycopg.Cursor, rule: Rule, device_id: int, ts_ms: int, value: float
    ) -> None:
        row = cur.execute(
            "UPDATE cloud_alerts SET cleared_ms = %s WHERE threshold_id = %s AND device_id = %s "
            "AND cleared_ms IS NULL AND raised_ms <= %s RETURNING id",
            (ts_ms, rule.id, device_id, ts_ms),
        ).fetchone()
        if row is not None:
            self._history(cur, row[0], rule, device_id, ts_ms, value, "cleared",
                          f"{rule.metric} {value:g} back past {rule.clear:g}")  # fmt: skip

    @staticmethod
    def _history(
        cur: psycopg.Cursor, alert_id: int, rule: Rule, device_id: int, ts_ms: int,
        value: float, transition: str, message: str,
    ) -> None:  # fmt: skip
        cur.execute(
            "INSERT INTO alert_history (device_id, ts_ms, source, alert_id, transition, rule, "
            "severity, message, value) VALUES (%s, %s, 'cloud', %s, %s, %s, %s, %s, %s)",
            (device_id, ts_ms, alert_id, transition, rule.name, rule.severity, message, value),
        )
