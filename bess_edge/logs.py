"""Logging set-up: one line per event, JSON when not on a terminal (journald, files), text on one.

Call sites use the standard ``logging`` API with structured fields in ``extra=``:
``log.warning("poll failed", extra={"device": "rack-1", "error": "timeout"})``.

Repeats are rate-limited here, once for every caller: a device failing every second, or a disk
refusing every commit, must not fill the journal (and wear the SD card it lives on).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from bess_edge.config import LoggingConfig

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


# ``extra`` fields naming the subject of an event; the others (error text, values) vary per repeat.
EVENT_IDENTITY_FIELDS = ("device", "rule", "cell", "stream", "path")


class RepeatLimiter(logging.Filter):
    """Passes at most ``burst`` records of one event per ``window_s``; counts the rest.

    An event is the logger, level, message template and the ``extra`` fields that say *what*
    it is about (:data:`EVENT_IDENTITY_FIELDS`): the same failure of another device, or another
    alert rule raised on the same device, is another event. The first record let through after
    a suppression carries ``repeats_suppressed``, so nothing disappears without a trace. Debug
    records are never limited: whoever turned debug on wants every line.
    """

    def __init__(
        self,
        window_s: float = 60.0,
        burst: int = 5,
        max_events: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.burst = burst
        self.max_events = max_events
        self.clock = clock
        # event -> [window start, records passed in it, records suppressed since last passed]
        self._events: dict[tuple[Any, ...], list[Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        subject = (getattr(record, name, None) for name in EVENT_IDENTITY_FIELDS)
        key = (record.name, record.levelno, record.msg, *subject)
        try:
            hash(key)
        except TypeError:  # a list as "device": never let a filter break a log call
            return True
        now = self.clock()
        state = self._events.get(key)
        if state is None or now - state[0] >= self.window_s:
            suppressed = state[2] if state else 0
            if state is None and len(self._events) >= self.max_events:
                self._forget_oldest(now)
            state = self._events[key] = [now, 0, 0]
            if suppressed:
                record.repeats_suppressed = suppressed
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        return True

    def _forget_oldest(self, now: float) -> None:
        expired = [k for k, v in self._events.items() if now - v[0] >= self.window_s]
        for key in expired or list(self._events)[: self.max_events // 2]:
            del self._events[key]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(config: LoggingConfig, stream: Any = None) -> None:
    """Route all logging to stdout (journald reads it) in the configured format and levels."""
    stream = stream or sys.stdout
    use_json = config.format == "json" or (config.format == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    for name, level in config.modules.items():
        logging.getLogger(name).setLevel(level.upper())
    # Third-party libraries are chatty at info level about every reconnect.
    for noisy in ("pymodbus", "can", "asyncio"):
        if noisy not in config.modules:
            logging.getLogger(noisy).setLevel(logging.WARNING)
