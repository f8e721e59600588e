"""A real daemon on a sim device plus a real `bess-edge api` process, and keys of each role."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import DaemonProcess, free_port, render_config, sim_device, wait_until

# Raised at the first poll (a 16-cell LFP pack is ~52 V) and never cleared: an alert to ack.
PACK_RULE = {"name": "pack-high", "metric": "pack_voltage_v", "above": 1.0, "severity": "info"}
ROLES = ("viewer", "operator", "admin")


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bess_edge", *args], capture_output=True, text=True, timeout=60
    )


@dataclass
class Site:
    workdir: Path
    config: Path
    db: Path
    url: str
    daemon: DaemonProcess
    api: subprocess.Popen[bytes]
    api_log: Path
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, role: str | None = None, key: str | None = None) -> httpx.Client:
        key = key or (self.keys[role] if role else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=False)

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        with self.client(role) as c:
            r = c.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        if self.api.poll() is None:
            self.api.terminate()
            self.api.wait(15)
        if self.daemon.alive():
            self.daemon.stop()


def start_site(
    workdir: Path,
    devices: list[dict[str, Any]] | None = None,
    extra_rules: list[dict[str, Any]] | None = None,
    api_options: dict[str, Any] | None = None,
) -> Site:
    port = free_port()
    config = workdir / "bess-edge.toml"
    config.write_text(
        render_config({
            "site": {"id": "test-site"},
            "storage": {"path": str(workdir / "bess-edge.db")},
            "logging": {"format": "json", "level": "info"},
            "api": {"port": port, **(api_options or {})},
            "devices": devices or [sim_device(poll_interval_s=0.2)],
            "thresholds": [PACK_RULE, *(extra_rules or [])],
        })
    )  # fmt: skip
    db = workdir / "bess-edge.db"
    daemon = DaemonProcess(config, workdir / "daemon.log").start()
    wait_until(lambda: _has_sample(db), timeout=60)
    keys = {}
    for role in ROLES:
        out = bess_edge("api-key", "create", role[:2] + "-key", "--role", role, "--config",
                        str(config))  # fmt: skip
        assert out.returncode == 0, out.stderr
        keys[role] = out.stdout.strip().splitlines()[-1]
    api_log = workdir / "api.log"
    api = subprocess.Popen(
        [sys.executable, "-m", "bess_edge", "api", "--config", str(config)],
        stdout=api_log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"{'https' if (api_options or {}).get('tls_cert_file') else 'http'}://127.0.0.1:{port}"
    site = Site(workdir, config, db, url, daemon, api, api_log, keys)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=2, verify=False).status_code == 200:
                return site
        except httpx.HTTPError:
            pass
        if api.poll() is not None or time.monotonic() > deadline:
            site.stop()
            raise AssertionError(f"api did not start:\n{api_log.read_text()[-3000:]}")
        time.sleep(0.1)


def _has_sample(db: Path) -> bool:
    from conftest import read_db

    return bool(read_db(db, "SELECT 1 FROM samples LIMIT 1"))
