"""The daemon and a damaged or shared SQLite file: it says what happened and keeps collecting."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import free_port, read_db, sim_device, wait_until
from test_service_http import health, http_on

from bess_edge.store import Store

PAGE = 4096


def _log_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_second_daemon_on_the_same_store_refuses_to_start_naming_the_first(
    make_config, daemon, tmp_path
):
    config = make_config()
    first = daemon(config)
    first.wait_for_log('"msg": "bess-edge running"')
    second = daemon(config)
    assert second.proc is not None and first.proc is not None
    assert second.proc.wait(30) == 2
    refusal = [r for r in _log_records(second.log()) if r["level"] == "error"]
    assert len(refusal) == 1, second.log()
    assert f"pid {first.proc.pid}" in refusal[0]["msg"]
    assert str(tmp_path / "bess-edge.db") in refusal[0]["msg"]
    assert "Traceback" not in second.log()
    # The first one never noticed.
    db = tmp_path / "bess-edge.db"
    count = read_db(db, "SELECT count(*) FROM samples")[0][0]
    wait_until(lambda: read_db(db, "SELECT count(*) FROM samples")[0][0] > count + 5)
    assert first.stop() == 0
    assert "UNIQUE constraint" not in first.log()
    # Its lock went with it: the next start is accepted.
    third = daemon(config)
    third.wait_for_log('"msg": "bess-edge running"')
    assert third.stop() == 0


def _store_with_history(db: Path) -> None:
    """A store that has run a while: samples, alerts, device and estimator state."""
    from test_sync_overload import _alert  # one raised alert

    store = Store(db, synchronous="normal")
    for alert_id in range(1, 200):
        store.commit_cycles([_alert(alert_id)])
    store.close()


def _garbage_over_pages(db: Path, first_page: int) -> None:
    """What a dying SD card leaves: pages after ``first_page`` overwritten with noise."""
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(first_page * PAGE)
        f.write(os.urandom(size - first_page * PAGE))


@pytest.mark.parametrize("damage", ["not_a_database", "damaged_pages"])
def test_a_corrupt_store_at_start_is_moved_aside_and_a_fresh_one_raises_an_alert(
    make_config, daemon, tmp_path, damage
):
    db = tmp_path / "bess-edge.db"
    if damage == "not_a_database":
        db.write_bytes(b"this was a database once\n" * 4000)
    else:
        _store_with_history(db)
        _garbage_over_pages(db, first_page=1)  # the schema page survives, the tables do not
    damaged = db.read_bytes()
    proc = daemon(make_config())
    wait_until(lambda: list(tmp_path.glob("bess-edge.db.corrupt-*")), timeout=30)
    sql = "SELECT state, severity, message FROM alerts WHERE rule = 'store_corrupt'"
    alert = wait_until(lambda: read_db(db, sql), timeout=30)
    assert alert[0][:2] == ("active", "critical")
    moved = list(tmp_path.glob("bess-edge.db.corrupt-*Z"))
    assert len(moved) == 1 and moved[0].read_bytes() == damaged
    assert moved[0].name in alert[0][2]
    wait_until(lambda: read_db(db, "SELECT count(*) FROM samples")[0][0] >= 3)  # collecting
    errors = [r for r in _log_records(proc.log()) if r["level"] == "error"]
    assert len(errors) == 1, proc.log()
    assert str(db) in errors[0]["msg"] and moved[0].name in errors[0]["msg"]
    assert "Traceback" not in proc.log()
    assert proc.stop() == 0


def test_corruption_while_running_turns_health_unhealthy(make_config, daemon, tmp_path):
    port = free_port()
    db = tmp_path / "bess-edge.db"
    config = make_config(
        devices=[sim_device(poll_interval_s=0.05, options={"cells": 1000})],
        http=http_on(port),
        storage={"synchronous": "normal"},
    )
    proc = daemon(config)
    proc.wait_for_log('"msg": "ready"')
    # Until the WAL has been checkpointed into the file at least once: damage in pages only
    # the WAL holds would be overwritten by the next checkpoint.
    wait_until(lambda: db.stat().st_size > 2_000_000, timeout=60)
    assert health(port)[0] == 200
    _garbage_over_pages(db, first_page=1)
    # The daemon's page cache still holds the pages it uses. Any write by another connection
    # (here a header-only one) makes it read them again, as a cache eviction would: from the
    # damaged file.
    conn = sqlite3.connect(db, timeout=30)
    conn.execute(f"PRAGMA user_version = {conn.execute('PRAGMA user_version').fetchone()[0]}")
    conn.close()

    def writes_reported() -> bool:
        status, body = health(port)
        # Said as what it means: nothing is being written (reads may well still work).
        problems = body["problems"]
        return status == 503 and any("corrupt" in p and "not written" in p for p in problems)

    wait_until(writes_reported, timeout=60)
    time.sleep(2.0)  # dozens of failed commits more
    errors = [r["msg"] for r in _log_records(proc.log()) if r["level"] == "error"]
    assert errors.count(next(m for m in errors if m.startswith("store file corrupt"))) == 1
    assert not [m for m in errors if m.startswith("store write failed")]  # not one per poll
    assert proc.alive()
    assert proc.stop() == 0
