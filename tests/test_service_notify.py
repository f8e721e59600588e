"""The daemon under systemd's eyes: READY=1, periodic WATCHDOG=1, STOPPING=1 — over a real socket.

The test owns the AF_UNIX datagram socket that ``$NOTIFY_SOCKET`` names, exactly as systemd
does, and starts the real daemon as a subprocess. A stuck main loop is simulated with the sim
driver's ``comms_dropout`` fault in ``mode = "block"``: the driver makes a synchronous call that
blocks the event loop, the bug class the watchdog exists for. It needs no test-only code path in
the daemon and is harmless in production (only a sim device configured with it does anything).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
from conftest import sim_device, wait_until

from bess_edge import service
from bess_edge.daemon import StoreWorker
from bess_edge.notify import notify, watchdog_interval_s
from bess_edge.store import Store

WATCHDOG_USEC = 1_200_000  # pings every 0.4 s: quick to observe, with margin on a busy box


class NotifySocket:
    """The service manager's end: collects (monotonic time, message) from the daemon."""

    def __init__(self, address: str) -> None:
        self.address = address  # as in $NOTIFY_SOCKET: a path or "@abstract-name"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.monotonic()
            self.messages += [(received, line) for line in data.decode().splitlines()]

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def first(self, prefix: str) -> float | None:
        return next((t for t, m in list(self.messages) if m.startswith(prefix)), None)

    def text(self, prefix: str) -> str:
        return next(m for _, m in list(self.messages) if m.startswith(prefix))

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = NotifySocket(f"@bess-edge-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def notify_env(sock: NotifySocket, watchdog_usec: int | None = WATCHDOG_USEC) -> dict[str, str]:
    env = {"NOTIFY_SOCKET": sock.address}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_ready_after_devices_polled_then_watchdog_pings_then_stopping_on_sigterm(
    make_config, daemon, notify_socket
):
    config = make_config(devices=[sim_device("rack-1"), sim_device("rack-2")])
    proc = daemon(config, env=notify_env(notify_socket))
    ready = wait_until(lambda: notify_socket.first("READY=1"))
    # READY=1 comes once the store is open and both devices have been polled.
    assert proc.log().count('"msg": "first reading"') == 2
    # With it, the one-line summary `systemctl status` shows.
    assert notify_socket.first("STATUS=") == ready
    assert notify_socket.text("STATUS=").startswith("STATUS=2 devices (2 ok); unsent ")
    # Periodic WATCHDOG=1, only after READY=1, about every WATCHDOG_USEC / 3.
    wait_until(lambda: len(notify_socket.times("WATCHDOG=1")) >= 6)
    pings = notify_socket.times("WATCHDOG=1")
    assert min(pings) >= ready
    assert max(gaps(pings)) < WATCHDOG_USEC / 1e6  # every ping in time: no restart
    assert notify_socket.first("STOPPING=1") is None
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0
    stopping = wait_until(lambda: notify_socket.first("STOPPING=1"), timeout=2)
    assert stopping >= pings[-1] - 0.5
    assert "http endpoint" not in proc.log()  # [http] is off by default


def test_watchdog_pings_stop_while_a_driver_blocks_the_main_loop(
    make_config, daemon, notify_socket
):
    block_s = 5.0
    device = sim_device(
        options={"faults": [{"kind": "comms_dropout", "at_s": 2.0, "duration_s": block_s,
                             "mode": "block"}]},
    )  # fmt: skip
    proc = daemon(make_config(devices=[device]), env=notify_env(notify_socket))
    wait_until(lambda: notify_socket.first("READY=1"))
    proc.wait_for_log("simulated blocking call returned late", timeout=20)
    # Pings resume once the loop runs again.
    resumed = len(notify_socket.times("WATCHDOG=1"))
    wait_until(lambda: len(notify_socket.times("WATCHDOG=1")) >= resumed + 5)
    intervals = sorted(gaps(notify_socket.times("WATCHDOG=1")), reverse=True)
    # One silence as long as the block (systemd, with WatchdogSec=1.2 s, would have killed
    # the process by then) ...
    assert intervals[0] > block_s - 1.5
    # ... and none other: the silence came from the stuck loop, not from a slow machine.
    assert intervals[1] < WATCHDOG_USEC / 1e6
    assert proc.stop() == 0


def test_without_watchdog_usec_ready_and_stopping_but_no_pings(make_config, daemon, notify_socket):
    proc = daemon(make_config(), env=notify_env(notify_socket, watchdog_usec=None))
    wait_until(lambda: notify_socket.first("READY=1"))
    time.sleep(1.0)
    assert proc.stop() == 0
    wait_until(lambda: notify_socket.first("STOPPING=1"), timeout=2)
    assert notify_socket.times("WATCHDOG=1") == []


def test_notify_reaches_a_socket_given_by_path(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = NotifySocket(str(path))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=starting")
        wait_until(lambda: len(sock.messages) == 2, timeout=2)
        assert [m for _, m in sock.messages] == ["READY=1", "STATUS=starting"]
    finally:
        sock.close()


def test_notify_without_a_service_manager_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify("READY=1") is False  # never raises: data collection goes on


def test_watchdog_variables_meant_for_another_process_are_ignored(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval_s() is None


def test_watchdog_withholds_pings_for_a_dead_poll_task_or_a_store_stuck_past_the_limit(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(service, "STORE_STALL_LIMIT_S", 0.3)
    worker = StoreWorker(Store(tmp_path / "db.sqlite"))
    release = threading.Event()

    async def scenario() -> list[str | None]:
        poll = asyncio.create_task(asyncio.sleep(3600), name="poll:rack-1")
        notifier = service.ServiceNotifier(types.SimpleNamespace(worker=worker), [poll])
        seen = [notifier.vital_problem()]  # sound: probe queued, answered at once
        await asyncio.sleep(0.05)
        seen.append(notifier.vital_problem())
        stuck = asyncio.ensure_future(worker.call(release.wait))  # the store thread hangs
        seen.append(notifier.vital_problem())  # busy, but not for long yet
        started = time.monotonic()
        while (problem := notifier.vital_problem()) is None and time.monotonic() - started < 5:
            await asyncio.sleep(0.1)  # the ping period
        seen.append(problem)
        # Found after the limit, plus at most one period for the probe queued behind the hang.
        assert 0.3 <= time.monotonic() - started < 2.0
        release.set()
        await stuck
        await asyncio.sleep(0.05)
        seen.append(notifier.vital_problem())
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
        seen.append(notifier.vital_problem())
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        release.set()
        worker.shutdown()
    assert seen[:3] == [None, None, None]
    assert seen[3] is not None and "store thread has not answered" in seen[3]
    assert seen[4] is None  # answered again: pings resume
    assert seen[5] == "task poll:rack-1 ended unexpectedly"
