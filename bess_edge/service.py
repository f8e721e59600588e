"""Running under systemd: READY=1, STATUS=, WATCHDOG=1 (``Type=notify``, ``WatchdogSec=``).

The watchdog ping comes from a task on the daemon's own event loop, after checking that the
loop's vital parts still work: every poll task is alive and the store thread has not been stuck
for minutes. A loop blocked by a driver's synchronous call, a crashed task or a hung disk
therefore stops the pings,
and systemd restarts the service (``Restart=on-failure``). A lost device or a broker outage
does not: restarting cannot fix those, and the daemon already handles them.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bess_edge import health
from bess_edge.config import ConfigError, Settings, read_toml
from bess_edge.notify import notify, watchdog_interval_s

if TYPE_CHECKING:
    from bess_edge.daemon import Daemon

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 30.0  # how often STATUS= is refreshed (it queries the outbox depth)
READY_GRACE_S = 1.0  # beyond the slowest device's timeout, before READY=1 is sent anyway
# The store thread may legitimately be busy for a while (dropping old telemetry at the cap on a
# slow SD card); only this long without answering counts as hung. Shorter, and a restart could
# interrupt the very clean-up that would have ended the stall, at every start.
STORE_STALL_LIMIT_S = 300.0


class ServiceNotifier:
    """The task that tells systemd how the daemon is doing."""

    def __init__(self, daemon: Daemon, vital_tasks: Sequence[asyncio.Task[None]]) -> None:
        self.daemon = daemon
        self.vital_tasks = list(vital_tasks)
        self.watchdog_s = watchdog_interval_s()
        self._probe: asyncio.Future[None] | None = None  # a no-op queued on the store thread
        self._probe_sent_mono = 0.0

    async def run(self) -> None:
        await self._first_polls()
        snapshot = await health.check(self.daemon)
        notify("READY=1", f"STATUS={snapshot.status_line()}")
        log.info(
            "ready",
            extra={
                "startup_s": round(time.monotonic() - self.daemon.started_mono, 3),
                "watchdog_s": self.watchdog_s,
            },
        )
        # A third of the period: one late ping (a slow check, a busy box) is still in time.
        period_s = self.watchdog_s / 3 if self.watchdog_s else STATUS_INTERVAL_S
        last_status = time.monotonic()
        while True:
            if self.watchdog_s:
                problem = self.vital_problem()
                if problem is None:
                    notify("WATCHDOG=1")
                else:
                    log.error(
                        "watchdog ping withheld: systemd will restart us", extra={"reason": problem}
                    )
            if time.monotonic() - last_status >= STATUS_INTERVAL_S:
                notify(f"STATUS={(await health.check(self.daemon)).status_line()}")
                last_status = time.monotonic()
            await asyncio.sleep(period_s)

    async def _first_polls(self) -> None:
        """Wait until every device has been opened and polled once (or failed to be)."""
        devices = self.daemon.pollers
        slowest = max((p.device.timeout_s for p in devices.values()), default=0.0)
        deadline = time.monotonic() + slowest + READY_GRACE_S
        while not self.daemon.polled.issuperset(devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def vital_problem(self) -> str | None:
        """Why the daemon should be restarted, or None while it is sound.

        Never waits: the store is probed with a no-op left queued on its thread, and found hung
        only when that no-op has waited longer than :data:`STORE_STALL_LIMIT_S`.
        """
        for task in self.vital_tasks:
            if task.done():
                return f"task {task.get_name()} ended unexpectedly"
        now = time.monotonic()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self.daemon.worker.call(_noop))
            self._probe_sent_mono = now
        elif now - self._probe_sent_mono > STORE_STALL_LIMIT_S:
            return f"store thread has not answered for {now - self._probe_sent_mono:.0f} s"
        return None


def _noop() -> None:
    return None


def exposed_secrets(config_path: Path, settings: Settings) -> list[str]:
    """Secrets that any local user could read: the config with a password, key files."""
    found = []
    try:
        inline_password = bool(read_toml(config_path).get("mqtt", {}).get("password"))
    except ConfigError:
        inline_password = False
    candidates = [
        (config_path, inline_password),
        (settings.mqtt.password_file, True),
        (settings.mqtt.tls.key_file, True),
    ]
    for path, secret in candidates:
        if not secret or path is None:
            continue
        try:
            mode = Path(path).stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            found.append(f"{path} holds a secret and is world-readable (chmod o-r {path})")
    return found


def warn_about_exposed_secrets(config_path: Path | None, settings: Settings) -> None:
    if config_path is None:
        return
    for problem in exposed_secrets(config_path, settings):
        log.warning("secret readable by every local user", extra={"problem": problem})
