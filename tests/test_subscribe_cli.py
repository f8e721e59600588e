"""``bess-edge subscribe`` as a cloud engineer first runs it: what it needs, what -o x.csv
gives a spreadsheet, and how far through the backlog it is."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import read_db, sim_device, wait_until
from test_cli_first_steps import bess_edge
from test_sync_mqtt import mqtt_section


def test_subscribe_help_says_it_needs_the_cloud_extra():
    result = bess_edge("subscribe", "--help")
    assert "pip install 'bess-edge[cloud]'" in " ".join(result.stdout.split())


def test_subscribe_without_jsonschema_says_what_to_install(make_config, tmp_path):
    """Without the cloud extra: one clear line, no traceback, no empty output file."""
    config = make_config(mqtt=mqtt_section(1))
    out = tmp_path / "x.csv"
    # The interpreter as a user without jsonschema has it: the import fails.
    hide = "import sys; sys.modules['jsonschema'] = None; from bess_edge.cli import main; "
    result = subprocess.run(
        [sys.executable, "-c", hide + "sys.exit(main(sys.argv[1:]))",
         "subscribe", "--config", str(config), "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "bess-edge subscribe: jsonschema is not installed. It validates payloads with "
        "jsonschema, which the gateway does not need: install it with "
        "pip install 'bess-edge[cloud]'."
    ]
    assert not out.exists()


def test_subscribe_csv_has_a_column_per_field_and_shows_progress_through_the_backlog(
    make_config, daemon, mosquitto, tmp_path
):
    config = make_config(
        devices=[sim_device(poll_interval_s=0.1)], mqtt=mqtt_section(mosquitto.port)
    )
    db = tmp_path / "bess-edge.db"
    daemon(config)
    # Published before anyone subscribed: --from-first asks the gateway to publish them again.
    wait_until(lambda: len(read_db(db, "SELECT seq FROM samples")) >= 60, timeout=30)
    out = tmp_path / "cloud.csv"
    result = subprocess.run(
        [sys.executable, "-m", "bess_edge", "subscribe", "--config", str(config),
         "--from-first", "--duration", "8", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "BESS_EDGE_PROGRESS_EVERY_S": "0.5"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["invalid"] == 0 and summary["elapsed_s"] > 0
    assert any(re.fullmatch(r" *\d+% [\d,]+/[\d,]+ seqs.*", line) for line in lines), lines

    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == sum(summary["per_stream"].values())
    header = list(rows[0])
    assert header[:6] == ["site", "device", "stream", "seq", "ts_ms", "time_utc"]
    assert "item" not in header
    telemetry = [r for r in rows if r["stream"] == "telemetry"]
    assert len(telemetry) >= 60
    assert [f"cell_voltage_v_{i}" in header for i in range(16)] == [True] * 16
    assert 2.5 < float(telemetry[0]["cell_voltage_v_15"]) < 3.7
    assert 40 < float(telemetry[0]["pack_voltage_v"]) < 60
    diagnoses = [r for r in rows if r["stream"] == "diagnostics"]
    assert diagnoses and 0 <= float(diagnoses[-1]["diagnosis.soc_pct"]) <= 100
    assert "diagnosis.dod_histogram_9" in header
    # Per-cell diagnosis arrays come every 60 polls: the file was widened, older rows kept.
    assert "diagnosis.cell_soc_pct_15" in header
    assert any(r["diagnosis.cell_soc_pct_15"] for r in diagnoses)
    assert all(r["seq"] for r in rows)
    assert Path(f"{out}.tmp").exists() is False
