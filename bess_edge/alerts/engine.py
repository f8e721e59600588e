"""The alert engine: turns Readings, Diagnoses and comms changes into alert transitions.

Walking-skeleton version: the built-in ``comms_lost`` alert per device. Threshold rules,
debounce, hysteresis and acknowledgement (issue 6) extend this class.
"""

from __future__ import annotations

from typing import Any

from bess_edge.config import ThresholdRule
from bess_edge.model import Reading
from bess_edge.store import SITE_DEVICE, AlertTransition

COMMS_LOST_RULE = "comms_lost"
BUFFER_RULE = "buffer_dropping"


class AlertEngine:
    """Alert state of the whole site; ids are allocated here so transitions can refer to them."""

    def __init__(
        self, rules: list[ThresholdRule], next_alert_id: int, active: list[dict[str, Any]]
    ) -> None:
        self.rules = list(rules)
        self._next_id = next_alert_id
        # (device, rule, cell) -> alert id of the active episode, restored from the store.
        self.active: dict[tuple[str, str, int | None], int] = {
            (a["device"], a["rule"], a["cell"]): a["id"] for a in active
        }

    def update_rules(self, rules: list[ThresholdRule]) -> None:
        self.rules = list(rules)

    def evaluate(self, reading: Reading, diagnosis: Any) -> list[AlertTransition]:
        """Transitions caused by one cycle's data."""
        return []

    def comms_changed(
        self, device: str, lost: bool, ts_ms: int, reason: str = ""
    ) -> list[AlertTransition]:
        """Raise ``comms_lost`` when a device is lost, clear it when it answers again."""
        key = (device, COMMS_LOST_RULE, None)
        if lost and key not in self.active:
            self.active[key] = alert_id = self._allocate()
            return [
                AlertTransition(
                    alert_id=alert_id,
                    device=device,
                    rule=COMMS_LOST_RULE,
                    transition="raised",
                    ts_ms=ts_ms,
                    severity="critical",
                    message=f"{device}: communication lost ({reason})",
                )
            ]
        if not lost and key in self.active:
            alert_id = self.active.pop(key)
            return [
                AlertTransition(
                    alert_id=alert_id,
                    device=device,
                    rule=COMMS_LOST_RULE,
                    transition="cleared",
                    ts_ms=ts_ms,
                    severity="critical",
                    message=f"{device}: communication restored",
                )
            ]
        return []

    def buffer_dropping(
        self, dropping: bool, dropped_total: int, ts_ms: int
    ) -> list[AlertTransition]:
        """Raise ``buffer_dropping`` while the storage cap forces unsent telemetry out."""
        key = (SITE_DEVICE, BUFFER_RULE, None)
        if dropping and key not in self.active:
            self.active[key] = alert_id = self._allocate()
            transition, message = "raised", f"storage full: {dropped_total} unsent samples dropped"
        elif not dropping and key in self.active:
            alert_id, transition = self.active.pop(key), "cleared"
            message = "storage no longer dropping data"
        else:
            return []
        return [
            AlertTransition(
                alert_id=alert_id,
                device=SITE_DEVICE,
                rule=BUFFER_RULE,
                transition=transition,
                ts_ms=ts_ms,
                severity="critical",
                message=message,
                value=float(dropped_total),
            )
        ]

    def _allocate(self) -> int:
        self._next_id += 1
        return self._next_id
