"""``bess-edge status`` as an operator reads it: can it be trusted at a glance?"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import sim_device, wait_until
from test_cli_first_steps import bess_edge
from test_sync_mqtt import mqtt_section

from bess_edge.config import load_config
from bess_edge.model import Reading, now_ms
from bess_edge.store import Cycle, Store


def status(config: Path, *args: str) -> str:
    result = bess_edge("status", "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_json(config: Path) -> dict:
    return json.loads(status(config, "--json"))


def test_status_says_the_daemon_runs_then_that_it_is_gone_and_its_device_stale(make_config, daemon):
    config = make_config(devices=[sim_device(poll_interval_s=0.2, timeout_s=0.5)])
    proc = daemon(config)
    proc.wait_for_log("first reading")
    wait_until(lambda: status_json(config)["daemon"]["running"], timeout=20)
    text = status(config)
    assert re.search(rf"^daemon: running, pid {proc.proc.pid}, up \d", text, re.MULTILINE), text
    assert "rack-1 (sim): ok, last poll" in text and "STALE" not in text

    proc.kill9()
    time.sleep(3 * 0.2 + 0.5 + 0.5)  # three polls overdue, plus the timeout, plus margin
    text = status(config)
    assert f"daemon: NOT RUNNING (pid {proc.proc.pid} last seen" in text, text
    assert re.search(r"rack-1 \(sim\): STALE, last poll [\d.]+ s ago \(due every 0.2 s", text)
    data = status_json(config)
    assert data["daemon"]["running"] is False and data["devices"][0]["stale"] is True


def test_status_after_a_clean_stop_says_not_running(make_config, daemon):
    config = make_config()
    proc = daemon(config)
    proc.wait_for_log("first reading")
    assert proc.stop() == 0
    text = status(config)
    assert text.splitlines()[1] == "daemon: NOT RUNNING (values below are what it last stored)"
    assert "mqtt: disabled in the config" in text


def test_status_shows_mqtt_connected_then_disconnected_with_the_backlog_age(
    make_config, daemon, mosquitto
):
    config = make_config(mqtt=mqtt_section(mosquitto.port))
    daemon(config).wait_for_log("first reading")
    wait_until(lambda: status_json(config)["mqtt"]["state"] == "connected", timeout=20)
    assert f"mqtt: connected to 127.0.0.1:{mosquitto.port}" in status(config)

    mosquitto.kill()
    wait_until(lambda: status_json(config)["mqtt"]["state"] == "disconnected", timeout=20)
    wait_until(lambda: (status_json(config)["mqtt"]["backlog_age_s"] or 0) >= 2, timeout=20)
    line = next(x for x in status(config).splitlines() if x.startswith("mqtt:"))
    assert re.fullmatch(
        rf"mqtt: DISCONNECTED from 127.0.0.1:{mosquitto.port} \(buffering\), "
        r"backlog [\d,]+ rows, oldest [\d.]+ s old",
        line,
    ), line


def test_status_units_are_consistent(make_config):
    """R0 in mΩ, SOC and SOH to 0.1 %, cycles to 0.01 EFC: not 0.005174Ω, 45.21%, 5.407e-07."""
    config = make_config()
    store = Store(load_config(config).storage.path)
    store.commit_cycle(Cycle(
        reading=Reading("rack-1", ts_ms=now_ms(), pack_voltage_v=52.0, pack_current_a=1.0,
                        cell_voltage_v=[3.3] * 16, cell_temperature_c=[25.0] * 16),
        diagnosis={"device_id": "rack-1", "ts_ms": now_ms(), "soc_pct": 45.21,
                   "soc_uncertainty_pct": 2.345, "soh_pct": 99.04, "r0_ohm": 0.005174,
                   "equivalent_full_cycles": 5.407e-07, "thermal_risk": "normal"},
    ))  # fmt: skip
    store.close()
    text = status(config)
    line = next(x for x in text.splitlines() if "diagnosis:" in x)
    assert line.strip() == (
        "diagnosis: SOC 45.2 ± 2.3 %, SOH 99.0 %, R0 5.17 mΩ, cycles 0.00 EFC, thermal risk normal"
    )


def test_status_says_where_the_ocv_curve_comes_from(make_config):
    """A learned OCV curve is named with how well the rests fit it; a preset just by name."""
    config = make_config()
    store = Store(load_config(config).storage.path)
    for k, (source, residual) in enumerate((("preset", None), ("learned", 0.00214))):
        store.commit_cycle(Cycle(
            reading=Reading("rack-1", ts_ms=now_ms() + k, pack_voltage_v=52.0,
                            pack_current_a=1.0),
            diagnosis={"device_id": "rack-1", "ts_ms": now_ms() + k, "soc_pct": 45.2,
                       "ocv_source": source, "ocv_fit_residual_v": residual},
        ))  # fmt: skip
        line = next(x for x in status(config).splitlines() if "diagnosis:" in x)
        expected = "OCV preset" if source == "preset" else "OCV learned (rests fit to 2.1 mV)"
        assert line.strip() == f"diagnosis: SOC 45.2 %, {expected}"
    store.close()


def test_status_shows_the_main_file_and_the_wal_apart(make_config, daemon, tmp_path):
    config = make_config()
    daemon(config).wait_for_log("first reading")
    db = tmp_path / "bess-edge.db"
    wait_until(lambda: Path(f"{db}-wal").exists() and Path(f"{db}-wal").stat().st_size > 0)
    data = status_json(config)["buffer"]
    assert data["wal_bytes"] > 0 and data["main_bytes"] > 0
    assert data["main_bytes"] + data["wal_bytes"] == data["file_bytes"]
    size = r"\d[\d.]* [kM]B"
    assert re.search(rf"main {size} \+ WAL {size} \(cap 1024.0 MB\)", status(config))


def test_status_watch_redraws_until_ctrl_c(make_config, daemon):
    config = make_config()
    daemon(config).wait_for_log("first reading")
    command = [sys.executable, "-m", "bess_edge", "status", "--config", str(config)]
    watch = subprocess.Popen(
        [*command, "--watch", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert watch.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    wait_until(lambda: sum(line == "site test-site\n" for line in lines) >= 3, timeout=30)
    watch.send_signal(signal.SIGINT)
    watch.wait(10)
    reader.join(5)
    err = watch.stderr.read() if watch.stderr else ""
    out = "".join(lines)
    assert watch.returncode == 0, err
    snapshots = out.count("site test-site\n")
    assert snapshots >= 3, out
    readings = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) readings", out)]
    assert readings == sorted(readings) and readings[-1] > readings[0]
    assert "Traceback" not in err
    assert os.environ.get("TERM") is None or "\x1b[2J" not in out  # not a terminal: no clearing


def test_a_frozen_daemon_is_reported_as_not_responding(make_config, daemon):
    """SIGSTOP: the process lives and holds the store, but nothing is polled any more."""
    config = make_config()
    proc = daemon(config)
    proc.wait_for_log("first reading")
    wait_until(lambda: status_json(config)["daemon"]["responding"], timeout=20)
    proc.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not status_json(config)["daemon"]["responding"], timeout=30)
        text = status(config)
        assert re.search(
            rf"^daemon: pid {proc.proc.pid} holds the store but is NOT RESPONDING "
            r"\(its state last refreshed \d+ s ago\)$",
            text,
            re.MULTILINE,
        ), text
        assert status_json(config)["daemon"]["running"] is True
    finally:
        proc.signal(signal.SIGCONT)
