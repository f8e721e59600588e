"""The systemd unit and its installation, checked with systemd's own tools."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

UNIT = REPO / "systemd" / "bess-edge.service"
MAX_EXPOSURE = 2.0  # issue 8: "scores <= 2.0"; docs/install.md states the figure
VENV_BESS_EDGE = Path(sys.executable).parent / "bess-edge"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd): cannot check the unit",
)


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", *args], capture_output=True, text=True, timeout=60
    )


def install(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = bess_edge("install-systemd", "--prefix", str(prefix), *extra)
    assert result.returncode == 0, result.stderr
    return result


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("name", "command"), [("bess-edge.service", "run"), ("bess-edge-api.service", "api")]
)
def test_installed_unit_passes_systemd_analyze_verify(tmp_path, name, command):
    # verify checks that ExecStart= exists: install with this venv's bess-edge as the binary.
    install(tmp_path, "--exec", str(VENV_BESS_EDGE))
    unit = tmp_path / "etc/systemd/system" / name
    assert f"ExecStart={VENV_BESS_EDGE} {command} --config /etc/bess-edge/bess-edge.toml" in (
        unit.read_text()
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # no warning either


@needs_systemd_analyze
def test_unit_hardening_exposure_is_at_most_2(tmp_path):
    score = exposure(UNIT)
    assert score <= MAX_EXPOSURE
    assert f"systemd-analyze security: {score}" in UNIT.read_text()
    assert f"**{score}**" in (REPO / "docs" / "install.md").read_text()


def test_unit_is_a_notify_service_with_watchdog_and_hardening():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=bess-edge",
        "SupplementaryGroups=dialout",
        "StateDirectory=bess-edge",
        "ConfigurationDirectory=bess-edge",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_CAN\n",
        "DeviceAllow=char-ttyUSB rw",
        "SystemCallFilter=@system-service",
    ):
        assert line in text, line


def test_staged_install_writes_both_units_and_a_config_other_users_cannot_read(tmp_path):
    result = install(tmp_path)
    unit = tmp_path / "etc/systemd/system/bess-edge.service"
    api_unit = tmp_path / "etc/systemd/system/bess-edge-api.service"
    config = tmp_path / "etc/bess-edge/bess-edge.toml"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(api_unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    # A staged tree is for the target machine: the documented venv, not this one.
    assert "ExecStart=/opt/bess-edge/venv/bin/bess-edge run" in unit.read_text()
    assert api_unit.read_text() == (REPO / "systemd" / "bess-edge-api.service").read_text()
    assert config.read_text() == (REPO / "config" / "bess-edge.toml").read_text()
    assert "useradd --system" in result.stdout  # told what to do on the target
    check = bess_edge("check-config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr


def test_reinstall_on_upgrade_keeps_the_sites_config_but_tightens_its_mode(tmp_path):
    install(tmp_path)
    config = tmp_path / "etc/bess-edge/bess-edge.toml"
    site = config.read_text().replace('id = "site-001"', 'id = "plant-7"')
    config.write_text(site)
    config.chmod(0o644)
    result = install(tmp_path)
    assert config.read_text() == site
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert "keep" in result.stdout


def test_no_api_installs_the_daemons_unit_alone(tmp_path):
    result = install(tmp_path, "--no-api")
    assert (tmp_path / "etc/systemd/system/bess-edge.service").is_file()
    assert not (tmp_path / "etc/systemd/system/bess-edge-api.service").exists()
    assert "bess-edge-api" not in result.stdout


def test_dry_run_changes_nothing(tmp_path):
    result = install(tmp_path, "--dry-run")
    assert "would write" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_daemon_warns_when_a_config_holding_a_password_is_world_readable(make_config, daemon):
    config = make_config(mqtt={"enabled": False, "password": "hunter2-site-secret"})
    config.chmod(0o644)
    proc = daemon(config)
    proc.wait_for_log('"msg": "ready"')
    assert "secret readable by every local user" in proc.log()
    assert f"chmod o-r {config}" in proc.log()
    assert "hunter2-site-secret" not in proc.log()
    assert proc.stop() == 0
    config.chmod(0o640)
    quiet = daemon(config)
    quiet.wait_for_log('"msg": "ready"')
    assert "secret readable" not in quiet.log()
    assert quiet.stop() == 0
