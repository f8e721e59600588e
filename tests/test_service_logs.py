"""Logs under systemd: one JSON line per event, repeats rate-limited so the journal stays useful."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bess_edge.config import LoggingConfig
from bess_edge.logs import RepeatLimiter, setup_logging


class Clock:
    """A hand-driven monotonic clock (the limiter's only notion of time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def journal():
    """The root logger writing JSON to a buffer through the daemon's own set-up."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging(LoggingConfig(format="json", level="info"), stream=stream)
    clock = Clock()
    limiter = next(f for f in root.handlers[0].filters if isinstance(f, RepeatLimiter))
    limiter.clock = clock
    yield stream, clock
    root.handlers[:], level = saved
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_device_failing_every_second_for_an_hour_writes_a_few_lines_a_minute(journal):
    stream, clock = journal
    log = logging.getLogger("bess_edge.test")
    for _ in range(3600):
        log.warning("poll failed", extra={"device": "rack-1", "error": "timeout after 2 s"})
        clock.now += 1.0
    entries = lines(stream)
    # 60 windows of 60 s, 5 lines each at most: 300 instead of 3,600.
    assert len(entries) <= 60 * 5
    assert all(e["msg"] == "poll failed" for e in entries)
    suppressed = sum(e.get("repeats_suppressed", 0) for e in entries)
    # Every line is accounted for: written, or counted on a later line (the last window's
    # suppressed repeats are reported by the next occurrence, which has not happened yet).
    assert len(entries) + suppressed == 3600 - (60 - 5)


def test_another_device_or_rule_is_another_event(journal):
    stream, _ = journal
    log = logging.getLogger("bess_edge.test")
    for _ in range(20):
        log.warning("poll failed", extra={"device": "rack-1"})
    log.warning("poll failed", extra={"device": "rack-2"})
    for rule in ("cell-overvoltage", "cell-undervoltage", "over-temperature"):
        log.warning("alert raised", extra={"device": "rack-1", "rule": rule})
    entries = lines(stream)
    assert sum(e.get("device") == "rack-1" and e["msg"] == "poll failed" for e in entries) == 5
    assert any(e.get("device") == "rack-2" for e in entries)
    assert {e["rule"] for e in entries if e["msg"] == "alert raised"} == {
        "cell-overvoltage",
        "cell-undervoltage",
        "over-temperature",
    }


def test_first_line_after_a_quiet_spell_says_how_many_were_suppressed(journal):
    stream, clock = journal
    log = logging.getLogger("bess_edge.test")
    for _ in range(12):
        log.error("store write failed", extra={"error": "disk I/O error"})
    clock.now += 61.0
    log.error("store write failed", extra={"error": "disk I/O error"})
    entries = lines(stream)
    assert len(entries) == 6
    assert entries[-1]["repeats_suppressed"] == 7
    assert "repeats_suppressed" not in entries[0]


def test_debug_lines_are_never_limited():
    limiter = RepeatLimiter(burst=1, clock=Clock())
    record = logging.LogRecord("bess_edge.sync", logging.DEBUG, "", 0, "frame", None, None)
    assert all(limiter.filter(record) for _ in range(50))


def test_unhashable_subject_never_breaks_the_log_call():
    limiter = RepeatLimiter(burst=1, clock=Clock())
    record = logging.LogRecord("bess_edge.x", logging.WARNING, "", 0, "bad", None, None)
    record.device = ["rack-1", "rack-2"]
    assert limiter.filter(record) and limiter.filter(record)


def test_memory_of_events_is_bounded():
    clock = Clock()
    limiter = RepeatLimiter(max_events=100, clock=clock)
    for i in range(1000):
        record = logging.LogRecord("bess_edge.x", logging.WARNING, "", 0, "e", None, None)
        record.device = f"dev-{i}"
        limiter.filter(record)
    assert len(limiter._events) <= 100
