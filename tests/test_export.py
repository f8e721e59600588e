"""bess-edge export: what the daemon buffered, as CSV or JSON lines, filtered by time."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from bess_edge.cli.export import parse_time
from bess_edge.config import load_config
from bess_edge.model import Reading, now_ms
from bess_edge.store import Cycle, Store


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", "export", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def filled(make_config):
    config = make_config()
    store = Store(load_config(config).storage.path)
    for i in range(5):
        store.commit_cycle(Cycle(reading=Reading(
            "rack-1", ts_ms=1_000_000 + i * 1000, pack_voltage_v=52.0 + i, pack_current_a=-3.0,
            cell_voltage_v=[3.25, 3.26 + i / 1000], cell_temperature_c=[25.0],
        )))  # fmt: skip
    store.close()
    return config


def test_export_csv_has_a_column_per_cell_and_respects_the_time_window(filled):
    result = export("--config", str(filled), "--device", "rack-1",
                    "--since", "1001000", "--until", "1004000")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["seq"]) for r in rows] == [2, 3, 4]
    assert float(rows[0]["pack_voltage_v"]) == 53.0
    assert float(rows[2]["cell_voltage_v_1"]) == pytest.approx(3.263, abs=1e-4)
    assert "exported 3 samples of rack-1" in result.stderr


def test_export_jsonl_keeps_cell_arrays(filled):
    result = export("--config", str(filled), "--device", "rack-1", "--format", "jsonl")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 5
    assert lines[0]["cell_voltage_v"] == pytest.approx([3.25, 3.26], abs=1e-4)


def test_export_jsonl_writes_missing_cells_as_null_not_nan(make_config):
    config = make_config()
    store = Store(load_config(config).storage.path)
    store.commit_cycle(Cycle(reading=Reading(
        "rack-1", ts_ms=1_000_000, pack_voltage_v=float("nan"), pack_current_a=-3.0,
        cell_voltage_v=[3.25, float("nan")], cell_temperature_c=[float("inf")],
        extra={"bms_fault": float("nan")},
    )))  # fmt: skip
    store.close()
    result = export("--config", str(config), "--device", "rack-1", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    (line,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert line["pack_voltage_v"] is None
    assert line["cell_voltage_v"][0] == pytest.approx(3.25, abs=1e-4)
    assert line["cell_voltage_v"][1] is None
    assert line["cell_temperature_c"] == [None]


def test_export_of_an_unknown_device_names_the_known_ones(filled):
    result = export("--config", str(filled), "--device", "nope")
    assert result.returncode == 2
    assert "rack-1" in result.stderr


def test_times_parse_as_iso_relative_or_epoch_ms():
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20+00:00") == 1_700_000_000_000
    assert abs(parse_time("-1h") - parse_time("-60m")) < 1000
    with pytest.raises(Exception, match="not a time"):
        parse_time("yesterday")


@pytest.fixture
def last_hour(make_config):
    """A sample a minute for the last hour, the newest one now."""
    config = make_config()
    store = Store(load_config(config).storage.path)
    now = now_ms()
    for minutes_ago in range(60, -1, -1):
        store.commit_cycle(Cycle(reading=Reading(
            "rack-1", ts_ms=now - minutes_ago * 60_000, pack_voltage_v=52.0, pack_current_a=1.0,
            cell_voltage_v=[3.3], cell_temperature_c=[25.0],
        )))  # fmt: skip
    store.close()
    return config


@pytest.mark.parametrize(
    "window",
    [("--since", "-5m"), ("--since=-5m",), ("--since", "5m"), ("--last", "5m"), ("--last=5m",)],
)
def test_the_readme_export_of_the_last_five_minutes_works_in_every_spelling(last_hour, window):
    """`--since -5m` as the README wrote it, and its friendlier spellings, all give the samples
    of the last five minutes."""
    result = export("--config", str(last_hour), "--device", "rack-1", *window, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 5  # 4, 3, 2, 1 and 0 minutes ago; 5 minutes ago is a hair too early


def test_export_since_an_iso_utc_time(filled):
    # 1_001_000 ms after the epoch is 00:16:41 UTC on 1970-01-01
    window = ("--since", "1970-01-01T00:16:41Z", "--until", "1970-01-01T00:16:43+00:00")
    result = export("--config", str(filled), "--device", "rack-1", *window)
    assert result.returncode == 0, result.stderr
    assert [int(r["seq"]) for r in csv.DictReader(io.StringIO(result.stdout))] == [2, 3]


def test_export_csv_has_a_readable_utc_time_next_to_ts_ms(filled):
    result = export("--config", str(filled), "--device", "rack-1")
    header = result.stdout.splitlines()[0].split(",")
    assert header[header.index("ts_ms") + 1] == "time_utc"
    first = next(csv.DictReader(io.StringIO(result.stdout)))
    assert first["ts_ms"] == "1000000"
    assert first["time_utc"] == "1970-01-01T00:16:40.000Z"


def test_export_help_lists_the_time_forms():
    result = export("--help")
    assert result.returncode == 0
    for form in ("5m", "-5m", "--last 5m", "2026-11-22T10:00Z", "milliseconds since the Unix"):
        assert form in result.stdout


def test_since_and_last_together_is_a_usage_error(filled):
    result = export("--config", str(filled), "--device", "rack-1", "--since", "5m", "--last", "1h")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
