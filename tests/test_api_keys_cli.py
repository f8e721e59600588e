"""`bess-edge api-key`: the key once on the last line, hashed on disk, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", *args], capture_output=True, text=True, timeout=60
    )


def test_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(
    make_config, tmp_path
):
    config = str(make_config())
    out = bess_edge("api-key", "create", "alice", "--role", "operator", "--config", config)
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[-1]
    assert key.startswith("bek_") and len(key) == 47 and " " not in key
    stored = (tmp_path / "api-keys.json").read_text()
    assert key not in stored
    (entry,) = json.loads(stored)["keys"]
    assert (entry["name"], entry["role"], entry["key_hint"]) == ("alice", "operator", key[-4:])
    listed = bess_edge("api-key", "list", "--config", config)
    assert listed.stdout.startswith("alice\toperator\t...") and key not in listed.stdout


def test_refusals_are_one_clear_line_and_change_nothing(make_config, tmp_path):
    config = str(make_config())
    assert bess_edge("api-key", "create", "alice", "--config", config).returncode == 0
    before = (tmp_path / "api-keys.json").read_text()
    dup = bess_edge("api-key", "create", "alice", "--config", config)
    assert dup.returncode == 1
    assert dup.stderr == "a key named 'alice' exists; revoke it first or pick another\n"
    bad = bess_edge("api-key", "create", "bad name!", "--config", config)
    assert bad.returncode == 1
    assert bad.stderr.startswith("invalid key name 'bad name!': use 1 to 64 letters")
    assert len(bad.stderr.splitlines()) == 1
    gone = bess_edge("api-key", "revoke", "bob", "--config", config)
    assert (gone.returncode, gone.stderr) == (1, "no key named 'bob'\n")
    role = bess_edge("api-key", "create", "carol", "--role", "root", "--config", config)
    assert role.returncode == 2 and "invalid choice: 'root'" in role.stderr
    assert (tmp_path / "api-keys.json").read_text() == before
