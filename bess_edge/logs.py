"""Logging set-up: one line per event, JSON when not on a terminal (journald, files), text on one.

Call sites use the standard ``logging`` API with structured fields in ``extra=``:
``log.warning("poll failed", extra={"device": "rack-1", "error": "timeout"})``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from bess_edge.config import LoggingConfig

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    for name, level in config.modules.items():
        logging.getLogger(name).setLevel(level.upper())
    # Third-party libraries are chatty at info level about every reconnect.
    for noisy in ("pymodbus", "can", "asyncio"):
        if noisy not in config.modules:
            logging.getLogger(noisy).setLevel(logging.WARNING)
