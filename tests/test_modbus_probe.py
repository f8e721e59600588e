"""``bess-edge probe modbus`` run as a user would, against a real pymodbus server process."""

from __future__ import annotations

import subprocess
import sys

from modbus_server import ServerProcess
from test_modbus_tcp import generic_16s_image
from test_sunspec_discovery import storage_device


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", "probe", "modbus", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probe_without_map_lists_sunspec_models_and_decoded_points() -> None:
    with ServerProcess(storage_device()) as server:
        result = probe("--host", "127.0.0.1", "--port", str(server.port), "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SunSpec: 8 model(s)" in out
    assert "model 802" in out and "Battery Base Model" in out
    assert "Acme Storage" in out and "A1B2C3" in out
    soc_line = next(line for line in out.splitlines() if line.strip().startswith("802:0.SoC "))
    assert soc_line.split()[-1] == "87.3"


def test_probe_with_a_map_prints_values_in_si_units() -> None:
    with ServerProcess({"units": {"1": {"holding": generic_16s_image()}}}) as server:
        result = probe("--host", "127.0.0.1", "--port", str(server.port),
                       "--map", "generic-16s-example")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert lines["pack_voltage_v"] == ["53.012"]
    assert lines["cell_voltage_v"][:2] == ["3.301", "3.302"]
    assert lines["serial_number"] == ["JK16S-000042"]
    assert "no data-quality problems" in result.stdout


def test_probe_of_a_silent_address_fails_with_exit_1() -> None:
    result = probe("--host", "127.0.0.1", "--port", "1", "--timeout", "0.3")
    assert result.returncode == 1
    assert "cannot connect to tcp://127.0.0.1:1" in result.stderr


def test_probe_lists_shipped_maps_with_their_sources() -> None:
    result = probe("--list-maps")
    assert result.returncode == 0
    assert "generic-16s-example" in result.stdout and "source:" in result.stdout


def test_probe_needs_a_host_or_serial_port() -> None:
    result = probe("--unit", "2")
    assert result.returncode == 2
    assert "needs 'host'" in result.stderr
