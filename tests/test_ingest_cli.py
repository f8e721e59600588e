"""`bess-edge ingest` as an administrator uses it: schema, sites, API keys, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
from test_ingest_e2e import cloud_config

from bess_edge.cloud.keys import PgKeyStore
from bess_edge.cloud.schema import MIGRATIONS


def _ingest(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", "ingest", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_migrate_add_site_and_a_user_whose_key_works_once_shown(pg_url, tmp_path):
    config = cloud_config(tmp_path / "cloud.toml", pg_url, 1883)
    migrated = _ingest(config, "--migrate")
    assert migrated.returncode == 0
    assert f"schema version {len(MIGRATIONS)}\n" in migrated.stdout
    assert _ingest(config, "--add-site", "site-a", "--name", "Site A").returncode == 0
    added = _ingest(config, "--add-user", "ops", "--role", "operator")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    info = PgKeyStore(pg_url).verify(key)
    assert info is not None and (info.name, info.role) == ("ops", "operator")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT site, name FROM sites").fetchall() == [("site-a", "Site A")]
        stored = conn.execute("SELECT key_sha256 FROM users").fetchone()
    assert stored is not None and key not in stored[0]  # only the hash is kept
    again = _ingest(config, "--add-user", "ops")
    assert again.returncode == 2 and "a key named 'ops' exists" in again.stderr


def test_a_bad_cloud_toml_is_refused_with_the_key_path(tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text('[ingest]\ndatabase_url = "x"\nbatch_max_messages = 0\ngroop = "a"\n')
    result = _ingest(config)
    assert result.returncode == 2
    assert "ingest.batch_max_messages: must be >= 1" in result.stderr
    assert "ingest.groop: unknown key" in result.stderr
    missing = tmp_path / "empty.toml"
    missing.write_text("[mqtt]\n")
    assert "ingest: required key is missing" in _ingest(missing).stderr
