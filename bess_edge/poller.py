"""One poll task per device: its own schedule, timeout, back-off and health (DESIGN invariant 3).

This is the only place that knows about timing and failure. A driver's ``read`` either returns a
Reading or raises; here a timeout or an exception becomes a failed poll, the connection is closed
and reopened on the next attempt, the retry waits with capped exponential back-off, and after
``failures_before_lost`` failures in a row the device is ``comms_lost``. Nothing here can delay
another device: each device has its own task and every await on the driver is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from bess_edge.config import DeviceConfig
from bess_edge.drivers.base import Driver
from bess_edge.model import Reading, now_ms

log = logging.getLogger(__name__)

# A device that fails every second must not fill the journal: the first failure is logged, then
# one summary line per this many seconds while it keeps failing.
FAILURE_LOG_INTERVAL_S = 60.0


class DevicePoller:
    """Polls one driver until ``stop`` is set; hands results to the two callbacks."""

    def __init__(
        self,
        device: DeviceConfig,
        driver: Driver,
        on_reading: Callable[[Reading], Awaitable[None]],
        on_failure: Callable[[str, int, bool], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        self.device = device
        self.driver = driver
        self.on_reading = on_reading
        self.on_failure = on_failure
        self.stop = stop
        self.consecutive_failures = 0
        self.last_poll_duration_s = 0.0
        self.last_lateness_s = 0.0  # how long after its slot the last poll started
        self.skipped_polls = 0  # slots skipped whole because the previous poll ended past them
        self._skips: deque[tuple[float, int]] = deque()  # (monotonic time, slots skipped)
        self._opened = False
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self._failures_unlogged = 0

    def skipped_within(self, window_s: float) -> int:
        """Polls skipped in the last ``window_s`` seconds."""
        horizon = time.monotonic() - window_s
        while self._skips and self._skips[0][0] < horizon:
            self._skips.popleft()
        return sum(missed for _, missed in self._skips)

    def backoff_s(self) -> float:
        """Delay before the next attempt after ``consecutive_failures`` failures in a row."""
        d = self.device
        return min(d.poll_interval_s * 2 ** max(self.consecutive_failures - 1, 0), d.max_backoff_s)

    async def run(self, first_slot_mono: float | None = None) -> None:
        """Poll on the grid ``first_slot_mono`` + k × interval (default: from now)."""
        interval = self.device.poll_interval_s
        due = time.monotonic() if first_slot_mono is None else first_slot_mono
        while not self.stop.is_set():
            self.last_lateness_s = max(0.0, time.monotonic() - due)
            ok = await self.poll_once()
            now = time.monotonic()
            if ok:
                # The schedule is a fixed grid: a poll that ends past its successor's slot makes
                # that slot (and any after it) skipped whole, counted, never caught up in a burst
                # nor shifted, so an overloaded gateway sheds polls evenly and predictably.
                due += interval
                if now >= due:
                    missed = int((now - due) // interval) + 1
                    due += missed * interval
                    self.skipped_polls += missed
                    self._skips.append((now, missed))
            else:
                due = now + self.backoff_s()
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a Task of its own, and
            # that Task and the driver read's were a measurable share of a poll's CPU.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due - now, 0)):
                    await self.stop.wait()
        await self._close()

    async def poll_once(self) -> bool:
        """One attempt; True when a Reading was produced and handed on."""
        started = time.monotonic()
        timeout = self.device.timeout_s
        try:
            async with asyncio.timeout(timeout):
                if not self._opened:
                    await self.driver.open()
                    self._opened = True
            async with asyncio.timeout(timeout):
                reading = await self.driver.read()
        except TimeoutError:
            await self._failed(f"timeout after {timeout:g} s")
            return False
        except Exception as exc:  # any driver error is a failed poll, never a crash
            await self._failed(f"{type(exc).__name__}: {exc}")
            return False
        finally:
            self.last_poll_duration_s = time.monotonic() - started
        if self.consecutive_failures:
            log.info(
                "device answering again",
                extra={"device": self.device.id, "after_failures": self.consecutive_failures},
            )
        self.consecutive_failures = 0
        # The other devices due now take their readings before this one is diagnosed: each
        # reading is taken at its slot, not after the diagnostics of the devices polled before
        # it (a driver that never waits on I/O, the simulator's, read ~10 ms late at 20 racks).
        await asyncio.sleep(0)
        await self.on_reading(reading)
        return True

    async def _failed(self, error: str) -> None:
        self.consecutive_failures += 1
        await self._close()
        lost = self.consecutive_failures >= self.device.failures_before_lost
        self._log_failure(error, lost)
        await self.on_failure(error, now_ms(), lost)

    def _log_failure(self, error: str, lost: bool) -> None:
        now = time.monotonic()
        self._failures_unlogged += 1
        if self.consecutive_failures == 1 or now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            log.warning(
                "poll failed",
                extra={
                    "device": self.device.id,
                    "error": error,
                    "consecutive_failures": self.consecutive_failures,
                    "failures_since_last_log": self._failures_unlogged,
                    "comms_lost": lost,
                    "retry_in_s": round(self.backoff_s(), 3),
                },
            )
            self._last_failure_log = now
            self._failures_unlogged = 0

    async def _close(self) -> None:
        """Close the driver (also after a failed open: close must be safe to call twice)."""
        self._opened = False
        try:
            await asyncio.wait_for(self.driver.close(), self.device.timeout_s)
        except Exception as exc:
            log.debug("driver close failed", extra={"device": self.device.id, "error": repr(exc)})
