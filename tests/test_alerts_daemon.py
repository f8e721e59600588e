"""Local alerts end to end: the real daemon, the simulated BMS with injected faults, the CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import sim_device, wait_until

from bess_edge.storage.cells import unpack_cells

POLL_S = 0.2


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", *args], capture_output=True, text=True, timeout=60
    )


def query(db: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows as dicts, read the way any other process would (read-only, daemon running)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        conn.close()


def alerts(db: Path, rule: str | None = None) -> list[dict[str, Any]]:
    if rule is None:
        return query(db, "SELECT * FROM alerts ORDER BY id")
    return query(db, "SELECT * FROM alerts WHERE rule = ? ORDER BY id", rule)


def events(db: Path, alert_id: int) -> list[str]:
    rows = query(db, "SELECT transition FROM alert_events WHERE alert_id = ? ORDER BY id", alert_id)
    return [r["transition"] for r in rows]


def hot_cell_device(**options: Any) -> dict[str, Any]:
    """Cell 7 heated by 60 W from the start; 120x simulated time: ~3 K per real second."""
    fault = {"kind": "over_temperature", "cell": 7, "heat_w": 60.0, "at_s": 0.0}
    base = {"profile": "idle", "time_scale": 120.0, "temperature_noise_c": 0.0, "faults": [fault]}
    return sim_device(poll_interval_s=POLL_S, options={**base, **options})


HOT_RULE = {
    "name": "cell-hot",
    "metric": "cell_temperature_c",
    "above": 40.0,
    "clear": 35.0,
    "for_s": 1.0,
    "clear_for_s": 30.0,
    "severity": "critical",
}


def test_over_temperature_raises_within_for_s_plus_one_poll_naming_device_and_cell(
    make_config, daemon, tmp_path
):
    config = make_config(devices=[hot_cell_device()], thresholds=[HOT_RULE])
    db = tmp_path / "bess-edge.db"
    daemon(config)
    alert = wait_until(lambda: alerts(db, "cell-hot"), timeout=60)[0]
    assert (alert["device"], alert["cell"], alert["severity"]) == ("rack-1", 7, "critical")
    assert alert["message"].startswith("rack-1 cell 7: cell_temperature_c ")
    # The sample that crossed 40 °C, and every sample after it up to the raise.
    samples = query(db, "SELECT ts_ms, cell_temperature_c FROM samples ORDER BY seq")
    crossing = next(s["ts_ms"] for s in samples if unpack_cells(s["cell_temperature_c"])[7] > 40)
    after_for_s = [s["ts_ms"] for s in samples if s["ts_ms"] >= crossing + 1000]
    assert alert["raised_ts_ms"] == after_for_s[0]  # the first poll once for_s had passed
    assert alert["raised_ts_ms"] - crossing < 1000 + 2 * POLL_S * 1000 + 500
    result = bess_edge("alerts", "--active", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"#{alert['id']}" in result.stdout and "rack-1 cell 7" in result.stdout


def test_alert_state_survives_a_restart_and_a_queued_ack_is_applied_at_start(
    make_config, daemon, tmp_path
):
    config = make_config(devices=[hot_cell_device()], thresholds=[HOT_RULE])
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    alert = wait_until(lambda: alerts(db, "cell-hot"), timeout=60)[0]
    assert proc.stop() == 0
    assert not (tmp_path / "bess-edge.db.pid").exists()

    result = bess_edge("ack", str(alert["id"]), "--note", "fan checked", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout and "queued" in result.stdout

    samples_before = len(query(db, "SELECT seq FROM samples"))
    daemon(config)
    wait_until(lambda: alerts(db, "cell-hot")[0]["acked_ts_ms"] is not None, timeout=30)
    # Let the restarted simulation heat cell 7 past 40 °C again (~6 s): still the same episode.
    wait_until(lambda: len(query(db, "SELECT seq FROM samples")) > samples_before + 50, timeout=60)
    episodes = [a for a in alerts(db, "cell-hot") if a["cell"] == 7]
    assert [(a["id"], a["state"]) for a in episodes] == [(alert["id"], "active")]
    assert episodes[0]["acked_by"].startswith("cli:") and episodes[0]["ack_note"] == "fan checked"
    assert events(db, alert["id"]) == ["raised", "acknowledged"]
    again = bess_edge("ack", str(alert["id"]), "--config", str(config))
    assert again.returncode == 1 and "already acknowledged" in again.stderr


def test_ack_from_the_cli_is_applied_by_the_running_daemon(make_config, daemon, tmp_path):
    config = make_config(devices=[hot_cell_device()], thresholds=[HOT_RULE])
    db = tmp_path / "bess-edge.db"
    daemon(config)
    alert = wait_until(lambda: alerts(db, "cell-hot"), timeout=60)[0]
    result = bess_edge("ack", str(alert["id"]), "--actor", "ops:anna", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"alert {alert['id']} acknowledged by ops:anna" in result.stdout
    row = alerts(db, "cell-hot")[0]
    assert (row["acked_by"], row["state"]) == ("ops:anna", "active")
    listed = json.loads(bess_edge("alerts", "--json", "--config", str(config)).stdout)
    mine = next(a for a in listed if a["id"] == alert["id"])
    assert [e["transition"] for e in mine["events"]] == ["raised", "acknowledged"]
    assert bess_edge("ack", "9999", "--config", str(config)).returncode == 1


def test_alert_clears_only_past_the_clear_level(make_config, daemon, tmp_path):
    # A 15-second simulated day: SOC climbs 50 -> 70 % at 1C, rests, falls back to 50 %.
    options = {
        "profile": "daily",
        "day_length_s": 3600.0,
        "c_rate": 1.0,
        "time_scale": 240.0,
        "initial_soc_pct": 50.0,
        "soc_spread_pct": 0.0,
    }
    rule = {"name": "soc-high", "metric": "bms_soc_pct", "above": 62.0, "clear": 56.0}
    config = make_config(
        devices=[sim_device(poll_interval_s=POLL_S, options=options)], thresholds=[rule]
    )
    db = tmp_path / "bess-edge.db"
    daemon(config)
    cleared = wait_until(
        lambda: [a for a in alerts(db, "soc-high") if a["state"] == "cleared"], timeout=60
    )[0]
    socs = query(
        db,
        "SELECT bms_soc_pct FROM samples WHERE ts_ms > ? AND ts_ms < ? ORDER BY seq",
        cleared["raised_ts_ms"],
        cleared["cleared_ts_ms"],
    )
    # On the way down it spent polls between 62 and 56 % and stayed active there.
    assert any(56.0 < s["bms_soc_pct"] < 62.0 for s in socs[len(socs) // 2 :])
    at_clear = query(
        db, "SELECT bms_soc_pct FROM samples WHERE ts_ms = ?", cleared["cleared_ts_ms"]
    )
    assert at_clear[0]["bms_soc_pct"] <= 56.0
    assert len(alerts(db, "soc-high")) == 1


def test_a_noisy_current_around_a_threshold_is_one_episode_with_hysteresis(
    make_config, daemon, tmp_path
):
    device = sim_device(poll_interval_s=POLL_S, options={"current_a": 20.0, "current_noise_a": 1.0})
    naive = {"name": "naive", "metric": "pack_current_a", "above": 20.0, "min_reraise_s": 0.0}
    braked = {
        "name": "braked",
        "metric": "pack_current_a",
        "above": 20.0,
        "clear": 18.0,  # two standard deviations of the noise below
        "clear_for_s": 2.0,
        "min_reraise_s": 60.0,
    }
    config = make_config(devices=[device], thresholds=[naive, braked])
    db = tmp_path / "bess-edge.db"
    daemon(config)
    wait_until(lambda: len(query(db, "SELECT seq FROM samples")) >= 40, timeout=60)
    assert len(alerts(db, "naive")) >= 4  # the storm the brakes prevent
    assert len(alerts(db, "braked")) == 1


def test_comms_drop_raises_and_clears_comms_lost(make_config, daemon, tmp_path):
    dropout = {"kind": "comms_dropout", "at_s": 1.0, "duration_s": 2.0, "mode": "error"}
    config = make_config(devices=[sim_device(options={"faults": [dropout]})])
    db = tmp_path / "bess-edge.db"
    daemon(config)
    lost = wait_until(
        lambda: [a for a in alerts(db, "comms_lost") if a["state"] == "cleared"], timeout=30
    )
    assert len(lost) == 1
    assert events(db, lost[0]["id"]) == ["raised", "cleared"]
    listed = json.loads(bess_edge("alerts", "--json", "--config", str(config)).stdout)
    assert [(a["rule"], a["state"]) for a in listed] == [("comms_lost", "cleared")]


def test_reload_applies_new_thresholds_keeps_active_alerts_and_refuses_a_bad_file(
    make_config, daemon, tmp_path
):
    seen_soc = {"name": "soc-seen", "metric": "bms_soc_pct", "above": 0.0}
    seen_volts = {"name": "volts-seen", "metric": "pack_voltage_v", "above": 1.0}
    config = make_config(thresholds=[seen_soc])
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    first = wait_until(lambda: alerts(db, "soc-seen"), timeout=30)[0]

    make_config(thresholds=[seen_soc, seen_volts])
    result = bess_edge("reload", "--config", str(config))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: alerts(db, "volts-seen"), timeout=30)
    assert [(a["id"], a["state"]) for a in alerts(db, "soc-seen")] == [(first["id"], "active")]

    make_config(thresholds=[seen_soc, {**seen_volts, "below": 5.0}])  # above and below: invalid
    refused = bess_edge("reload", "--config", str(config))
    assert refused.returncode == 2 and "thresholds[1]" in refused.stderr
    proc.signal(signal.SIGHUP)  # the daemon must refuse it on its own too
    proc.wait_for_log("reload refused")
    assert "give exactly one of 'above' or 'below'" in proc.log()
    time.sleep(5 * POLL_S)
    # Had the daemon dropped its rules, these episodes would have been cleared as orphans.
    assert {a["rule"]: a["state"] for a in alerts(db)} == {
        "soc-seen": "active",
        "volts-seen": "active",
    }
    assert proc.log().count("thresholds reloaded") == 1


def test_a_drifting_cell_is_named_by_a_per_cell_rule(make_config, daemon, tmp_path):
    # Cell 3 leaks 20 A inside (self-discharge) at 600x time: ~3 % SOC per real second, so it
    # leaves the LFP plateau for the steep end of the curve while its neighbours stay at ~3.29 V.
    leak = {"kind": "self_discharge", "cell": 3, "current_a": 20.0, "at_s": 0.0}
    options = {"profile": "idle", "time_scale": 600.0, "voltage_noise_v": 0.0, "faults": [leak]}
    rule = {"name": "cell-low", "metric": "cell_voltage_v", "below": 3.15, "for_s": 1.0}
    config = make_config(
        devices=[sim_device(poll_interval_s=POLL_S, options=options)], thresholds=[rule]
    )
    db = tmp_path / "bess-edge.db"
    daemon(config)
    alert = wait_until(lambda: alerts(db, "cell-low"), timeout=60)[0]
    assert (alert["cell"], alert["value"] < 3.15) == (3, True)
    assert alert["message"].startswith("rack-1 cell 3: cell_voltage_v ")
    time.sleep(5 * POLL_S)
    assert [a["cell"] for a in alerts(db, "cell-low")] == [3]
