"""API latency on a 1,000-cell rack with 24 h of 1 Hz data, and the daemon's poll timing under
10 dashboard clients, in one run.

1. Fills a store with HOURS of 1 Hz samples of a CELLS-cell rack (through Store.commit_cycles,
   the daemon's write path; diagnoses hold the scalar estimates, without per-cell arrays).
2. Starts the real daemon on that file (a simulated rack of the same size, polled every 1 s)
   and the real `bess-edge api` process.
3. Latency p50/p99 over REPS sequential requests: the overview (GET /api/v1/devices), the 24 h
   trend downsampled to 2,000 points (one field, as the dashboard asks, and all nine), against
   a raw SQLite query fetching the same 24 h of rows (what a client without server-side
   downsampling would do).
4. The daemon's poll interval (differences of consecutive sample timestamps) over WINDOW_S
   without clients, then with CLIENTS dashboard clients each loading a device page every 2 s
   (overview, 24 h trend, cells, active alerts).

Usage: nice -n 10 python benchmarks/api_bench.py [--cells 1000] [--hours 24] [--reps 60]
       [--window-s 60] [--clients 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bess_edge.model import Reading
from bess_edge.storage.keys import FileKeyStore
from bess_edge.storage.models import DIAGNOSIS_FIELDS
from bess_edge.store import Cycle, Store

DEVICE = "rack-1"
TREND_POINTS = 2000


def fill(path: Path, cells: int, sensors: int, hours: float) -> tuple[int, int]:
    """HOURS of 1 Hz samples ending now; returns (first, last) ts_ms."""
    store = Store(path, max_size_mb=16_384, synchronous="normal")
    rng = np.random.default_rng(7)
    count = int(hours * 3600)
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - count * 1000
    base_v = 3.3 + 0.01 * rng.standard_normal(cells)
    batch = 600
    for first in range(0, count, batch):
        cycles = []
        for i in range(first, min(first + batch, count)):
            ts = start_ms + i * 1000
            current = 80.0 * math.sin(2 * math.pi * i / 86_400) + rng.normal(0, 2)
            volts = base_v + 0.0005 * current + 0.001 * rng.standard_normal(cells)
            temps = 25 + 3 * math.sin(2 * math.pi * i / 43_200) + 0.2 * rng.standard_normal(sensors)
            reading = Reading(DEVICE, ts_ms=ts, pack_voltage_v=float(volts.sum()),
                              pack_current_a=current, cell_voltage_v=volts,
                              cell_temperature_c=temps)  # fmt: skip
            diagnosis = {name: float(50 + 10 * math.sin(i / 5000)) for name in DIAGNOSIS_FIELDS}
            cycles.append(Cycle(reading=reading, diagnosis=diagnosis))
        store.commit_cycles(cycles)
    store.close()
    return start_ms, start_ms + (count - 1) * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(workdir: Path, db: Path, cells: int, sensors: int, port: int) -> Path:
    config = workdir / "bench.toml"
    config.write_text(f"""
[site]
id = "bench"
[storage]
path = "{db}"
max_size_mb = 16384
synchronous = "normal"
[logging]
format = "json"
level = "warning"
[api]
port = {port}
[[devices]]
id = "{DEVICE}"
driver = "sim"
poll_interval_s = 1.0
timeout_s = 0.8
chemistry = "lfp"
capacity_ah = 280
[devices.options]
cells = {cells}
temperature_sensors = {sensors}
profile = "regulation"
seed = 3
""")
    return config


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bess_edge", *args],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip


def percentiles(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(p99, 2), "max_ms": round(ordered[-1], 2)}  # fmt: skip


def time_requests(client: httpx.Client, path: str, params: dict, reps: int) -> dict[str, float]:
    """Each repetition moves the window by 1 ms: a new query, never the API's shared answer."""
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        if "until_ms" in params:
            params = {**params, "since_ms": params["since_ms"] + 1,
                      "until_ms": params["until_ms"] + 1}  # fmt: skip
        r = client.get(path, params=params)
        r.raise_for_status()
        r.json()
        out.append((time.perf_counter() - start) * 1000)
    return percentiles(out)


def time_raw(db: Path, columns: str, since: int, until: int, reps: int) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        rows = conn.execute(
            f"SELECT ts_ms, {columns} FROM samples WHERE device = ? AND ts_ms >= ? "
            "AND ts_ms < ? ORDER BY ts_ms",
            (DEVICE, since, until),
        ).fetchall()
        out.append((time.perf_counter() - start) * 1000)
    conn.close()
    return {**percentiles(out), "rows": len(rows)}


def poll_intervals(db: Path, since_ms: int, until_ms: int) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ts = [r[0] for r in conn.execute(
        "SELECT ts_ms FROM samples WHERE device = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY seq",
        (DEVICE, since_ms, until_ms),
    )]  # fmt: skip
    conn.close()
    return percentiles([float(b - a) for a, b in itertools.pairwise(ts)])


