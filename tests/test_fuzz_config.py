"""Property-based fuzzing of the config loader.

Whatever a config holds (any TOML values where sections, devices, rules and driver options
belong, any text as a file, any environment override), loading it gives Settings or a
ConfigError whose every line names a key path and a reason: never another exception, never a
secret's value, and never one mistake hiding another.
"""

from __future__ import annotations

import datetime as dt
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bess_edge.config import ConfigError, Settings, load_config
from bess_edge.config_check import check_config

pytestmark = pytest.mark.fuzz

SECRET = "Zq7-never-shown"
SECRET_NUMBER = 9876543210123
KEYS = {
    "": ["site", "storage", "mqtt", "logging", "http", "devices", "thresholds",
         "include_thresholds", "api", "sites", "device"],
    "site": ["id", "name", "idd"],
    "storage": ["path", "max_size_mb", "retention_days", "synchronous"],
    "mqtt": ["enabled", "host", "port", "topic_prefix", "password", "password_file", "tls",
             "username", "protocol", "encoding", "max_inflight", "reply_topic_prefix"],
    "tls": ["enabled", "ca_file", "cert_file", "key_file", "insecure_skip_verify"],
    "http": ["enabled", "host", "port"],
    "device": ["id", "driver", "enabled", "poll_interval_s", "timeout_s", "chemistry",
               "capacity_ah", "chemistry_overrides", "options", "poll_intervall_s"],
    "options": ["cells", "cels", "seed", "profile", "current_a", "faults", "host", "port",
                "interface", "channel", "dbc", "signals", "map", "unit", "file"],
    "rule": ["name", "metric", "above", "below", "clear", "for_s", "severity", "devices",
             "message", "action"],
}  # fmt: skip
TEXT = st.text(alphabet=string.printable + "éΩ\x00", max_size=24)
SCALAR = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(
        [
            "sim",
            "can",
            "modbus",
            "lfp",
            "nmc",
            "cmd",
            "rack-1",
            "",
            "/proc/x",
            "/dev/null",
            ".",
            "127.0.0.1:80",
            "{device}",
            "{nope}",
            "soc_pct",
        ]
    ),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
)
ANY = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def table(kind: str, nested: dict[str, st.SearchStrategy[Any]] | None = None) -> Any:
    """A table of known and near-miss keys (and the odd unknown one) with values of any type."""
    nested = nested or {}
    keys = st.sampled_from(KEYS[kind]) | TEXT
    return st.dictionaries(
        keys, st.deferred(lambda: ANY), max_size=len(KEYS[kind]) // 2 + 1
    ).flatmap(
        lambda d: st.fixed_dictionaries(
            {k: nested[k] | ANY if k in nested else st.just(v) for k, v in d.items()}
        )
    )


DEVICE = table("device", {"options": table("options")})
RULE = table("rule")
CONFIG = table(
    "",
    {
        "site": table("site"),
        "storage": table("storage"),
        "mqtt": table("mqtt", {"tls": table("tls")}),
        "http": table("http"),
        "devices": st.lists(DEVICE, max_size=3),
        "thresholds": st.lists(RULE, max_size=3),
    },
)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz-config") / "site.toml"


def load(path: Path, raw: dict[str, Any]) -> Settings | ConfigError:
    try:
        return check_config(path, raw, runnable=True)
    except ConfigError as exc:
        return exc


def check_error(error: ConfigError) -> None:
    lines = error.lines()
    assert lines
    for problem in error.problems:
        assert problem.reason.strip()
    text = "\n".join(lines)
    assert SECRET not in text and str(SECRET_NUMBER) not in text


@given(raw=CONFIG)
def test_any_tables_give_settings_or_a_config_error(config_path: Path, raw: dict[str, Any]):
    result = load(config_path, raw)
    if isinstance(result, ConfigError):
        check_error(result)


@given(raw=CONFIG, secret=st.sampled_from([SECRET, SECRET_NUMBER, [SECRET], {"x": SECRET},
                                           -SECRET_NUMBER * 1.5, [SECRET_NUMBER]]))  # fmt: skip
