"""A malformed config refuses to start with one line per problem: file, key path, reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import THIRDPARTY

from bess_edge.config import ConfigError, load_config

VALID = """
[site]
id = "s1"
[storage]
path = "x.db"
[[devices]]
id = "a"
driver = "sim"
[[devices]]
id = "b"
driver = "sim"
"""
SLCAN_DEVICE = """id = "b"
driver = "can"
timeout_s = 2
series_cells = 16
[devices.options]
interface = "slcan"
channel = "/dev/ttyACM0"
dbc = "pylontech_lv"
signals = { bms_soc_pct = "BMS_SocSoh.Soc" }
"""

# (name, config text, expected key path, a word the reason must contain)
CASES = [
    ("missing site id", VALID.replace('id = "s1"', 'name = "x"'), "site.id", "missing"),
    ("missing devices", '[site]\nid = "s1"\n', "devices", "missing"),
    (
        "missing driver",
        VALID.replace('driver = "sim"\n[[devices]]', "[[devices]]", 1),
        "devices[0].driver",
        "missing",
    ),
    ("wrong type", VALID + "poll_interval_s = 'fast'\n", "devices[1].poll_interval_s", "number"),
    ("negative interval", VALID + "poll_interval_s = -1\n", "devices[1].poll_interval_s", "> 0"),
    ("zero timeout", VALID + "timeout_s = 0\n", "devices[1].timeout_s", "> 0"),
    (
        "unknown driver",
        VALID.replace(
            'driver = "sim"\n[[devices]]\nid = "b"\ndriver = "sim"',
            'driver = "sim"\n[[devices]]\nid = "b"\ndriver = "profibus"',
        ),
        "devices[1].driver",
        "unknown driver",
    ),
    ("duplicate device id", VALID.replace('id = "b"', 'id = "a"'), "devices[1].id", "duplicate"),
    (
        "unknown chemistry",
        VALID + 'chemistry = "unobtainium"\n',
        "devices[1].chemistry",
        "unknown chemistry",
    ),
    ("unknown key", VALID + "pol_interval_s = 1\n", "devices[1].pol_interval_s", "unknown key"),
    (
        "bad driver option",
        VALID + "[devices.options]\ncells = 0\n",
        "devices[1].options.cells",
        ">= 1",
    ),
    (
        "unknown driver option",
        VALID + "[devices.options]\ncels = 16\n",
        "devices[1].options.cels",
        "unknown key",
    ),
    (
        "bad fault kind",
        VALID + "[devices.options]\nfaults = [{kind = 'meteor'}]\n",
        "devices[1].options.faults[0]",
        "kind",
    ),
    (
        "slcan open longer than the timeout",
        VALID.replace('id = "b"\ndriver = "sim"', SLCAN_DEVICE),
        "devices[1].options",
        "sleep_after_open",
    ),
    ("reserved device id", VALID.replace('id = "b"', 'id = "cmd"'), "devices[1].id", "reserved"),
    ("bad device id", VALID.replace('id = "b"', 'id = "rack 1/a"'), "devices[1].id", "letters"),
    ("bad mqtt port", VALID + "[mqtt]\nport = 70000\n", "mqtt.port", "<= 65535"),
    (
        "threshold without direction",
        VALID + "[[thresholds]]\nname = 't'\nmetric = 'soc_pct'\n",
        "thresholds[0]",
        "exactly one",
    ),
    ("tls cert without key", VALID + "[mqtt.tls]\ncert_file = 'c.pem'\n", "mqtt.tls", "together"),
]


@pytest.mark.parametrize(("name", "text", "key", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_config_names_file_key_and_reason(tmp_path: Path, name, text, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.lines()
    assert any(line.startswith(f"{path}: {key}") and reason in line for line in lines), lines


def test_bad_toml_syntax_gives_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('[site]\nid = "s1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}: invalid TOML") and "line 2" in line


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_check_config_exits_2_with_one_line_per_each_problem(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace('id = "b"', 'id = "a"') + "poll_interval_s = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "bess_edge", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert sorted(errors) == [
        f"{path}: devices[1].id: duplicate device id 'a' (also devices[0])",
        f"{path}: devices[1].poll_interval_s: must be > 0 (got -1)",
    ]


def test_run_refuses_a_bad_config_with_exit_2(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(VALID + "timeout_s = 'soon'\n")
    result = subprocess.run(
        [sys.executable, "-m", "bess_edge", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "devices[1].timeout_s" in result.stderr


def test_check_config_accepts_the_shipped_configs():
    config_dir = Path(__file__).resolve().parent.parent / "config"
    # thresholds-*.toml are rule files for include_thresholds, checked as such.
    shipped = sorted(config_dir.glob("*.toml"))
    assert any(p.name.startswith("thresholds-") for p in shipped)
    for path in shipped:
        result = subprocess.run(
            [sys.executable, "-m", "bess_edge", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "../shared/thirdparty/" in path.read_text() and not THIRDPARTY.is_dir():
            # An example that reads third-party data in place (never copied into the repo), on a
            # machine without it: check-config must name the missing file, not pass or crash.
            assert result.returncode == 2, f"{path}: {result.stderr}"
            assert "../shared/thirdparty/" in result.stderr and "not found" in result.stderr
            continue
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "ok.toml"
    path.write_text(VALID)
    monkeypatch.setenv("BESS_EDGE__MQTT__HOST", "broker.example")
    monkeypatch.setenv("BESS_EDGE__MQTT__PASSWORD", "s3cret")
    monkeypatch.setenv("BESS_EDGE__STORAGE__MAX_SIZE_MB", "12")
    settings = load_config(path)
    assert settings.mqtt.host == "broker.example"
    assert settings.storage.max_size_mb == 12
    assert settings.storage.path == Path("x.db")  # the file's other keys are kept
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.summary()
