"""Shared fixtures: config files on disk, the daemon as a real subprocess, a real mosquitto.

Everything here is a real part a user's system has: the daemon runs as its own process with its
own SQLite file, and the broker is a mosquitto process on a free loopback port that a test can
kill and restart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
THIRDPARTY = REPO.parent / "shared" / "thirdparty"

# Property-based fuzz tests (tests/test_fuzz_*.py, marked ``fuzz``): a quick pass in the default
# run (the whole fuzz suite within 60 s), a long one under ``-m slow``. No deadline: the machine
# running the suite may be loaded, and a slow example is not a failure.
settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("slow", parent=settings.get_profile("default"), max_examples=2000)
SLOW_FUZZ_TIMEOUT_S = 1200  # 2,000 examples of a config or command property on a loaded box


def _selects_slow_tests(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    return bool(markexpr) and Expression.compile(markexpr).evaluate(
        lambda name, **_: name == "slow"
    )


def pytest_configure(config: pytest.Config) -> None:
    # Before the test modules are imported: @given reads the profile when it decorates.
    settings.load_profile("slow" if _selects_slow_tests(config) else "default")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``-m slow``, the fuzz tests run too, with the slow profile's many examples."""
    if _selects_slow_tests(config):
        for item in items:
            if item.get_closest_marker("fuzz"):
                item.add_marker(pytest.mark.slow)
                if not item.get_closest_marker("timeout"):
                    item.add_marker(pytest.mark.timeout(SLOW_FUZZ_TIMEOUT_S))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    """A Python value as TOML (enough for test configs: scalars, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_config(config: dict[str, Any]) -> str:
    """A config dict as a TOML file: tables, arrays of tables, nested tables one level deep."""
    lines: list[str] = []

    def table(header: str, body: dict[str, Any]) -> None:
        lines.append(header)
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        for key, value in body.items():
            if key not in nested:
                lines.append(f"{key} = {toml_value(value)}")
        name = header.strip("[]")
        for key, value in nested.items():
            lines.append(f"{key} = {toml_value(value)}") if not value else table(
                f"[{name}.{key}]", value
            )
        lines.append("")

    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                table(f"[[{section}]]", item)
        else:
            table(f"[{section}]", body)
    return "\n".join(lines)


def sim_device(device_id: str = "rack-1", **overrides: Any) -> dict[str, Any]:
    """A simulated 16-cell LFP device, polled fast, for tests."""
    options = {"cells": 16, "profile": "constant", "current_a": 20.0, "seed": 1}
    options.update(overrides.pop("options", {}))
    device = {
        "id": device_id,
        "driver": "sim",
        "poll_interval_s": 0.2,
        "timeout_s": 0.5,
        "max_backoff_s": 1.0,
        "failures_before_lost": 2,
        "chemistry": "lfp",
        "capacity_ah": 100.0,
        "options": options,
    }
    device.update(overrides)
    return device


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file; returns its path. Defaults: one sim device, store in tmp_path."""

    def make(
        devices: list[dict[str, Any]] | None = None,
        name: str = "bess-edge.toml",
        **sections: Any,
    ) -> Path:
        config: dict[str, Any] = {
            "site": {"id": "test-site"},
            "storage": {"path": str(tmp_path / "bess-edge.db")},
            "logging": {"format": "json", "level": "info"},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        config["devices"] = devices if devices is not None else [sim_device()]
        path = tmp_path / name
        path.write_text(render_config(config))
        return path

    return make


# What faulthandler prints when the daemon's stop deadline passes, before every thread's stack.
STOP_DEADLINE_PASSED = re.compile(r"^Timeout \(\d+:\d\d:\d\d\)!$", re.MULTILINE)


class DaemonProcess:
    """``bess-edge run`` as a subprocess, its log captured to a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bess_edge", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code. The timeout is above the daemon's own stop
        deadline, so a stuck stop fails here with the thread stacks it printed."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(
                f"daemon still running {timeout} s after SIGTERM:\n{self.log()[-6000:]}"
            ) from None
        log = self.log()
        assert not STOP_DEADLINE_PASSED.search(log), f"the daemon's stop hung:\n{log[-6000:]}"
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            assert self.alive(), f"daemon exited early:\n{self.log()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(
            f"{text!r} not in the daemon log after {timeout} s:\n{self.log()[-3000:]}"
        )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons with ``daemon(config_path)``; all are stopped at the end of the test."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        proc = DaemonProcess(config, tmp_path / f"daemon-{len(started)}.log", env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.stop()


def read_db(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the daemon's SQLite file, read-only as another process would; [] before the
    daemon has created the file or its schema."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Mosquitto:
    """A mosquitto broker on a free loopback port that a test may kill and restart."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence false\nlog_dest stdout\n{extra_conf}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log = (self.workdir / f"mosquitto-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh broker for this test (never the machine's own on 1883)."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.kill()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL cluster of our own for the session (never the machine's on 5432); see
    tests/pg_server.py. Tests that kill it must start it again."""
    from pg_server import PostgresServer

    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (the README's test command installs postgresql)")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server."""
    if pg_server.pid() is None:
        pg_server.start()
    import hashlib

    node = request.node.name
    digest = hashlib.sha1(node.encode()).hexdigest()[:8]  # parametrized twins differ only late
    name = "t_" + "".join(c if c.isalnum() else "_" for c in node)[:40].lower() + "_" + digest
    return str(pg_server.create_database(name))
