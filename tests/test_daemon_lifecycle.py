"""The walking skeleton as an integrator sees it: start, status, kill -9, restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import STOP_DEADLINE_PASSED, read_db, sim_device, wait_until

from bess_edge import daemon as daemon_module
from bess_edge.config import load_config
from bess_edge.daemon import Daemon


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", *args], capture_output=True, text=True, timeout=60
    )


def sample_seqs(db: Path, device: str = "rack-1") -> list[int]:
    """Committed sample sequence numbers, read as any other process would (read-only)."""
    return [
        r[0] for r in read_db(db, "SELECT seq FROM samples WHERE device = ? ORDER BY seq", device)
    ]


def test_status_after_a_few_seconds_shows_readings_and_sane_values(make_config, daemon, tmp_path):
    config = make_config(devices=[sim_device(poll_interval_s=0.25, options={"cells": 16})])
    proc = daemon(config)
    proc.wait_for_log("first reading")
    db = tmp_path / "bess-edge.db"
    wait_until(lambda: len(sample_seqs(db)) >= 8)
    result = bess_edge("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    device = status["devices"][0]
    assert device["readings"] >= 8
    assert device["comms"] == "ok"
    # 16 LFP cells at ~3.2-3.35 V each.
    assert 16 * 3.0 < device["pack_voltage_v"] < 16 * 3.5
    assert 0 <= device["diagnosis"]["soc_pct"] <= 100
    assert proc.stop() == 0


def test_sigterm_commits_and_exits_zero(make_config, daemon, tmp_path):
    proc = daemon(make_config())
    proc.wait_for_log("first reading")
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0
    assert '"stopped"' in proc.log()


def test_kill_9_loses_no_committed_sample_and_sequence_continues(make_config, daemon, tmp_path):
    config = make_config(devices=[sim_device(poll_interval_s=0.05)])
    db = tmp_path / "bess-edge.db"
    seen: list[int] = []
    for _ in range(3):
        proc = daemon(config)
        wanted = len(seen) + 20
        wait_until(lambda wanted=wanted: len(sample_seqs(db)) >= wanted)
        # Read what is committed, then kill at once: everything read must survive.
        committed = sample_seqs(db)
        proc.kill9()
        after = sample_seqs(db)
        assert set(committed) <= set(after)
        seen = after
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Sequence numbers continued across restarts: unique and gap-free from 1.
    assert seen == list(range(1, len(seen) + 1))


# The daemon as `bess-edge run` starts it, with its store thread made to hang at shutdown and its
# stop deadline cut to 2 s: a fault injected, as nothing real hangs on demand.
STUCK_STOP = """
import sys, threading
from bess_edge import daemon
from bess_edge.cli import main

daemon.Daemon._stop_deadline_s = lambda self: 2.0
daemon.StoreWorker.shutdown = lambda self: threading.Event().wait()
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def _sigterm_after_first_reading(args: list[str], log_path: Path, **popen: Any) -> int:
    """Python with ``args`` and its output in ``log_path``, sent SIGTERM after the daemon's first
    reading; its exit code, within 20 s."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=log, **popen)
    try:
        wait_until(lambda: "first reading" in log_path.read_text(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)
    finally:
        proc.kill()


def test_a_stop_that_hangs_prints_every_threads_stack_and_exits_at_the_deadline(
    make_config, tmp_path
):
    log_path = tmp_path / "daemon.log"
    assert _sigterm_after_first_reading(["-c", STUCK_STOP, str(make_config())], log_path) == 1
    text = log_path.read_text()
    header = STOP_DEADLINE_PASSED.search(text)
    assert header is not None and header.group() == "Timeout (0:00:02)!", text[-3000:]
    stacks = text[header.end() :]
    assert "<lambda>" in stacks and "in wait" in stacks, stacks
    assert '"stopped"' not in text


def test_the_stop_deadline_leaves_room_for_the_stop_the_devices_timeouts_plan(make_config):
    quick = Daemon(load_config(make_config(devices=[sim_device("a"), sim_device("b")])))
    assert quick._stop_deadline_s() == daemon_module.STOP_DEADLINE_S  # 0.5-s timeouts: a 13-s plan
    slow_rtu = sim_device("rtu", timeout_s=10.0)
    slow = Daemon(load_config(make_config(devices=[sim_device("a"), slow_rtu])))
    # Polls in flight 2 x 10 + 5 s, the sync's clean stop, the drivers' closes, the margin.
    assert slow._stop_deadline_s() == pytest.approx(25 + 5 + 2 + 5)


def test_sigterm_stops_a_daemon_started_with_stderr_closed(make_config, tmp_path):
    """Its stuck-stop deadline cannot print there (sys.stderr is None): it stops without one."""
    log_path = tmp_path / "daemon.log"
    argv = ["-m", "bess_edge", "run", "--config", str(make_config())]
    # preexec_fn runs after the redirections: the daemon starts without fd 2.
    code = _sigterm_after_first_reading(argv, log_path, preexec_fn=lambda: os.close(2))
    assert code == 0
    assert '"stopped"' in log_path.read_text()
