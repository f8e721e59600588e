"""Progress of long CLI work on stderr: a bar on a terminal, a plain line now and then elsewhere.

stdout stays the command's data (``export`` writes CSV there), so progress goes to stderr; under
systemd, cron or a pipe a redrawn bar would be noise, so there it prints a line every
$BESS_EDGE_PROGRESS_EVERY_S seconds (default 5): work done in less time prints only its summary.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_S = 0.1  # a terminal is redrawn at most 10 times a second
LINE_EVERY_S = float(os.environ.get("BESS_EDGE_PROGRESS_EVERY_S", "5"))


class Progress:
    """``update(done)`` as work proceeds, ``finish()`` once; ``total`` may be unknown
    (None) or change (a subscriber learns the gateway's heads as it goes)."""

    def __init__(
        self,
        total: float | None,
        stream: TextIO | None,
        *,
        unit: str = "items",
    ) -> None:
        self.total = total
        self.stream = stream
        self.unit = unit
        self.tty = bool(stream is not None and stream.isatty())
        self.started = time.monotonic()
        self._last_draw = -1e9
        self._last_line = self.started
        self._drawn = False

    def update(self, done: float, note: str = "") -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        fraction = min(done / self.total, 1.0) if self.total else None
        if self.tty:
            if now - self._last_draw < REDRAW_S and fraction != 1.0:
                return
            self._last_draw = now
            self.stream.write("\r" + self._text(done, fraction, note) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
            return
        if now - self._last_line < LINE_EVERY_S:
            return
        self._last_line = now
        print(self._text(done, fraction, note), file=self.stream, flush=True)

    def _text(self, done: float, fraction: float | None, note: str) -> str:
        elapsed_s = time.monotonic() - self.started
        rate = f", {done / elapsed_s:,.0f} {self.unit}/s" if elapsed_s > 0.5 else ""
        extra = f", {note}" if note else ""
        if fraction is None:
            return f"{done:,.0f} {self.unit}{rate}{extra}"
        bar = "#" * int(fraction * BAR_WIDTH) if self.tty else ""
        head = f"[{bar:<{BAR_WIDTH}}] " if self.tty else ""
        return f"{head}{fraction:4.0%} {done:,.0f}/{self.total:,.0f} {self.unit}{rate}{extra}"

    def finish(self) -> float:
        """End the bar's line; returns the seconds the work took, for the caller's summary."""
        if self._drawn and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
        return time.monotonic() - self.started
