"""Soak: the daemon for many minutes with a flaky device and a broker that keeps dying.

Kept out of the default run (``scripts/test.sh -m slow``); ``BESS_EDGE_SOAK_S`` sets the length
(default 600 s). What a week on site would show early: memory that only grows, a poll task that
stalls, a seq lost across many outages, a database that is no longer consistent.
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from conftest import free_port, sim_device, wait_until
from test_service_http import scrape
from test_sync_mqtt import Cloud, committed_seqs, mqtt_section, outbox_rows, received

SOAK_S = float(os.environ.get("BESS_EDGE_SOAK_S", "600"))
OUTAGE_EVERY_S, OUTAGE_S = 45.0, 6.0
WARM_UP_S = 60.0  # imports, SQLite page cache and numpy buffers settle in the first minute
RSS_GROWTH_LIMIT_B = 25e6

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_S + 600)]


def rss_bytes(port: int) -> float:
    return scrape(port)[("process_resident_memory_bytes", ())]


def test_soak_flaky_device_and_dying_broker_lose_nothing_and_memory_levels_off(
    make_config, daemon, mosquitto, tmp_path
):
    # A drop-out (a hung read) every simulated 40 s, for 5 s, on one of four devices.
    dropouts = [
        {"kind": "comms_dropout", "at_s": t, "duration_s": 5.0, "mode": "hang"}
        for t in range(20, int(SOAK_S) + 60, 40)
    ]
    devices = [sim_device(f"rack-{i}", poll_interval_s=0.1, options={"seed": i}) for i in (1, 2, 3)]
    devices.append(sim_device("rack-flaky", poll_interval_s=0.1, timeout_s=0.5,
                              options={"seed": 4, "faults": dropouts}))  # fmt: skip
    http_port = free_port()
    storage = {"path": str(tmp_path / "bess-edge.db"), "synchronous": "normal"}
    http = {"enabled": True, "host": "127.0.0.1", "port": http_port}
    config = make_config(devices, storage=storage, mqtt=mqtt_section(mosquitto.port), http=http)
    db = tmp_path / "bess-edge.db"
    rss: list[tuple[float, float]] = []
    with Cloud(config) as cloud:
        proc = daemon(config)
        proc.wait_for_log('"msg": "ready"')
        start = time.monotonic()
        next_outage = start + OUTAGE_EVERY_S
        outages = 0
        while (elapsed := time.monotonic() - start) < SOAK_S:
            if not rss or elapsed - rss[-1][0] >= 15:
                rss.append((elapsed, rss_bytes(http_port)))
            if time.monotonic() >= next_outage:
                mosquitto.kill()
                time.sleep(OUTAGE_S)
                mosquitto.start()
                outages += 1
                next_outage = time.monotonic() + OUTAGE_EVERY_S
            assert proc.alive()
            time.sleep(1)
        healthy_polls = {
            d: scrape(http_port)[("bess_edge_polls_total", (("device", d),))]
            for d in ("rack-1", "rack-flaky")
        }
        assert proc.stop() == 0
        idle = make_config([dict(d, enabled=False) for d in devices], name="drain.toml",
                           storage=storage, mqtt=mqtt_section(mosquitto.port))  # fmt: skip
        drain = daemon(idle)
        wait_until(cloud.synced, timeout=180, interval=0.5)
        summary = cloud.summary
        got = received(cloud)
        assert drain.alive()
        assert drain.stop() == 0
    expected = committed_seqs(db)
    assert {k: got.get(k, set()) for k in expected} == expected
    assert summary.invalid == 0 and summary.gap_seqs_open == 0
    assert outbox_rows(db) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # A healthy device kept its 10 Hz schedule (within 10 %) beside the hanging one.
    assert healthy_polls["rack-1"] >= 0.9 * SOAK_S / 0.1
    settled = [b for t, b in rss if t >= WARM_UP_S]
    growth = settled[-1] - settled[0] if len(settled) >= 2 else 0.0
    print(
        f"\nsoak {SOAK_S:.0f} s, {outages} broker outages: {summary.items} items received, "
        f"{summary.duplicates} duplicates, gaps repaired {summary.gap_seqs_repaired}; polls "
        f"rack-1 {healthy_polls['rack-1']:.0f}, rack-flaky {healthy_polls['rack-flaky']:.0f}; "
        f"RSS {rss[0][1] / 1e6:.1f} MB at start, {settled[0] / 1e6:.1f} MB after warm-up, "
        f"{rss[-1][1] / 1e6:.1f} MB at the end"
    )
    assert len(settled) >= 2, "soak too short to measure memory growth"
    assert growth < RSS_GROWTH_LIMIT_B, f"RSS grew {growth / 1e6:.1f} MB after warm-up"