def test_a_secret_is_never_shown(config_path: Path, raw: dict[str, Any], secret: Any):
    mqtt = raw.get("mqtt") if isinstance(raw.get("mqtt"), dict) else {}
    raw = {**raw, "mqtt": {**mqtt, "password": secret}}
    result = load(config_path, raw)
    if isinstance(result, ConfigError):
        check_error(result)
    else:
        assert SECRET not in repr(result) and SECRET not in result.summary()


# A catalogue of single mistakes in one device and the key path each must be reported at.
MISTAKES = [
    ({"driver": "simulator"}, "driver"),
    ({"chemistry": "lifepo4"}, "chemistry"),
    ({"capacity_ah": "280"}, "capacity_ah"),
    ({"poll_intervall_s": 1}, "poll_intervall_s"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"options": {"cels": 16}}, "options.cels"),
    ({"options": {"cells": 0}}, "options.cells"),
    ({"id": "cmd"}, "id"),
    ({"id": "rack 1"}, "id"),
    ({"enabled": "yes"}, "enabled"),
]


@given(
    picks=st.lists(st.sampled_from(range(len(MISTAKES))), min_size=1, max_size=5),
    top=st.sampled_from([{}, {"colour": 1}, {"mqtt": {"tls": True}}, {"site": {"id": "a b"}}]),
)
def test_no_mistake_hides_another(config_path: Path, picks: list[int], top: dict[str, Any]):
    devices, expected = [], set()
    for i, pick in enumerate(picks):
        change, key = MISTAKES[pick]
        devices.append({"id": f"rack-{i}", "driver": "sim", **change})
        expected.add(f"devices[{i}].{key}")
    raw = {"site": {"id": "s"}, "storage": {"path": str(config_path.with_suffix(".db"))},
           "devices": devices, **top}  # fmt: skip
    result = load(config_path, raw)
    assert isinstance(result, ConfigError)
    reported = {p.key for p in result.problems}
    assert expected <= reported, (expected - reported, result.lines())
    if top:
        assert reported - expected  # the top-level mistake as well


@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_file_text_gives_settings_or_a_config_error(config_path: Path, text: str):
    config_path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(config_path, runnable=True)
    except ConfigError as exc:
        check_error(exc)


ENV_KEYS = ["MQTT__PORT", "MQTT__PASSWORD", "MQTT__PASSWORD_FILE", "MQTT__ENABLED", "MQTT__TLS",
            "STORAGE__PATH", "STORAGE__MAX_SIZE_MB", "HTTP__HOST", "SITE__ID",
            "DEVICES"]  # fmt: skip


@given(
    env=st.dictionaries(
        st.sampled_from(ENV_KEYS),
        st.text(alphabet=string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=30)
        | st.sampled_from(['[{"id": "x", "driver": "sim"}]', "{", "true", "70000", "/proc"]),
        max_size=4,
    )
)
def test_any_environment_gives_settings_or_an_error_naming_the_variable(
    config_path: Path, env: dict[str, str]
):
    raw = {"site": {"id": "s"}, "storage": {"path": str(config_path.with_suffix(".db"))},
           "devices": [{"id": "rack-1", "driver": "sim"}]}  # fmt: skip
    variables = {f"BESS_EDGE__{k}": v.replace("\x00", "") for k, v in env.items()}
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        result = load(config_path, raw)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if isinstance(result, ConfigError):
        check_error(result)
        for line in result.lines():
            assert line.startswith(("environment", str(config_path))), line


def test_the_property_catalogue_is_itself_right(config_path: Path):
    """Each catalogued mistake alone is refused at its key path (so the property above means
    something), and the clean base config loads."""
    base = {"site": {"id": "s"}, "storage": {"path": str(config_path.with_suffix(".db"))}}
    assert not isinstance(load(config_path, {**base, "devices": [{"id": "a", "driver": "sim"}]}),
                          ConfigError)  # fmt: skip
    for change, key in MISTAKES:
        result = load(config_path, {**base, "devices": [{"id": "a", "driver": "sim", **change}]})
        assert isinstance(result, ConfigError) and f"devices[0].{key}" in {
            p.key for p in result.problems
        }, (change, result)
