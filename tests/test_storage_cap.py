"""A full buffer never stops the daemon: old telemetry goes, counted and alerted; alerts stay."""

from __future__ import annotations

import re
import time

from conftest import read_db, sim_device, wait_until


def test_daemon_at_its_storage_cap_keeps_running_drops_oldest_and_raises_an_alert(
    make_config, daemon, tmp_path
):
    outage = {"kind": "comms_dropout", "at_s": 0, "duration_s": 3600, "mode": "error"}
    config = make_config(
        devices=[
            # ~8 kB of cells per sample at 20 Hz: a 1 MB cap fills in about 7 seconds.
            sim_device("big", poll_interval_s=0.05, options={"cells": 1000}),
            sim_device("dead", options={"faults": [outage]}),
        ],
        storage={"max_size_mb": 1.0},
    )
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    wait_until(lambda: read_db(db, "SELECT 1 FROM alerts WHERE rule = 'comms_lost'"), timeout=20)
    wait_until(
        lambda: read_db(db, "SELECT 1 FROM alerts WHERE rule = 'buffer_dropping'"), timeout=60
    )
    dropped = read_db(db, "SELECT value FROM counters WHERE name = 'telemetry_dropped'")[0][0]
    assert dropped > 0
    seqs = [r[0] for r in read_db(db, "SELECT seq FROM samples WHERE device = 'big' ORDER BY seq")]
    assert seqs[0] > 1  # the oldest went first
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # and only the oldest
    # Alerts are never dropped, and the daemon is still polling.
    assert read_db(db, "SELECT count(*) FROM alerts WHERE rule = 'comms_lost'")[0][0] == 1
    last = seqs[-1]
    wait_until(
        lambda: read_db(db, "SELECT max(seq) FROM samples WHERE device = 'big'")[0][0] > last + 10
    )
    assert db.stat().st_size < 1.3 * 1024 * 1024
    assert '"storage cap reached: dropped unsent telemetry"' in proc.log()
    assert proc.stop() == 0


def test_disk_used_stays_within_the_cap_wal_included_and_the_alert_names_both_kinds(
    make_config, daemon, tmp_path
):
    cap_bytes = 2 * 1024 * 1024
    config = make_config(
        # ~8 kB of cells per sample at 20 Hz, with a diagnosis each: the cap is reached in seconds.
        devices=[sim_device("big", poll_interval_s=0.05, options={"cells": 1000})],
        storage={"max_size_mb": 2.0},
    )
    db = tmp_path / "bess-edge.db"
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]

    def disk_used() -> int:
        return sum(f.stat().st_size for f in files if f.exists())

    proc = daemon(config)
    largest = 0
    deadline = time.monotonic() + 90
    while not read_db(db, "SELECT 1 FROM alerts WHERE rule = 'buffer_dropping'"):
        assert time.monotonic() < deadline, "the cap was never reached"
        largest = max(largest, disk_used())
        time.sleep(0.02)
    settle = time.monotonic() + 5  # and while it keeps dropping at the cap
    while time.monotonic() < settle:
        largest = max(largest, disk_used())
        time.sleep(0.02)
    assert largest <= cap_bytes, f"{largest / 1e6:.2f} MB on disk for a 2 MiB cap"
    (message,) = read_db(db, "SELECT message FROM alerts WHERE rule = 'buffer_dropping'")[0]
    counts = re.fullmatch(
        r"storage full: (\d+) unsent samples and (\d+) unsent diagnosis rows dropped", message
    )
    assert counts, message
    assert int(counts[1]) > 0 and int(counts[2]) > 0
    assert proc.stop() == 0
