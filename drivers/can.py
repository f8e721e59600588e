"""``driver = "can"``: any python-can interface, decoded with a DBC and a mapping in config.

Frames are received by a python-can :class:`~can.Notifier` and decoded in its receive thread,
straight into the latest-value store of :class:`FrameDecoder`. Handing every frame to the event
loop instead (``call_soon_threadsafe``) would cost a loop wake-up per frame, up to ~7,400 per
second on a saturated 1 Mbit/s bus, for nothing: ``read()`` only needs the latest values, which
it reads without waiting. The event loop therefore never blocks on the bus and never sees
individual frames; a frame costs one cantools decode and a few list stores (see
benchmarks/can_bench.py).

Failures follow the poller's contract: ``read()`` raises when the bus is silent for longer than
``signal_timeout_s`` or the interface keeps failing, and the poller closes and reopens it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import can
from bess_edge.drivers.base import Driver, DriverError
from bess_edge.drivers.can_decode import NEVER, FrameCounters, FrameDecoder
from bess_edge.drivers.can_map import CanOptions

from bess_edge.model import Reading, now_ms

if TYPE_CHECKING:
    from bess_edge.config import DeviceConfig

log = logging.getLogger(__name__)

FAILED_AFTER_ERRORS = 10  # interface errors in a row, with no frame between, mean a dead bus
FIRST_FRAME_POLL_S = 0.05


class _Receiver(can.Listener):
    """Runs in the Notifier's thread: decode each frame, count what cannot be decoded."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        self.failure: Exception | None = None
        self._errors_in_row = 0

    def reset(self) -> None:
        self.failure = None
        self._errors_in_row = 0

    def on_message_received(self, msg: can.Message) -> None:
        self._errors_in_row = 0
        self.decoder.feed(msg, time.monotonic())

    def on_error(self, exc: Exception) -> None:
        """An exception from ``bus.recv`` (a garbled slcan line, a vanished adapter)."""
        self.decoder.counters.bus_errors += 1
        self._errors_in_row += 1
        self.decoder.complain("bus_error", f"interface error: {exc!r}")
        if self._errors_in_row >= FAILED_AFTER_ERRORS:
            self.failure = exc
        # This is the Notifier's thread, not the event loop: back off a failing interface
        # instead of spinning until the poller closes it.
        time.sleep(min(0.001 * self._errors_in_row, 0.1))


class CanDriver(Driver):
    """One CAN bus, one DBC, one mapping; ``counters`` tell what arrived and what was rejected."""

    Options = CanOptions
    options: CanOptions

    def __init__(self, device: DeviceConfig, options: CanOptions) -> None:  # type: ignore[override]
        super().__init__(device, options)
        self.decoder = FrameDecoder.for_options(options, device.id)
        self._receiver = _Receiver(self.decoder)
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._opened_at = NEVER
        self._ever_opened = False

    @property
    def counters(self) -> FrameCounters:
        return self.decoder.counters

    async def open(self) -> None:
        if self._bus is not None:
            return
        o = self.options
        kwargs = dict(o.bus_options)
        if o.channel is not None:
            kwargs["channel"] = o.channel
        if o.bitrate is not None:
            kwargs["bitrate"] = o.bitrate
        # Opening may block (slcan sleeps after opening the serial port), so it runs in a
        # thread; if the poller's timeout cancels us meanwhile, the bus is shut down once made.
        opening = asyncio.ensure_future(asyncio.to_thread(can.Bus, interface=o.interface, **kwargs))
        try:
            bus = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_shutdown_when_opened)
            raise
        except Exception as exc:  # python-can raises interface-specific errors
            raise DriverError(f"cannot open CAN {o.interface} {o.channel or ''}: {exc}") from exc
        self._receiver.reset()
        self._bus = bus
        self._notifier = can.Notifier(bus, [self._receiver], timeout=0.2)
        self._opened_at = time.monotonic()
        if self._ever_opened:
            self.counters.reopens += 1
        self._ever_opened = True
        log.info(
            "CAN bus opened",
            extra={"device": self.device_id, "interface": o.interface, "channel": o.channel},
        )

    async def read(self) -> Reading:
        if self._bus is None:
            raise DriverError("CAN bus is not open")
        timeout_s = self.options.signal_timeout_s
        # Right after (re)opening, wait for traffic rather than fail the first poll.
        while (
            self.decoder.last_frame_ts < self._opened_at
            and time.monotonic() - self._opened_at < timeout_s
            and self._receiver.failure is None
        ):
            await asyncio.sleep(FIRST_FRAME_POLL_S)
        if self._receiver.failure is not None:
            raise DriverError(f"CAN interface failing: {self._receiver.failure!r}")
        now = time.monotonic()
        silent_s = now - max(self.decoder.last_frame_ts, self._opened_at)
        if silent_s > timeout_s:
            raise DriverError(f"no CAN frame for {silent_s:.1f} s (timeout {timeout_s:g} s)")
        return self.decoder.reading(self.device_id, now, now_ms())

    async def close(self) -> None:
        notifier, bus = self._notifier, self._bus
        self._notifier = self._bus = None
        if notifier is not None:
            await asyncio.to_thread(notifier.stop, 1.0)
        if bus is not None:
            try:
                bus.shutdown()
            except Exception as exc:  # close must not raise
                log.warning(
                    "error closing the CAN bus",
                    extra={"device": self.device_id, "error": repr(exc)},
                )


def _shutdown_when_opened(opening: asyncio.Future[can.BusABC]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().shutdown()
