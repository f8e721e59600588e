"""The SQLite buffer on a real file: round trips, sequence numbers, the size cap, retention."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bess_edge.model import Quality, Reading
from bess_edge.store import AlertTransition, Cycle, Store, StoreFull


def rack_reading(
    device: str = "rack-1", cells: int = 16, ts_ms: int = 1_700_000_000_000
) -> Reading:
    rng = np.random.default_rng(ts_ms)
    return Reading(
        device_id=device,
        ts_ms=ts_ms,
        pack_voltage_v=3.3 * cells,
        pack_current_a=-12.5,
        bms_soc_pct=55.0,
        cell_voltage_v=3.3 + 0.01 * rng.standard_normal(cells),
        cell_temperature_c=25 + rng.standard_normal(cells),
    )


def test_a_cycle_round_trips_with_cells_in_one_row(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    reading = rack_reading(cells=1000)
    reading.flag(Quality.STALE, "pack_current_a older than 5 s")
    store.commit_cycle(Cycle(reading=reading, diagnosis={"soc_pct": 54.2, "weak_cells": [3]}))
    (row,) = list(store.samples("rack-1"))
    assert row["seq"] == 1
    assert row["pack_voltage_v"] == pytest.approx(3300.0)
    assert row["pack_current_a"] == -12.5
    assert math.isnan(reading.bms_soh_pct) and row["bms_soh_pct"] is None
    np.testing.assert_allclose(row["cell_voltage_v"], reading.cell_voltage_v, atol=1e-4)
    assert row["quality"] == Quality.STALE
    assert row["quality_notes"] == ["pack_current_a older than 5 s"]
    assert store.latest_diagnosis("rack-1") == {"soc_pct": 54.2, "weak_cells": [3]}
    assert store.outbox_depth() == {"telemetry": 1, "diagnostics": 1}


def test_sequence_numbers_are_per_device_and_stream_and_survive_reopening(tmp_path: Path):
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit_cycles([Cycle(reading=rack_reading("a")), Cycle(reading=rack_reading("b"))])
    store.commit_cycle(Cycle(reading=rack_reading("a"), diagnosis={}))
    store.close()
    store = Store(path)
    result = store.commit_cycle(Cycle(reading=rack_reading("a")))
    assert result.sample_seqs == [3]
    assert [r["seq"] for r in store.samples("b")] == [1]
    assert store.conn.execute(
        "SELECT next_seq FROM seqs WHERE device='a' AND stream='diagnostics'"
    ).fetchone() == (2,)


def test_a_failed_transaction_reuses_no_sequence_number(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    store.commit_cycle(Cycle(reading=rack_reading()))
    bad = AlertTransition(alert_id=1, device="rack-1", rule="x", transition="bogus", ts_ms=1)
    with pytest.raises(ValueError):
        store.commit_cycle(Cycle(reading=rack_reading(), alerts=[bad]))
    assert store.commit_cycle(Cycle(reading=rack_reading())).sample_seqs == [2]
    assert [r["seq"] for r in store.samples("rack-1")] == [1, 2]


def test_the_cap_drops_oldest_telemetry_counts_it_and_never_drops_alerts(tmp_path: Path):
    store = Store(tmp_path / "s.db", max_size_mb=1.0)
    raised = AlertTransition(
        alert_id=1,
        device="rack-1",
        rule="cell_overvoltage",
        transition="raised",
        ts_ms=1,
        severity="critical",
        message="cell 3 over 3.65 V",
        cell=3,
        value=3.7,
    )
    store.commit_cycle(Cycle(alerts=[raised]))
    written = 0
    for i in range(400):  # ~8 kB of cells per sample: far past 1 MB
        store.commit_cycle(Cycle(reading=rack_reading(cells=1000, ts_ms=1_700_000_000_000 + i)))
        written += 1
    store.enforce_cap()
    assert store.used_bytes() <= 1.0 * 1024 * 1024
    kept = [r["seq"] for r in store.samples("rack-1")]
    assert kept and kept[-1] == written  # the newest survive
    assert kept[0] > 1  # the oldest went first
    assert store.counter("telemetry_dropped") == written - len(kept)  # all were unsent
    assert [a["rule"] for a in store.active_alerts()] == ["cell_overvoltage"]
    assert store.outbox_depth()["alerts"] == 1


def test_a_full_disk_is_survived_by_dropping_old_telemetry(tmp_path: Path, caplog):
    store = Store(tmp_path / "s.db", max_size_mb=64)
    for i in range(60):
        store.commit_cycle(Cycle(reading=rack_reading(cells=1000, ts_ms=i)))
    # The disk fills up (other files grew): SQLite cannot add a single page any more.
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    seqs = []
    for i in range(60, 100):
        seqs += store.commit_cycle(Cycle(reading=rack_reading(cells=1000, ts_ms=i))).sample_seqs
    assert seqs == list(range(61, 101))  # every new cycle committed, no seq skipped
    assert "store full, dropping oldest telemetry" in caplog.text
    assert store.counter("telemetry_dropped") > 0
    assert store.conn.execute("PRAGMA page_count").fetchone()[0] <= pages
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_batch_larger_than_the_cap_is_refused_whole(tmp_path: Path):
    store = Store(tmp_path / "s.db", max_size_mb=0.2)
    huge = [Cycle(reading=rack_reading(cells=1000, ts_ms=i)) for i in range(60)]  # ~0.5 MB
    with pytest.raises(StoreFull):
        store.commit_cycles(huge)
    assert list(store.samples("rack-1")) == []
    assert store.commit_cycle(Cycle(reading=rack_reading())).sample_seqs == [1]


def test_retention_purges_only_published_telemetry(tmp_path: Path):
    store = Store(tmp_path / "s.db", retention_days=1)
    old, new = 1_000, 10 * 86_400_000
    store.commit_cycles(
        [Cycle(reading=rack_reading(ts_ms=old)), Cycle(reading=rack_reading(ts_ms=old + 1))]
    )
    store.commit_cycle(Cycle(reading=rack_reading(ts_ms=new)))
    # Pretend sync published the first sample only.
    store.conn.execute("DELETE FROM outbox WHERE stream = 'telemetry' AND seq = 1")
    assert store.purge_expired(now=new) == 1
    assert [r["seq"] for r in store.samples("rack-1")] == [2, 3]  # unsent old one kept


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path):
    path = tmp_path / "s.db"
    Store(path).conn.execute("PRAGMA user_version = 999")
    with pytest.raises(RuntimeError, match="newer than this bess-edge"):
        Store(path)


def _reopened_without(store: Store, index: str) -> Store:
    """The store as an earlier release left it (without ``index``), opened again."""
    store.conn.execute(f"DROP INDEX {index}")
    store.close()
    return Store(store.path)


def _plan(store: Store, sql: str) -> str:
    return str(store.conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())


def test_the_outbox_heads_index_is_added_to_an_older_store_and_used(tmp_path: Path):
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit_cycles([Cycle(reading=rack_reading("a", ts_ms=1_700_000_000_000 + i))
                         for i in range(5)])  # fmt: skip
    store.commit_cycle(Cycle(reading=rack_reading("b")))
    store.outbox_delete([r["outbox_id"] for r in store.outbox_fetch("telemetry", 0, 2)], 1)
    store = _reopened_without(store, "outbox_head")
    plan = _plan(store, "SELECT min(seq) FROM outbox WHERE device = 'a' AND stream = 'x'")
    assert "outbox_head" in plan  # the heads query no longer scans the outbox
    assert store.published_heads() == {"a": {"telemetry": 2}, "b": {"telemetry": 0}}
    assert [r["seq"] for r in store.samples("a")] == [1, 2, 3, 4, 5]


def test_a_store_with_no_room_for_the_heads_index_still_opens_and_answers(tmp_path: Path, caplog):
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit_cycles([Cycle(reading=rack_reading("a", ts_ms=1_700_000_000_000 + i))
                         for i in range(20)])  # fmt: skip
    store.conn.execute("DROP INDEX outbox_head")
    store.conn.execute("PRAGMA incremental_vacuum")  # its pages go back to the filesystem
    store.close()
    with caplog.at_level("WARNING"):
        # A cap below the file's size: SQLite holds it at its current pages, none to spare.
        store = Store(path, max_size_mb=0.001)
    assert "outbox index not created" in caplog.text
    assert store.published_heads() == {"a": {"telemetry": 0}}
    assert len(list(store.samples("a"))) == 20


def test_an_alert_lists_events_are_read_through_their_index(tmp_path: Path):
    """An alert list reads its alerts' events by alert id: without an index that read walks
    every event the store holds (100 alerts of 150,000 events: 12.5 ms a list, 1.3 with it)."""
    store = _reopened_without(Store(tmp_path / "s.db"), "alert_events_alert")
    plan = _plan(store, "SELECT alert_id, seq FROM alert_events WHERE alert_id IN (1, 2)")
    assert "alert_events_alert" in plan
