"""Long CLI work shows how far it is: a bar on a terminal, a line now and then in a log or a
pipe, and a summary at the end (export of a long range, replay of a large capture; subscribe
--from-first is in tests/test_subscribe_cli.py)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest
from test_replay import battery_state, pylontech_device, write_capture

from bess_edge.config import load_config
from bess_edge.model import Reading
from bess_edge.store import Cycle, Store

LINE = re.compile(r" *(\d+)% ([\d,]+)/([\d,]+) (s of data|frames)")


@pytest.fixture
def long_range(make_config):
    """A day of samples a minute apart (1,440), as a long export."""
    config = make_config()
    store = Store(load_config(config).storage.path)
    for i in range(1440):
        store.commit_cycle(Cycle(reading=Reading(
            "rack-1", ts_ms=1_700_000_000_000 + i * 60_000, pack_voltage_v=52.0,
            pack_current_a=1.0, cell_voltage_v=[3.3] * 16, cell_temperature_c=[25.0] * 16,
        )))  # fmt: skip
    store.close()
    return config


def export_command(config) -> list[str]:
    return [sys.executable, "-m", "bess_edge", "export", "--config", str(config),
            "--device", "rack-1", "--since", "1700000000000"]  # fmt: skip


def test_export_in_a_pipe_prints_progress_lines_and_a_summary(long_range):
    result = subprocess.run(
        export_command(long_range), capture_output=True, text=True, timeout=60,
        env={**os.environ, "BESS_EDGE_PROGRESS_EVERY_S": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [m for line in lines if (m := LINE.match(line))]
    percents = [int(m[1]) for m in progress]
    assert len(percents) >= 5 and percents == sorted(percents) and percents[-1] == 100, lines
    assert "\r" not in result.stderr and "[" not in result.stderr  # no bar outside a terminal
    assert re.fullmatch(r"exported 1440 samples of rack-1 in [\d.]+ s", lines[-1])
    assert len(result.stdout.splitlines()) == 1441  # the data is untouched on stdout


def test_export_on_a_terminal_draws_a_bar_on_stderr(long_range, tmp_path):
    controller, terminal = pty.openpty()
    out = (tmp_path / "out.csv").open("w")
    proc = subprocess.Popen(export_command(long_range), stdout=out, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(30) == 0
    text = seen.decode()
    assert re.search(r"\r\[#{30}\] 100% 86,340/86,340 s of data", text), text
    assert re.search(r"\nexported 1440 samples of rack-1 in [\d.]+ s", text.replace("\r\n", "\n"))


def test_replay_of_a_large_capture_prints_progress_and_a_summary(make_config, tmp_path):
    capture = tmp_path / "capture.log"
    frames = write_capture(capture, battery_state(), cycles=60)  # 30 s recorded
    config = make_config([pylontech_device()])
    env = {**os.environ, "BESS_EDGE_PROGRESS_EVERY_S": "0.2"}
    result = subprocess.run(
        [sys.executable, "-m", "bess_edge", "replay", str(capture), "--config", str(config),
         "--speed", "15"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = [m for line in result.stderr.splitlines() if (m := LINE.match(line))]
    assert len(progress) >= 3, result.stderr
    done = [int(m[2].replace(",", "")) for m in progress]
    assert done == sorted(done) and all(int(m[3].replace(",", "")) == frames for m in progress)
    summary = result.stdout.splitlines()[-1]
    assert re.search(rf"{frames} frames read, .* Readings written .* in [\d.]+ s$", summary)