def dashboard_client(url: str, key: str, stop: threading.Event, latencies: list[float]) -> None:
    """What an open device page on the 24 h range asks every 2 s (bess_edge/api/static/app.js)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        while not stop.is_set():
            start = time.perf_counter()
            step = math.ceil(86_400_000 / 1000)
            until = math.ceil((time.time() * 1000 + 1) / step) * step
            window: dict[str, int | str] = {"since_ms": until - 86_400_000, "until_ms": until}
            trend: dict[str, int | str] = {**window, "max_points": 1000, "fields": "pack_voltage_v"}
            soc: dict[str, int | str] = {**window, "max_points": 300, "fields": "soc_pct"}
            c.get(f"/api/v1/devices/{DEVICE}").raise_for_status()
            c.get(f"/api/v1/devices/{DEVICE}/readings", params=trend).raise_for_status()
            c.get(f"/api/v1/devices/{DEVICE}/diagnoses", params=soc).raise_for_status()
            c.get(f"/api/v1/devices/{DEVICE}/cells").raise_for_status()
            c.get("/api/v1/alerts", params={"state": "active", "limit": 1000}).raise_for_status()
            elapsed = time.perf_counter() - start
            latencies.append(elapsed * 1000)
            stop.wait(max(0.0, 2.0 - elapsed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, object] = {"cells": args.cells, "hours": args.hours}
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        work = Path(tmp)
        db = work / "bench.db"
        t0 = time.perf_counter()
        _, last_ms = fill(db, args.cells, args.sensors, args.hours)
        results["fill_s"] = round(time.perf_counter() - t0, 1)
        results["db_mb"] = round(db.stat().st_size / 1e6, 1)
        print(f"filled {args.hours:g} h x {args.cells} cells in {results['fill_s']} s "
              f"({results['db_mb']} MB)", flush=True)  # fmt: skip
        port = free_port()
        config = write_config(work, db, args.cells, args.sensors, port)
        key = FileKeyStore(work / "api-keys.json").create("bench", "viewer")
        daemon = spawn(["run", "--config", str(config)], work / "daemon.log")
        api = spawn(["api", "--config", str(config)], work / "api.log")
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit((work / "api.log").read_text()[-2000:])
                time.sleep(0.2)
            since, until = last_ms + 1 - 86_400_000, last_ms + 1
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60) as c:  # fmt: skip
                trend = f"/api/v1/devices/{DEVICE}/readings"
                window = {"since_ms": since, "until_ms": until, "max_points": TREND_POINTS}
                results["overview"] = time_requests(c, "/api/v1/devices", {}, args.reps)
                results["trend_24h_1_field"] = time_requests(
                    c, trend, {**window, "fields": "pack_voltage_v"}, args.reps)  # fmt: skip
                results["trend_24h_all_fields"] = time_requests(c, trend, window, args.reps)
            results["raw_sqlite_24h_1_field"] = time_raw(db, "pack_voltage_v", since, until,
                                                         args.reps)  # fmt: skip
            results["raw_sqlite_24h_all_fields"] = time_raw(
                db, "pack_voltage_v, pack_current_a, pack_power_w, bms_soc_pct, bms_soh_pct, "
                "cell_voltage_min_v, cell_voltage_max_v, cell_temperature_min_c, "
                "cell_temperature_max_c", since, until, args.reps)  # fmt: skip
            for name in ("overview", "trend_24h_1_field", "trend_24h_all_fields",
                         "raw_sqlite_24h_1_field", "raw_sqlite_24h_all_fields"):  # fmt: skip
                print(f"{name:28s} {results[name]}", flush=True)

            quiet_start = int(time.time() * 1000)
            time.sleep(args.window_s)
            quiet_end = int(time.time() * 1000)
            stop, latencies = threading.Event(), list[float]()
            threads = [threading.Thread(target=dashboard_client, args=(url, key, stop, latencies))
                       for _ in range(args.clients)]  # fmt: skip
            for t in threads:
                t.start()
            time.sleep(args.window_s)
            busy_end = int(time.time() * 1000)
            stop.set()
            for t in threads:
                t.join(60)
            time.sleep(1.5)  # let the last polls commit
            results["poll_interval_no_clients"] = poll_intervals(db, quiet_start, quiet_end)
            results[f"poll_interval_{args.clients}_clients"] = poll_intervals(
                db, quiet_end, busy_end)  # fmt: skip
            results["dashboard_page_load"] = percentiles(latencies)
            for name in ("poll_interval_no_clients", f"poll_interval_{args.clients}_clients",
                         "dashboard_page_load"):  # fmt: skip
                print(f"{name:28s} {results[name]}", flush=True)
        finally:
            for proc in (api, daemon):
                proc.terminate()
                proc.wait(30)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
