"""The API's systemd unit: valid for systemd, hardened, and running `bess-edge api`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from test_service_unit import exposure, needs_systemd_analyze

UNIT = REPO / "systemd" / "bess-edge-api.service"


def test_unit_runs_the_api_as_the_service_user_after_the_daemon():
    text = UNIT.read_text()
    assert (
        "ExecStart=/opt/bess-edge/venv/bin/bess-edge api --config /etc/bess-edge/bess-edge.toml"
        in text
    )
    assert "User=bess-edge" in text and re.search(r"^After=bess-edge\.service", text, re.M)


@needs_systemd_analyze
def test_unit_passes_verify_and_scores_at_most_2(tmp_path):
    exe = Path(sys.executable).parent / "bess-edge"
    unit = tmp_path / "bess-edge-api.service"
    unit.write_text(UNIT.read_text().replace("/opt/bess-edge/venv/bin/bess-edge", str(exe)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert exposure(UNIT) <= 2.0
