"""Is the site healthy? One snapshot for /health, /metrics and systemd's STATUS= line.

Unhealthy means someone should look: a device is ``comms_lost``, the buffer is dropping unsent
telemetry at its cap, the store does not answer, or its commits fail (a corrupt file: nothing
is being written). A broker that is down is *not* unhealthy:
working offline is the normal life of an edge gateway (the buffer exists for it), and the
broker state and backlog are reported for a human or an alert rule to judge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bess_edge.metrics import MQTT_CONNECTED, gauge_value
from bess_edge.model import CommsState, now_ms
from bess_edge.store import Store

if TYPE_CHECKING:
    from bess_edge.daemon import Daemon

# Telemetry dropped within this window counts as "dropping now". Two housekeeping periods, so a
# cap enforced every minute keeps the state up between passes.
DROP_WINDOW_S = 120.0
# A scrape waits this long for the store thread (behind a slow commit on an SD card) before
# reporting the store itself as the problem.
STORE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class DeviceHealth:
    id: str
    driver: str
    comms: str
    polls: int
    poll_errors: int
    consecutive_failures: int
    last_reading_age_s: float | None
    last_poll_duration_s: float
    last_error: str | None
    frame_counters: dict[str, int] | None = None  # drivers that count frames (CAN)


@dataclass(slots=True)
class Health:
    devices: list[DeviceHealth]
    mqtt: str  # "disabled" | "connected" | "disconnected"
    unsent: dict[str, int] = field(default_factory=dict)  # outbox rows per stream
    buffer_bytes: int = 0
    buffer_cap_bytes: int = 0
    telemetry_dropped: int = 0
    dropping: bool = False
    alerts_active: dict[str, int] = field(default_factory=dict)  # severity -> count
    last_sync_ts_ms: int | None = None
    oldest_unsent_ts_ms: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = "ok" if self.healthy else "unhealthy"
        out["last_sync_age_s"] = (
            round((now_ms() - self.last_sync_ts_ms) / 1000, 1) if self.last_sync_ts_ms else None
        )
        out["backlog_age_s"] = round(self.backlog_age_s, 1)
        return out

    @property
    def backlog_age_s(self) -> float:
        """Age of the oldest row still waiting to be published; 0 when all is sent."""
        if self.oldest_unsent_ts_ms is None:
            return 0.0
        return max(0.0, (now_ms() - self.oldest_unsent_ts_ms) / 1000)

    def status_line(self) -> str:
        """One line for ``systemctl status`` (sd_notify STATUS=)."""
        counts: dict[str, int] = {}
        for d in self.devices:
            counts[d.comms] = counts.get(d.comms, 0) + 1
        devices = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        line = f"{len(self.devices)} devices ({devices}); unsent {sum(self.unsent.values())}"
        line += f"; mqtt {self.mqtt}"
        if self.problems:
            line += "; UNHEALTHY: " + "; ".join(self.problems)
        return line


def _store_facts(store: Store) -> dict[str, Any]:
    """Everything /health needs from SQLite, read in one call on the store thread."""
    severities: dict[str, int] = {}
    for alert in store.active_alerts():
        severities[alert["severity"]] = severities.get(alert["severity"], 0) + 1
    last_sync = store.meta("last_sync_ts_ms")
    return {
        "unsent": store.outbox_depth(),
        "buffer_bytes": store.file_bytes(),
        "telemetry_dropped": store.counter("telemetry_dropped"),
        "alerts_active": severities,
        "last_sync_ts_ms": int(last_sync) if last_sync else None,
        "oldest_unsent_ts_ms": store.outbox_oldest_ts_ms(),
    }


def device_health(daemon: Daemon) -> list[DeviceHealth]:
    """Per-device state from memory (the poll tasks' own view): no I/O."""
    now = now_ms()
    out = []
    for device_id, pipeline in daemon.pipelines.items():
        s = pipeline.status
        out.append(
            DeviceHealth(
                id=device_id,
                driver=pipeline.device.driver,
                comms=str(s.comms),
                polls=s.polls,
                poll_errors=s.poll_errors,
                consecutive_failures=s.consecutive_failures,
                last_reading_age_s=round((now - s.last_ok_ts_ms) / 1000, 3)
                if s.last_ok_ts_ms
                else None,
                last_poll_duration_s=round(daemon.pollers[device_id].last_poll_duration_s, 6),
                last_error=s.last_error,
                frame_counters=_frame_counters(daemon.pollers[device_id].driver),
            )
        )
    return out


def _frame_counters(driver: object) -> dict[str, int] | None:
    """A driver's own receive counters (the CAN driver's ``counters`` dataclass), if it has any."""
    counters = getattr(driver, "counters", None)
    if not dataclasses.is_dataclass(counters) or isinstance(counters, type):
        return None
    return {k: v for k, v in dataclasses.asdict(counters).items() if isinstance(v, int)}


def _mqtt_state(daemon: Daemon) -> str:
    if not daemon.settings.mqtt.enabled:
        return "disabled"
    return "connected" if gauge_value(MQTT_CONNECTED) == 1 else "disconnected"


async def check(daemon: Daemon) -> Health:
    """A fresh snapshot of the site's health (runs on the daemon's loop)."""
    health = Health(
        devices=device_health(daemon),
        mqtt=_mqtt_state(daemon),
        buffer_cap_bytes=daemon.worker.store.max_size_bytes,
    )
    for d in health.devices:
        if d.comms == CommsState.LOST:
            health.problems.append(f"{d.id}: comms lost ({d.last_error})")
    if daemon.store_error is not None:
        health.problems.append(daemon.store_error)
    try:
        facts = await asyncio.wait_for(
            daemon.worker.call(_store_facts, daemon.worker.store), STORE_TIMEOUT_S
        )
    except TimeoutError:
        health.problems.append(f"store not answering within {STORE_TIMEOUT_S:g} s")
    except Exception as exc:
        health.problems.append(f"store error: {exc!r}")
    else:
        for key, value in facts.items():
            setattr(health, key, value)
    last_drop = daemon.last_drop_mono
    health.dropping = last_drop is not None and time.monotonic() - last_drop < DROP_WINDOW_S
    if health.dropping:
        health.problems.append(
            f"buffer full: unsent telemetry being dropped ({health.telemetry_dropped} so far)"
        )
    return health
