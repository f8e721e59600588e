"""The daemon: wires drivers → diagnostics → alerts → store → sync on one asyncio loop.

One :class:`~bess_edge.poller.DevicePoller` task per device, diagnostics and alerts inline (numpy,
fast), SQLite writes on one worker thread (so an fsync never stalls the loop), the rare
electrode fits (about a second of CPU) on another, and the sync task when MQTT is enabled.
SIGTERM/SIGINT stop cleanly: each poll in flight finishes and is committed. SIGHUP re-reads
the config file's thresholds; a bad file is refused, old rules stay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bess_edge import health, metrics
from bess_edge.alerts import AlertEngine
from bess_edge.alerts.engine import POLLS_SKIPPED_RULE
from bess_edge.alerts.requests import ACK_POLL_INTERVAL_S, apply_ack_requests
from bess_edge.commits import CommitQueue
from bess_edge.config import ConfigError, Settings, load_config
from bess_edge.daemon_state import REFRESH_S as STATE_REFRESH_S
from bess_edge.daemon_state import DaemonState, remove_state, write_state
from bess_edge.drivers.base import Driver, driver_class
from bess_edge.http import HttpEndpoint
from bess_edge.model import Reading, now_ms
from bess_edge.notify import notify
from bess_edge.pipeline import DevicePipeline
from bess_edge.poller import DevicePoller
from bess_edge.service import ServiceNotifier, warn_about_exposed_secrets
from bess_edge.store import CommitResult, Cycle, Store, StoreFull
from bess_edge.store_recovery import is_corrupt, open_store
from bess_edge.storelock import StoreLock, StoreLocked

log = logging.getLogger(__name__)
T = TypeVar("T")

HOUSEKEEPING_INTERVAL_S = 60.0  # cap enforcement, retention purge, buffer alert
SUMMARY_INTERVAL_S = 60.0  # one status line per device in the log
# polls_skipped is raised when a device skipped this share of its slots (at least SKIP_RAISE_MIN
# polls) within the window, and cleared after a whole window without a skip: a single slow poll
# (a GC pause, one slow read) is only counted in the metrics.
SKIP_WINDOW_S = 60.0
SKIP_RAISE_SHARE = 0.05
SKIP_RAISE_MIN = 3
SYNC_STOP_S = 5.0  # for the sync task's clean stop (offline state's PUBACK, acked rows deleted)
DRIVER_CLOSE_S = 2.0  # for the drivers' closes (side by side) at the end of a stop
# A stop that has not ended by then is stuck (a thread in a library call that never returns): every
# thread's stack goes to stderr and the process exits. Below the unit's TimeoutStopSec=30, whose
# SIGKILL would end it without a word on where it hung. The store survives an abrupt exit. Devices
# with long timeouts plan a longer stop; the deadline is then that plan and STOP_MARGIN_S.
STOP_DEADLINE_S = 25.0
STOP_MARGIN_S = 5.0


def pid_path(db_path: Path) -> Path:
    """Where the running daemon writes its pid (``bess-edge reload`` signals it)."""
    return db_path.with_name(db_path.name + ".pid")


class StartupError(Exception):
    """The daemon cannot start with this config (a driver refused its options, ...)."""


class StoreWorker:
    """Runs every Store call on one dedicated thread, in submission order.

    SQLite wants one writer; a dedicated thread keeps an fsync (tens of ms on an SD card) off
    the event loop, so no device's poll timing depends on the disk.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        # Called on the loop after a call that committed outbox rows (sync wakes on them
        # instead of looking every 0.1 s), whoever made it: polls, commands, republish.
        self.outbox_listeners: list[Callable[[], None]] = []
        self._outbox_seen = dict(store.outbox_rows_committed)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            if self.store.outbox_rows_committed != self._outbox_seen:
                self._outbox_seen = dict(self.store.outbox_rows_committed)
                for listener in self.outbox_listeners:
                    listener()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()


