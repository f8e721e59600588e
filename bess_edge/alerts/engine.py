"""The alert engine: turns Readings, Diagnoses, comms changes and acks into alert transitions.

One episode per (device, rule, cell): raised → (acknowledged) → cleared, each step an
:class:`AlertTransition` the store commits with the cycle. Against a flapping storm a rule has
three brakes (docs/alerts.md): ``for_s`` (the condition must hold that long to raise), ``clear``
with ``clear_for_s`` (hysteresis: the value must come back past another level, for that long, to
clear) and ``min_reraise_s`` (no new episode sooner than that after the last one cleared).

Times are the Readings' wall-clock ``ts_ms``, so replayed data alerts exactly as live data did.
Only the active episodes are persistent (the store's ``alerts`` rows); after a restart the
engine is rebuilt from them and debounce timers start afresh, which can delay a raise by at most
``for_s`` but never duplicates an episode.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.alerts.actions import run_action
from bess_edge.alerts.metrics import MetricSource, known_metrics
from bess_edge.config import BUILTIN_ALERTS, ThresholdRule
from bess_edge.model import Reading
from bess_edge.store import SITE_DEVICE, AlertTransition

log = logging.getLogger(__name__)

COMMS_LOST_RULE = "comms_lost"
BUFFER_RULE = "buffer_dropping"
THERMAL_RULE = "thermal_runaway_precursor"
STORE_CORRUPT_RULE = "store_corrupt"
POLLS_SKIPPED_RULE = "polls_skipped"
# Alerts about an event, not a state that can go back: acknowledging one also clears it.
EVENT_RULES = frozenset({STORE_CORRUPT_RULE})

# The diagnostics' thermal-runaway precursor at "high" (level 2) or "critical" (3) needs no rule.
# Cleared only after a minute below "high", so a risk estimate hovering at the boundary stays
# one episode. Built with model_construct: the name is reserved for exactly this rule.
THERMAL_PRECURSOR = ThresholdRule.model_construct(
    name=THERMAL_RULE,
    metric="thermal_risk_level",
    above=1.5,
    below=None,
    clear=None,
    for_s=0.0,
    clear_for_s=60.0,
    min_reraise_s=0.0,
    severity="critical",
    devices=["*"],
    message="{device}: thermal-runaway precursor (thermal risk level {value:g})",
    action=None,
)

Key = tuple[str, str, "int | None"]  # (device, rule, cell)


class AckError(ValueError):
    """An acknowledgement that cannot apply: the alert is already acknowledged or cleared."""


@dataclass(slots=True)
class Episode:
    """An active alert, as much of it as later transitions repeat."""

    alert_id: int
    device: str
    rule: str
    cell: int | None
    severity: str
    message: str
    acked: bool = False


@dataclass(slots=True)
class Timers:
    """Debounce state of one (device, rule, cell); dropped when it holds nothing."""

    breach_since_ms: int | None = None  # condition true since (not yet raised)
    clear_since_ms: int | None = None  # back past the clear level since (still active)
    cleared_ms: int | None = None  # when the last episode cleared (for min_reraise_s)

    def rewind(self, ts_ms: int) -> None:
        """A wall clock stepped back (NTP, an RTC reset) restarts timers instead of freezing
        them until the clock catches up."""
        for name in ("breach_since_ms", "clear_since_ms", "cleared_ms"):
            since = getattr(self, name)
            if since is not None and ts_ms < since:
                setattr(self, name, ts_ms)


class AlertEngine:
    """Alert state of the whole site; ids are allocated here so transitions can refer to them."""

    def __init__(
        self,
        rules: list[ThresholdRule],
        next_alert_id: int,
        active: list[dict[str, Any]],
        last_cleared: Sequence[dict[str, Any]] = (),
    ) -> None:
        # ``next_alert_id`` is the highest id already used (Store.max_alert_id()); ``active``
        # and ``last_cleared`` are Store.active_alerts() and Store.last_cleared_alerts(), so a
        # restart neither duplicates an episode nor re-raises sooner than min_reraise_s.
        self._next_id = next_alert_id
        self.active: dict[Key, Episode] = {}
        self._by_id: dict[int, Key] = {}
        # (device, rule) -> cell -> timers; every active episode has an entry.
        self._timers: dict[tuple[str, str], dict[int | None, Timers]] = {}
        for a in active:
            self._remember(
                Episode(
                    alert_id=a["id"],
                    device=a["device"],
                    rule=a["rule"],
                    cell=a["cell"],
                    severity=a["severity"],
                    message=a["message"],
                    acked=a.get("acked_ts_ms") is not None,
                )
            )
            self._timers.setdefault((a["device"], a["rule"]), {})[a["cell"]] = Timers()
        for c in last_cleared:
            cells = self._timers.setdefault((c["device"], c["rule"]), {})
            cells.setdefault(c["cell"], Timers()).cleared_ms = c["cleared_ts_ms"]
        self.update_rules(rules)

    # -- rules ------------------------------------------------------------------------------

    def update_rules(self, rules: list[ThresholdRule]) -> None:
        """Swap the rule set (SIGHUP); active episodes and timers of kept rules carry over."""
        self.rules = [*rules, THERMAL_PRECURSOR]
        self._by_name = {r.name: r for r in self.rules}
        self._rules_of_device: dict[str, list[ThresholdRule]] = {}
        known = known_metrics()
        for rule in rules:
            if rule.metric not in known:
                log.warning(
                    "alert rule uses an unknown metric; it only fires if a driver or the "
                    "diagnostics report a value of that name",
                    extra={"rule": rule.name, "metric": rule.metric},
                )

    def rules_for(self, device: str) -> list[ThresholdRule]:
        rules = self._rules_of_device.get(device)
        if rules is None:
            rules = [r for r in self.rules if _selects(r, device)]
            self._rules_of_device[device] = rules
        return rules

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, reading: Reading, diagnosis: Any) -> list[AlertTransition]:
        """Transitions caused by one cycle's data (none for a metric absent this cycle)."""
        device, ts = reading.device_id, reading.ts_ms
        source = MetricSource(reading, diagnosis)
        out: list[AlertTransition] = []
        rules = self.rules_for(device)
        for rule in rules:
            value = source.get(rule.metric)
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                out += self._evaluate_cells(rule, device, value, ts)
            else:
                out += self._step(rule, device, None, value, ts)
        out += self._retire_orphans(device, {r.name for r in rules}, ts)
        return out

    def _evaluate_cells(
        self, rule: ThresholdRule, device: str, values: np.ndarray, ts: int
    ) -> list[AlertTransition]:
        """Only cells that breach now or have state are stepped: 10,000 healthy cells cost one
        vectorised comparison."""
        with np.errstate(invalid="ignore"):
            breach = values > rule.above if rule.above is not None else values < rule.below
        cells = set(np.flatnonzero(breach).tolist())
        cells |= {c for c in self._timers.get((device, rule.name), {}) if c is not None}
        out: list[AlertTransition] = []
        for cell in sorted(cells):
            if cell < values.size and math.isfinite(values[cell]):
                out += self._step(rule, device, cell, float(values[cell]), ts)
        return out

    def _step(
        self, rule: ThresholdRule, device: str, cell: int | None, value: float, ts: int
    ) -> list[AlertTransition]:
        """One value through one (device, rule, cell) state machine."""
        cells = self._timers.setdefault((device, rule.name), {})
        t = cells.setdefault(cell, Timers())
        t.rewind(ts)
        episode = self.active.get((device, rule.name, cell))
        out: list[AlertTransition] = []
        if episode is None:
            if _breaches(rule, value):
                if t.breach_since_ms is None:
                    t.breach_since_ms = ts
                held = ts - t.breach_since_ms >= rule.for_s * 1000
                rested = t.cleared_ms is None or ts - t.cleared_ms >= rule.min_reraise_s * 1000
                if held and rested:
                    t.breach_since_ms = t.clear_since_ms = None
                    out.append(self._raise(rule, device, cell, value, ts))
            else:
                t.breach_since_ms = None
        elif _cleared(rule, value):
            if t.clear_since_ms is None:
                t.clear_since_ms = ts
            if ts - t.clear_since_ms >= rule.clear_for_s * 1000:
                t.clear_since_ms, t.cleared_ms = None, ts
                message = _render(rule, device, cell, value, "cleared")
                out.append(self._end(episode, ts, message, value))
        else:
            t.clear_since_ms = None
        if (
            (device, rule.name, cell) not in self.active
            and t.breach_since_ms is None
            and (t.cleared_ms is None or ts - t.cleared_ms >= rule.min_reraise_s * 1000)
        ):
            del cells[cell]
        for transition in out:
            if rule.action is not None:
                run_action(rule.action, transition)
        return out

    def _retire_orphans(self, device: str, rule_names: set[str], ts: int) -> list[AlertTransition]:
        """Clear this device's episodes whose rule was removed or no longer selects it (reload)."""
        orphans = [
            e
            for (d, rule, _), e in self.active.items()
            if d == device and rule not in rule_names and rule not in BUILTIN_ALERTS
        ]
        out = []
        for e in orphans:
            self._timers.get((device, e.rule), {}).pop(e.cell, None)
            out.append(self._end(e, ts, f"{device}: rule {e.rule!r} removed from the config"))
        return out

    # -- built-in alerts --------------------------------------------------------------------

    def comms_changed(
        self, device: str, lost: bool, ts_ms: int, reason: str = ""
    ) -> list[AlertTransition]:
        """Raise ``comms_lost`` when a device is lost, clear it when it answers again."""
        episode = self.active.get((device, COMMS_LOST_RULE, None))
        if lost and episode is None:
            message = f"{device}: communication lost ({reason})"
            return [self._open(device, COMMS_LOST_RULE, None, "critical", message, None, ts_ms)]
        if not lost and episode is not None:
            return [self._end(episode, ts_ms, f"{device}: communication restored")]
        return []

    def buffer_dropping(
        self, dropping: bool, samples_dropped: int, diagnoses_dropped: int, ts_ms: int
    ) -> list[AlertTransition]:
        """Raise ``buffer_dropping`` while the storage cap forces unsent telemetry out; the
        counts (the store's totals) name samples and diagnosis rows apart."""
        episode = self.active.get((SITE_DEVICE, BUFFER_RULE, None))
        total = samples_dropped + diagnoses_dropped
        if dropping and episode is None:
            message = (
                f"storage full: {samples_dropped} unsent samples and {diagnoses_dropped} unsent "
                "diagnosis rows dropped"
            )
            return [self._open(SITE_DEVICE, BUFFER_RULE, None, "critical", message, total, ts_ms)]
        if not dropping and episode is not None:
            return [self._end(episode, ts_ms, "storage no longer dropping data", total)]
        return []

    def polls_skipped(
        self, device: str, skipping: bool, skipped_total: int, interval_s: float, ts_ms: int
    ) -> list[AlertTransition]:
        """Raise ``polls_skipped`` while the gateway cannot keep a device's poll schedule."""
        episode = self.active.get((device, POLLS_SKIPPED_RULE, None))
        if skipping and episode is None:
            message = (
                f"{device}: polls skipped ({skipped_total} so far): the gateway cannot keep up "
                f"with a poll every {interval_s:g} s"
            )
            return [
                self._open(
                    device, POLLS_SKIPPED_RULE, None, "warning", message, skipped_total, ts_ms
                )
            ]
        if not skipping and episode is not None:
            message = f"{device}: polls on schedule again"
            return [self._end(episode, ts_ms, message, skipped_total)]
        return []

    def store_corrupt(self, moved_to: str, ts_ms: int) -> list[AlertTransition]:
        """Raise ``store_corrupt``: the store was unreadable at start and replaced by a fresh
        one. An event, so it stays active until acknowledged, which clears it."""
        message = f"store file was corrupt: moved aside to {moved_to}, a fresh store started"
        return [self._open(SITE_DEVICE, STORE_CORRUPT_RULE, None, "critical", message, None, ts_ms)]

    # -- acknowledgement --------------------------------------------------------------------

    def acknowledge(
        self, alert_id: int, actor: str, note: str | None, ts_ms: int
    ) -> list[AlertTransition]:
        """Acknowledge an active alert (CLI via the store, or the cloud's ``cmd/ack``).

        Raises KeyError for an id never allocated, :class:`AckError` for one already
        acknowledged or already cleared.
        """
        key = self._by_id.get(alert_id)
        if key is None:
            if 0 < alert_id <= self._next_id:
                raise AckError(f"alert {alert_id} is already cleared")
            raise KeyError(alert_id)
        episode = self.active[key]
        if episode.acked:
            raise AckError(f"alert {alert_id} is already acknowledged")
        episode.acked = True
        transition = self._transition(episode, "acknowledged", ts_ms, episode.message)
        transition.actor, transition.note = actor, note
        rule = self._by_name.get(episode.rule)
        if rule is not None and rule.action is not None:
            run_action(rule.action, transition)
        if episode.rule in EVENT_RULES:
            return [transition, self._end(episode, ts_ms, f"{episode.message} (acknowledged)")]
        return [transition]

    # -- episodes ---------------------------------------------------------------------------

    def _raise(
        self, rule: ThresholdRule, device: str, cell: int | None, value: float, ts: int
    ) -> AlertTransition:
        message = _render(rule, device, cell, value, "raised")
        return self._open(device, rule.name, cell, rule.severity, message, value, ts)

    def _open(
        self,
        device: str,
        rule: str,
        cell: int | None,
        severity: str,
        message: str,
        value: float | None,
        ts_ms: int,
    ) -> AlertTransition:
        self._next_id += 1
        episode = Episode(self._next_id, device, rule, cell, severity, message)
        self._remember(episode)
        log.warning(
            "alert raised",
            extra={"alert_id": episode.alert_id, "device": device, "rule": rule, "cell": cell},
        )
        transition = self._transition(episode, "raised", ts_ms, message)
        transition.value = None if value is None else float(value)
        return transition

    def _end(
        self, episode: Episode, ts_ms: int, message: str, value: float | None = None
    ) -> AlertTransition:
        del self.active[(episode.device, episode.rule, episode.cell)]
        del self._by_id[episode.alert_id]
        log.info(
            "alert cleared",
            extra={"alert_id": episode.alert_id, "device": episode.device, "rule": episode.rule},
        )
        transition = self._transition(episode, "cleared", ts_ms, message)
        transition.value = None if value is None else float(value)
        return transition

    def _remember(self, episode: Episode) -> None:
        key = (episode.device, episode.rule, episode.cell)
        self.active[key] = episode
        self._by_id[episode.alert_id] = key

    @staticmethod
    def _transition(episode: Episode, kind: str, ts_ms: int, message: str) -> AlertTransition:
        return AlertTransition(
            alert_id=episode.alert_id,
            device=episode.device,
            rule=episode.rule,
            transition=kind,
            ts_ms=ts_ms,
            severity=episode.severity,
            message=message,
            cell=episode.cell,
        )


def _selects(rule: ThresholdRule, device: str) -> bool:
    return any(fnmatch.fnmatchcase(device, pattern) for pattern in rule.devices)


def _breaches(rule: ThresholdRule, value: float) -> bool:
    return value > rule.above if rule.above is not None else value < rule.below  # type: ignore[operator]


def _cleared(rule: ThresholdRule, value: float) -> bool:
    """Back past the clear level (with ``clear`` unset: simply no longer breaching)."""
    level = rule.clear_level
    return value <= level if rule.above is not None else value >= level


def _render(rule: ThresholdRule, device: str, cell: int | None, value: float, kind: str) -> str:
    where = "" if cell is None else f" cell {cell}"
    if kind == "cleared":
        return f"{device}{where}: {rule.metric} back to {value:.4g} (clear at {rule.clear_level:g})"
    return rule.message.format(
        device=device,
        cell="-" if cell is None else cell,
        where=where,
        value=value,
        threshold=rule.threshold,
        clear=rule.clear_level,
        metric=rule.metric,
        op=">" if rule.above is not None else "<",
        rule=rule.name,
        severity=rule.severity,
    )
