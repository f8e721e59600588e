"""``check-config`` tells everything in one pass: every problem with its key path, hints for near
misses, no secret echoed, and the configs that are valid but cannot run on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bess_edge.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
SITE = '[site]\nid = "s1"\n'
DEVICE = '[[devices]]\nid = "rack-1"\ndriver = "sim"\n'


def check(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", "check-config", *args, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def problems(tmp_path: Path, text: str, runnable: bool = True) -> list[str]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, runnable=runnable)
    return [line.removeprefix(f"{path}: ") for line in info.value.lines()]


def storage(tmp_path: Path) -> str:
    return f'[storage]\npath = "{tmp_path / "site.db"}"\n'


# -- every problem in one pass (issue 15 item 9, issue 16 item 4) ---------------------------------


def test_a_wrong_driver_and_a_wrong_chemistry_in_one_device_are_both_reported(tmp_path: Path):
    text = SITE + storage(tmp_path) + '[[devices]]\nid = "a"\ndriver = "simulator"\n'
    found = problems(tmp_path, text + 'chemistry = "lifepo4"\n')
    assert any(p.startswith("devices[0].driver: unknown driver 'simulator'") for p in found)
    assert any(p.startswith("devices[0].chemistry: unknown chemistry 'lifepo4'") for p in found)


def test_an_unknown_driver_option_is_not_hidden_by_unknown_top_level_keys(tmp_path: Path):
    text = "colour = 'red'\n" + SITE + storage(tmp_path) + DEVICE + "[devices.options]\ncels = 16\n"
    found = problems(tmp_path, text + "[extras]\nx = 1\n")
    assert "devices[0].options.cels: unknown key; did you mean 'cells'?" in found
    assert any(p.startswith("colour: unknown key") for p in found)
    assert any(p.startswith("extras: unknown key") for p in found)


def test_a_clear_on_the_wrong_side_is_not_hidden_by_a_bad_message_template(tmp_path: Path):
    rule = '[[thresholds]]\nname = "soc"\nmetric = "soc_pct"\nbelow = 10\nclear = 5\n'
    found = problems(tmp_path, SITE + storage(tmp_path) + DEVICE + rule + 'message = "{nope}"\n')
    assert any(p.startswith("thresholds[0].message: bad message template") for p in found)
    assert "thresholds[0]: clear (5.0) must be >= below (10.0)" in found


def test_a_reserved_device_id_is_not_hidden_by_another_bad_id(tmp_path: Path):
    devices = (
        '[[devices]]\nid = "cmd"\ndriver = "sim"\n[[devices]]\nid = "rack 1"\ndriver = "sim"\n'
    )
    found = problems(tmp_path, SITE + storage(tmp_path) + devices)
    assert any(p.startswith("devices[0].id: 'cmd' is reserved") for p in found)
    assert any(p.startswith("devices[1].id: 'rack 1' may only use") for p in found)


def test_near_miss_keys_get_a_did_you_mean(tmp_path: Path):
    found = problems(tmp_path, SITE + storage(tmp_path) + DEVICE + "poll_intervall_s = 2\n")
    assert found == ["devices[0].poll_intervall_s: unknown key; did you mean 'poll_interval_s'?"]
    found = problems(tmp_path, SITE + storage(tmp_path).replace("path", "pth") + DEVICE)
    assert found == ["storage.pth: unknown key; did you mean 'path'?"]


def test_tls_true_says_what_to_write_instead(tmp_path: Path):
    (found,) = problems(tmp_path, SITE + storage(tmp_path) + "[mqtt]\ntls = true\n" + DEVICE)
    assert found.startswith("mqtt.tls: is a table, not true: write [mqtt.tls]")
    assert "'enabled = true'" in found


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('capacity_ah = "280"', "devices[0].capacity_ah"),
        ('poll_interval_s = "1"', "devices[0].poll_interval_s"),
        ("capacity_ah = true", "devices[0].capacity_ah"),
        ('enabled = "false"', "devices[0].enabled"),
        ("enabled = 0", "devices[0].enabled"),
    ],
)
def test_numbers_and_booleans_written_as_strings_are_refused(tmp_path: Path, line, key):
    (found,) = problems(tmp_path, SITE + storage(tmp_path) + DEVICE + line + "\n")
    assert found.startswith(f"{key}: must be ")
    assert "without quotes" in found


def test_strings_for_numbers_are_refused_in_driver_options_and_rules_too(tmp_path: Path):
    rule = '[[thresholds]]\nname = "soc"\nmetric = "soc_pct"\nbelow = "10"\n'
    text = SITE + storage(tmp_path) + DEVICE + '[devices.options]\ncells = "16"\n' + rule
    found = problems(tmp_path, text)
    assert any(p.startswith("devices[0].options.cells: must be a number") for p in found)
    assert any(p.startswith("thresholds[0].below: must be a number") for p in found)


def test_environment_strings_are_still_numbers(tmp_path: Path, monkeypatch):
    path = tmp_path / "site.toml"
    path.write_text(SITE + storage(tmp_path) + DEVICE)
    monkeypatch.setenv("BESS_EDGE__MQTT__PORT", "8883")
    monkeypatch.setenv("BESS_EDGE__MQTT__ENABLED", "false")
    assert load_config(path, runnable=True).mqtt.port == 8883


# -- never a secret's value (issue 15 item 8) -----------------------------------------------------


@pytest.mark.parametrize(
    "value", ["98765432", "98765.432", "true", '["hunter2-98765432"]', '{ x = "hunter2-98765432" }']
)
def test_a_secret_is_never_echoed_whatever_its_type(tmp_path: Path, value):
    path = tmp_path / "site.toml"
    path.write_text(SITE + storage(tmp_path) + f"[mqtt]\npassword = {value}\n" + DEVICE)
    result = check(path)
    assert result.returncode == 2
    assert "mqtt.password" in result.stderr
    assert "98765" not in result.stderr and "hunter2" not in result.stderr
    assert "not shown: it is a secret" in result.stderr


# -- configs that cannot run (issue 15 item 9) ----------------------------------------------------


def mqtt(port_line: str = "", **files: Path) -> str:
    lines = ["[mqtt]", "enabled = true", port_line]
    if "password_file" in files:
        lines.append(f'password_file = "{files.pop("password_file")}"')
    if files:
        lines += ["[mqtt.tls]", "enabled = true", *(f'{k} = "{v}"' for k, v in files.items())]
    return "\n".join(lines) + "\n"


def test_missing_tls_files_are_refused_with_their_key_paths(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    text = mqtt(ca_file=ca, cert_file=tmp_path / "client.pem", key_file=tmp_path / "client.key")
    found = problems(tmp_path, SITE + storage(tmp_path) + text + DEVICE)
    assert sorted(found) == [
        f"mqtt.tls.cert_file: '{tmp_path / 'client.pem'}': file not found",
        f"mqtt.tls.key_file: '{tmp_path / 'client.key'}': file not found",
    ]


def test_a_password_file_that_is_missing_or_a_directory_is_refused(tmp_path: Path):
    found = problems(tmp_path, SITE + storage(tmp_path) + mqtt(password_file=tmp_path) + DEVICE)
    assert found == [f"mqtt.password_file: '{tmp_path}' is a directory, not a file"]
    gone = tmp_path / "nope"
    found = problems(tmp_path, SITE + storage(tmp_path) + mqtt(password_file=gone) + DEVICE)
    assert found == [f"mqtt.password_file: '{gone}': file not found"]


def test_a_password_file_the_service_user_cannot_read_is_refused(tmp_path: Path):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o000)
    config = tmp_path / "site.toml"
    config.write_text(SITE + storage(tmp_path) + mqtt(password_file=secret) + DEVICE)
    command = [sys.executable, "-m", "bess_edge", "check-config", str(config)]
    if os.geteuid() == 0:
        # Root reads any file: check without the capabilities that let it (util-linux setpriv).
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout
    assert f"{config}: mqtt.password_file: '{secret}' cannot be read by this user" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (None, "is a directory; give a file"),
        ("/proc/bess-edge.db", "is under /proc, a kernel filesystem"),
        ("/sys/kernel/bess-edge.db", "is under /sys, a kernel filesystem"),
    ],
)
def test_a_storage_path_that_cannot_hold_a_database_is_refused(tmp_path: Path, where, reason):
    text = SITE + f'[storage]\npath = "{where or tmp_path}"\n' + DEVICE
    (found,) = problems(tmp_path, text)
    assert found.startswith("storage.path: ") and reason in found


def test_a_storage_path_under_a_file_is_refused(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    text = SITE + f'[storage]\npath = "{tmp_path / "afile" / "x.db"}"\n' + DEVICE
    (found,) = problems(tmp_path, text)
    assert found.startswith("storage.path: ") and "is a file, not a directory" in found


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1:9464", "is not a host name or an IP address (the port goes in 'port')"),
        ("http://localhost", "is not a host name or an IP address"),
        ("local host", "is not a host name or an IP address"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never ours
    ],
)
def test_a_bad_http_host_is_refused(tmp_path: Path, host, reason):
    text = SITE + storage(tmp_path) + f'[http]\nenabled = true\nhost = "{host}"\n' + DEVICE
    (found,) = problems(tmp_path, text)
    assert found == f"http.host: '{host}' {reason}"


def test_files_are_not_checked_for_status_and_export(tmp_path: Path):
    path = tmp_path / "site.toml"
    path.write_text(SITE + storage(tmp_path) + mqtt(password_file=tmp_path / "nope") + DEVICE)
    assert load_config(path).mqtt.password_file == tmp_path / "nope"  # runnable=False


def test_an_environment_variable_is_named_instead_of_the_file(tmp_path: Path):
    path = tmp_path / "site.toml"
    path.write_text(SITE + storage(tmp_path) + mqtt() + DEVICE)
    env = {"BESS_EDGE__MQTT__PASSWORD_FILE": str(tmp_path / "gone"), "BESS_EDGE__MQTT__PORT": "7e4"}
    result = check(path, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == [
        "environment variable BESS_EDGE__MQTT__PASSWORD_FILE: mqtt.password_file: "
        f"'{tmp_path / 'gone'}': file not found",
        "environment variable BESS_EDGE__MQTT__PORT: mqtt.port: "
        "input should be a valid integer, unable to parse string as an integer (got '7e4')",
    ]


def test_run_refuses_a_config_that_cannot_run(tmp_path: Path):
    path = tmp_path / "site.toml"
    path.write_text(SITE + f'[storage]\npath = "{tmp_path}"\n' + DEVICE)
    result = subprocess.run(
        [sys.executable, "-m", "bess_edge", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}: storage.path: '{tmp_path}' is a directory" in result.stderr


# -- the command line (issue 16 item 4) -----------------------------------------------------------


@pytest.mark.parametrize("flag", ["--config", "-c", None])
def test_check_config_takes_the_file_like_every_other_subcommand(tmp_path: Path, flag):
    path = tmp_path / "site.toml"
    path.write_text(SITE + storage(tmp_path) + DEVICE)
    result = check(path, *([flag] if flag else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")


def test_the_summary_says_when_a_device_keeps_fewer_diagnoses_than_it_polls(tmp_path: Path):
    path = tmp_path / "site.toml"
    fast = DEVICE.replace("rack-1", "rack-2") + "poll_interval_s = 0.1\n"
    path.write_text(SITE + storage(tmp_path) + DEVICE + fast)
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert "device rack-1: driver sim, every 1 s, lfp 100 Ah" in result.stdout
    assert "device rack-2: driver sim, every 0.1 s, a diagnosis every 1 s, lfp" in result.stdout


def test_a_thresholds_file_alone_is_checked_as_a_thresholds_file(tmp_path: Path):
    result = check(REPO / "config" / "thresholds-lfp.toml")
    assert result.returncode == 0, result.stderr
    assert "a thresholds file" in result.stdout and "cell-overvoltage" in result.stdout
    bad = tmp_path / "thresholds-mine.toml"
    rule = '[[thresholds]]\nname = "x"\nmetric = "soc_pct"\nbelow = 10\nclear = 5\n'
    bad.write_text(rule + rule.replace("clear = 5", "message = '{nope}'"))
    result = check(bad)
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert f"{bad}: thresholds[0]: clear (5.0) must be >= below (10.0)" in errors
    assert any(e.startswith(f"{bad}: thresholds[1].message: bad message template") for e in errors)
    assert f"{bad}: thresholds[1].name: duplicate rule name 'x' (also thresholds[0])" in errors
    assert "site" not in result.stderr


@pytest.mark.parametrize("key", ["[storage]\npath", "[mqtt]\nenabled = true\npassword_file"])
def test_a_nul_in_a_path_is_a_config_error_not_a_crash(tmp_path: Path, key):
    (found,) = problems(tmp_path, SITE + f'{key} = "x\\u0000y"\n' + DEVICE)
    assert found.endswith("a path may not contain a NUL character"), found


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ('{ cell_voltage_max_v = "3.6" }', "chemistry_overrides.cell_voltage_max_v: must be like"),
        ("{ cycle_life_ref = nan }", "chemistry_overrides.cycle_life_ref: must be finite"),
        ("{ ocv_v = [3.4, 3.2] }", "chemistry_overrides: ocv_soc_pct and ocv_v must have the same"),
        (
            "{ ocv_soc_pct = [0, 100], ocv_v = [3.4, 3.2] }",
            "chemistry_overrides: ocv_soc_pct and ocv_v must both rise strictly",
        ),
        ("{ cell_voltage_min_v = 3.7 }", "cell_voltage_min_v must be below cell_voltage_max_v"),
    ],
)
def test_chemistry_overrides_that_would_fail_in_the_poll_loop_are_refused(
    tmp_path: Path, overrides, expected
):
    text = SITE + storage(tmp_path) + DEVICE + f"chemistry_overrides = {overrides}\n"
    (found,) = problems(tmp_path, text)
    assert found.startswith("devices[0].") and expected in found, found


@pytest.mark.parametrize("prefix", ["bess/s1", "bess", "bess/s1/rack-1/alerts"])
def test_a_reply_prefix_overlapping_the_data_topics_is_refused(tmp_path: Path, prefix):
    text = SITE + storage(tmp_path) + f'[mqtt]\nreply_topic_prefix = "{prefix}/"\n' + DEVICE
    (found,) = problems(tmp_path, text)
    assert found.startswith("mqtt: reply_topic_prefix") and "overlaps the data topics" in found
    ok = SITE + storage(tmp_path) + '[mqtt]\nreply_topic_prefix = "ops/replies"\n' + DEVICE
    (tmp_path / "ok.toml").write_text(ok)
    assert load_config(tmp_path / "ok.toml").mqtt.reply_topic_prefix == "ops/replies"


@pytest.mark.parametrize("template", ["{device.nope}", "{cell[0]}", "{cell:d}", "{where:d}"])
def test_a_message_template_that_would_fail_when_the_alert_fires_is_refused(tmp_path, template):
    rule = f'[[thresholds]]\nname = "soc"\nmetric = "soc_pct"\nbelow = 10\nmessage = "{template}"\n'
    (found,) = problems(tmp_path, SITE + storage(tmp_path) + DEVICE + rule)
    assert found.startswith("thresholds[0].message: bad message template"), found