class FitWorker:
    """One shared thread at lower priority for the diagnostics' rare long fits (the electrode
    fit: 0.6-1.0 s of wall time on the 2-core test box), so they never hold up a poll."""

    NICENESS = 10

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fit", initializer=self._lower_priority
        )
        self.submit = self._executor.submit

    @classmethod
    def _lower_priority(cls) -> None:
        # Linux's nice is per thread (elsewhere this call would renice the whole daemon).
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), cls.NICENESS)

    def shutdown(self) -> None:
        """Drop fits not started; one running finishes (its result is not saved: the state
        blob holds the state before it, and the fit is due again after a restart)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.stop = asyncio.Event()
        self.pollers: dict[str, DevicePoller] = {}
        self.pipelines: dict[str, DevicePipeline] = {}
        self.started_mono = time.monotonic()
        self.telemetry_dropped = 0
        self._dropped_since_housekeeping = 0
        self.last_drop_mono: float | None = None  # when unsent telemetry was last dropped
        self.polled: set[str] = set()  # devices polled at least once since start (READY=1)
        self.store_error: str | None = None  # why the last commit failed; None once one succeeds
        # Devices' identity strings, as last stored, then as drivers read them (sync sends them).
        self.device_info: dict[str, dict[str, str]] = {}

    def request_stop(self) -> None:
        self.stop.set()

    def _stop_signalled(self) -> None:
        if self.stop.is_set():
            return
        self.request_stop()
        # A daemon started with stderr closed has nowhere to print the stacks: it stops without.
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            faulthandler.dump_traceback_later(self._stop_deadline_s(), exit=True)

    def _poll_grace_s(self) -> float:
        """How long a stop waits for the polls in flight to finish."""
        return max((d.timeout_s for d in self.settings.devices), default=1.0) * 2 + 5

    def _stop_deadline_s(self) -> float:
        planned = self._poll_grace_s() + SYNC_STOP_S + DRIVER_CLOSE_S
        return max(STOP_DEADLINE_S, planned + STOP_MARGIN_S)

    async def run(self) -> int:
        s = self.settings
        lock = StoreLock(s.storage.path)
        try:
            lock.acquire()
        except StoreLocked as exc:
            raise StartupError(str(exc)) from None
        try:
            return await self._run_locked()
        finally:
            lock.release()

    async def _run_locked(self) -> int:
        s = self.settings
        store, moved_to = open_store(s.storage)
        self.worker = worker = StoreWorker(store)
        self.fit_worker = FitWorker()
        self.device_info.update(store.device_identities())
        self.commits = CommitQueue(worker)
        self.alerts = AlertEngine(
            s.thresholds, store.max_alert_id(), store.active_alerts(), store.last_cleared_alerts()
        )
        if moved_to is not None:
            await self._commit([Cycle(alerts=self.alerts.store_corrupt(str(moved_to), now_ms()))])
        try:
            drivers = self._build_drivers(store)
        except StartupError:
            self.fit_worker.shutdown()
            worker.shutdown()
            raise
        self._install_signal_handlers()
        pid_file = pid_path(s.storage.path)
        pid_file.write_text(f"{os.getpid()}\n")
        warn_about_exposed_secrets(self.config_path, s)
        http = await self._start_http()
        # One grid origin for every device: their slots coincide, so the polls of a moment run
        # back to back and their cycles share a commit (commits.py). From each task's own start,
        # the grids were staggered by the first polls: 20 racks at 1 Hz then paid 8 commits a
        # second instead of 1.
        start = time.monotonic()
        tasks = [
            asyncio.create_task(p.run(start), name=f"poll:{d}") for d, p in self.pollers.items()
        ]
        background = [
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self._summaries(), name="summaries"),
            asyncio.create_task(self._ack_requests(), name="acks"),
            asyncio.create_task(self._daemon_state(), name="daemon_state"),
        ]
        sync = asyncio.create_task(self._sync(), name="sync") if s.mqtt.enabled else None
        if sync is not None:
            background.append(sync)
        notifier = ServiceNotifier(self, [*tasks, *background])
        background.append(asyncio.create_task(notifier.run(), name="sd_notify"))
        log.info(
            "bess-edge running",
            extra={
                "site": s.site.id,
                "devices": [d.id for d in s.devices if d.enabled],
                "store": str(s.storage.path),
                "mqtt": f"{s.mqtt.host}:{s.mqtt.port}" if s.mqtt.enabled else "disabled",
            },
        )
        await self.stop.wait()
        notify("STOPPING=1")
        log.info("stopping: finishing polls in flight")
        if http is not None:
            await http.close()
        grace = self._poll_grace_s()
        _, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
        if sync is not None:
            # Its clean stop deletes the acknowledged rows and publishes the offline state.
            await asyncio.wait([sync], timeout=SYNC_STOP_S)
        for task in (*pending, *background):
            task.cancel()
        await asyncio.gather(*pending, *background, return_exceptions=True)
        finals = [c for p in self.pipelines.values() if (c := p.final_state()) is not None]
        if finals:
            await self._commit(finals)
        # Side by side: ten unreachable devices do not add ten close timeouts to the stop.
        closes = [asyncio.wait_for(driver.close(), DRIVER_CLOSE_S) for driver in drivers]
        await asyncio.gather(*closes, return_exceptions=True)
        self.fit_worker.shutdown()
        worker.shutdown()
        pid_file.unlink(missing_ok=True)
        remove_state(s.storage.path)
        log.info("stopped")
        return 0

    async def _start_http(self) -> HttpEndpoint | None:
        """/health and /metrics when enabled; a busy port is logged, never fatal to collection."""
        cfg = self.settings.http
        if not cfg.enabled:
            return None
        endpoint = HttpEndpoint(self)
        try:
            await endpoint.start(cfg.host, cfg.port)
        except OSError as exc:
            log.error(
                "http endpoint not started",
                extra={"address": f"{cfg.host}:{cfg.port}", "error": str(exc)},
            )
            return None
        return endpoint

    def _build_drivers(self, store: Store) -> list[Driver]:
        drivers = []
        for device in self.settings.devices:
            if not device.enabled:
                continue
            try:
                driver = driver_class(device.driver)(device, device.parsed_options)
            except Exception as exc:
                raise StartupError(f"device {device.id!r}: {exc}") from exc
            pipeline = DevicePipeline(device, store, self.alerts, self.fit_worker.submit)
            self.pipelines[device.id] = pipeline
            self.pollers[device.id] = DevicePoller(
                device,
                driver,
                on_reading=self._reading_handler(pipeline),
                on_failure=self._failure_handler(pipeline),
                stop=self.stop,
            )
            drivers.append(driver)
        return drivers

    def _reading_handler(self, pipeline: DevicePipeline) -> Callable[[Reading], Any]:
        device = pipeline.device
        poll_duration = metrics.POLL_DURATION.labels(device.id)
        poll_lateness = metrics.POLL_LATENESS.labels(device.id)
        polls_skipped = metrics.POLLS_SKIPPED.labels(device.id)
        skipped_seen = 0
        skip_raise = max(SKIP_RAISE_MIN, SKIP_RAISE_SHARE * SKIP_WINDOW_S / device.poll_interval_s)

        async def handle(reading: Reading) -> None:
            nonlocal skipped_seen
            poller = self.pollers[device.id]
            poll_duration.observe(poller.last_poll_duration_s)
            poll_lateness.observe(poller.last_lateness_s)
            if poller.skipped_polls > skipped_seen:
                polls_skipped.inc(poller.skipped_polls - skipped_seen)
                skipped_seen = poller.skipped_polls
            self.polled.add(device.id)
            if pipeline.status.polls == 0:
                log.info(
                    "first reading",
                    extra={"device": reading.device_id, **_brief(reading)},
                )
            cycle = pipeline.on_reading(reading)
            skipped = poller.skipped_within(SKIP_WINDOW_S)
            active = (device.id, POLLS_SKIPPED_RULE, None) in self.alerts.active
            skipping = skipped > 0 if active else skipped >= skip_raise
            cycle.alerts += self.alerts.polls_skipped(
                device.id, skipping, poller.skipped_polls, device.poll_interval_s, reading.ts_ms
            )
            await self._commit([cycle])

        return handle

    def _failure_handler(self, pipeline: DevicePipeline) -> Callable[[str, int, bool], Any]:
        async def handle(error: str, ts_ms: int, lost: bool) -> None:
            self.polled.add(pipeline.device.id)
            await self._commit([pipeline.on_failure(error, ts_ms, lost)])

        return handle

    async def _commit(self, cycles: list[Cycle]) -> CommitResult | None:
        """Commit cycles; a full or failing disk is logged and survived, never raised."""
        try:
            result = await self.commits.commit(cycles)
        except StoreFull as exc:
            self.store_error = f"store full: cycles not written ({exc})"
            log.error("store full: cycle not written", extra={"error": str(exc)})
            return None
        except Exception as exc:
            corrupt, first = is_corrupt(exc), self.store_error is None
            what = "store file corrupt" if corrupt else "store writes failing"
            self.store_error = f"{what}: cycles not written ({exc})"
            if not corrupt:
                log.exception("store write failed: cycle not written", extra={"error": repr(exc)})
            elif first:  # every commit fails from now on: one line, not one a poll
                log.error(
                    "store file corrupt: cycles are not written until it is replaced (restart "
                    "the daemon: a corrupt file is moved aside at start)",
                    extra={"path": str(self.settings.storage.path), "error": str(exc)},
                )
            return None
        self.store_error = None
        for cycle in cycles:
            if cycle.reading is not None:
                metrics.SAMPLES_WRITTEN.labels(cycle.reading.device_id).inc()
                if cycle.reading.identity:
                    self.device_info[cycle.reading.device_id] = cycle.reading.identity
        if result.dropped_telemetry:
            self.last_drop_mono = time.monotonic()
            self.telemetry_dropped += result.dropped_telemetry
            self._dropped_since_housekeeping += result.dropped_telemetry
            # Raised at once, not at the next housekeeping: the operator must know data is going.
            await self._buffer_alert(True)
        return result

    async def _buffer_alert(self, dropping: bool) -> None:
        store = self.worker.store
        try:
            samples, diagnoses = await self.worker.call(
                lambda: (store.counter("samples_dropped"), store.counter("diagnoses_dropped"))
            )
        except Exception:  # a failing store is reported by /health; the alert waits
            log.exception("reading the drop counters failed")
            return
        transitions = self.alerts.buffer_dropping(dropping, samples, diagnoses, now_ms())
        if transitions:
            await self._commit([Cycle(alerts=transitions)])

    async def _housekeeping(self) -> None:
        store = self.worker.store
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                dropped = await self.worker.call(store.enforce_cap)
                await self.worker.call(store.purge_expired)
            except Exception:
                log.exception("housekeeping failed")
                continue
            self.telemetry_dropped += dropped
            if dropped:
                self.last_drop_mono = time.monotonic()
            # Cleared after a whole housekeeping interval without a drop.
            dropping = bool(dropped or self._dropped_since_housekeeping)
            self._dropped_since_housekeeping = 0
            await self._buffer_alert(dropping)

    async def _ack_requests(self) -> None:
        """Apply acknowledgements queued by ``bess-edge ack`` (this process owns alert state)."""
        store = self.worker.store
        failing = False
        while True:
            try:
                requests = await self.worker.call(store.pending_acks)
                failing = False
            except Exception:
                if not failing:  # once per run of failures (a corrupt file fails every second)
                    log.exception("reading acknowledgement requests failed")
                failing, requests = True, []
            if requests:
                await self._commit([apply_ack_requests(self.alerts, requests, now_ms())])
            await asyncio.sleep(ACK_POLL_INTERVAL_S)

    async def _daemon_state(self) -> None:
        """Keep the file ``bess-edge status`` reads to tell a running daemon from a dead one."""
        s = self.settings
        started_ts_ms = now_ms()
        while True:
            state = DaemonState(
                pid=os.getpid(),
                started_ts_ms=started_ts_ms,
                updated_ts_ms=now_ms(),
                mqtt=health._mqtt_state(self),
                mqtt_broker=f"{s.mqtt.host}:{s.mqtt.port}",
            )
            try:
                await asyncio.to_thread(write_state, s.storage.path, state)
            except OSError as exc:
                log.warning("daemon state not written", extra={"error": str(exc)})
            await asyncio.sleep(STATE_REFRESH_S)

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL_S)
            depth = await self.worker.call(self.worker.store.outbox_depth)
            for device_id, pipeline in self.pipelines.items():
                s = pipeline.status
                log.info(
                    "device summary",
                    extra={
                        "device": device_id,
                        "comms": str(s.comms),
                        "polls": s.polls,
                        "poll_errors": s.poll_errors,
                        "last_error": s.last_error,
                    },
                )
            log.info("buffer", extra={"unsent": depth, "telemetry_dropped": self.telemetry_dropped})

    async def _sync(self) -> None:
        from bess_edge.sync import Syncer  # paho is only imported when MQTT is enabled

        await Syncer(self.settings, self.worker, self.alerts, self.device_info).run(self.stop)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signalled)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> bool:
        """Re-read the thresholds from the config file; keep the old ones if it is invalid."""
        if self.config_path is None:
            log.warning("reload requested but the daemon was not started from a file")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "reload refused; the previous rules stay active", extra={"errors": exc.lines()}
            )
            return False
        self.alerts.update_rules(new.thresholds)
        self.settings.thresholds = new.thresholds
        log.info("thresholds reloaded", extra={"rules": len(new.thresholds)})
        return True


def _brief(reading: Reading) -> dict[str, Any]:
    stats = reading.cell_stats()
    return {
        "pack_voltage_v": reading.pack_voltage_v,
        "pack_current_a": reading.pack_current_a,
        "cells": reading.cell_count,
        "cell_voltage_min_v": stats["cell_voltage_min_v"],
        "cell_voltage_max_v": stats["cell_voltage_max_v"],
    }


def run_daemon(settings: Settings, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code for the CLI."""
    try:
        return asyncio.run(Daemon(settings, config_path).run())
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
