"""``driver = "replay"`` and the capture player behind ``bess-edge replay``.

A capture (candump ``.log``, Vector ``.asc``, ``.blf``, PCAN ``.trc``; python-can's
:class:`~can.LogReader` picks the reader by extension) is fed through the same
:class:`~bess_edge.drivers.can_decode.FrameDecoder` as live traffic. Time is the capture's own:
a Reading is built every ``interval_s`` of capture time from the frames up to that instant, so
a replay at any speed yields the Readings the gateway would have produced live.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import can
from bess_edge.drivers.base import Driver, DriverError
from bess_edge.drivers.can_decode import FrameCounters, FrameDecoder
from bess_edge.drivers.can_map import DecodeOptions
from bess_edge.drivers.capture import CaptureProblems, read_frames
from pydantic import Field

from bess_edge.model import Reading, now_ms

if TYPE_CHECKING:
    from bess_edge.config import DeviceConfig

# Captures with relative timestamps (an .asc without its date, a .trc offset) start near zero;
# anything before 2001-09-09 (1e9 s) is taken as relative and anchored to the replay's start.
RELATIVE_BEFORE_S = 1e9

log = logging.getLogger(__name__)


class ReplayOptions(DecodeOptions):
    """``[devices.options]`` of a ``driver = "replay"`` device: a capture played as a device."""

    file: Path
    speed: float = Field(1.0, gt=0)  # capture seconds per wall-clock second
    loop: bool = False  # start again at the end instead of reporting the device lost


class CapturePlayer:
    """Feeds frames to a decoder in capture time and says when a Reading is due."""

    def __init__(self, decoder: FrameDecoder, interval_s: float) -> None:
        self.decoder = decoder
        self.interval_s = interval_s
        self.anchor_s = 0.0  # added to capture timestamps that are relative
        self.next_due = math.nan
        self.last_ts = math.nan

    def feed(self, msg: can.Message) -> list[Reading]:
        """Ingest one frame; returns the Readings due before it (usually none, at most a few)."""
        ts = msg.timestamp
        if math.isnan(self.last_ts):
            self.anchor_s = time.time() - ts if ts < RELATIVE_BEFORE_S else 0.0
            self.next_due = ts + self.interval_s
        due = []
        # A gap longer than the signal timeout is a silent bus: the live driver would fail its
        # polls, so no Readings are made inside it.
        if ts - self.last_ts > self.decoder.timeout_s:
            self.next_due = ts + self.interval_s
        while ts >= self.next_due:
            due.append(self.reading_at(self.next_due))
            self.next_due += self.interval_s
        self.last_ts = ts
        self.decoder.feed(msg, ts)
        return due

    def reading_at(self, ts: float) -> Reading:
        decoder = self.decoder
        return decoder.reading(decoder.device_id, ts, int((ts + self.anchor_s) * 1000))

    def final(self) -> Reading | None:
        """The Reading at the last frame (a capture shorter than one interval still gives one)."""
        return None if math.isnan(self.last_ts) else self.reading_at(self.last_ts)


class ReplayDriver(Driver):
    """Plays a capture as a live device: each poll advances capture time by wall time × speed."""

    Options = ReplayOptions
    options: ReplayOptions

    def __init__(self, device: DeviceConfig, options: ReplayOptions) -> None:  # type: ignore[override]
        super().__init__(device, options)
        self.decoder = FrameDecoder.for_options(options, device.id)
        self._frames: Iterator[can.Message] | None = None
        self._pending: can.Message | None = None
        self.problems = CaptureProblems()
        self._started = math.nan  # wall clock (monotonic) at capture time _t0
        self._t0 = math.nan

    @property
    def counters(self) -> FrameCounters:
        return self.decoder.counters

    async def open(self) -> None:
        if self._frames is None:
            if not self.options.file.is_file():
                raise DriverError(f"capture {self.options.file} not found")
            self._restart()

    def _restart(self) -> None:
        self.problems = CaptureProblems()  # per pass through the capture
        self._frames = read_frames(self.options.file, self.problems)
        self._pending = None
        self._started = self._t0 = math.nan

    async def read(self) -> Reading:
        # Reading a capture is file I/O and parsing: kept off the event loop.
        return await asyncio.to_thread(self._advance)

    def _advance(self) -> Reading:
        assert self._frames is not None
        now = time.monotonic()
        while True:
            msg = self._pending if self._pending is not None else next(self._frames, None)
            if msg is None:
                if self.problems.count:
                    log.warning(
                        "capture %s: %s",
                        self.options.file.name,
                        self.problems.summary(),
                        extra={"device": self.device_id},
                    )
                if not self.options.loop:
                    raise DriverError(f"capture {self.options.file.name} finished")
                self._restart()
                msg = next(self._frames, None)
                if msg is None:
                    raise DriverError(f"capture {self.options.file.name} is empty")
            if math.isnan(self._t0):
                self._t0, self._started = msg.timestamp, now
            capture_now = self._t0 + (now - self._started) * self.options.speed
            if msg.timestamp > capture_now:
                self._pending = msg
                break
            self._pending = None
            self.decoder.feed(msg, msg.timestamp)
        silent_s = capture_now - self.decoder.last_frame_ts
        if silent_s > self.decoder.timeout_s:
            raise DriverError(f"no frame in the capture for {silent_s:.1f} s")
        return self.decoder.reading(self.device_id, capture_now, now_ms())

    async def close(self) -> None:
        self._frames = None
