"""Store write speed: the batched commit path against raw sqlite3 executemany, same run.

For 16-cell and 1,000-cell Readings, writes N samples in batches through
``Store.commit_cycles`` (Reading → stats, packed cell BLOBs, per-stream seq, outbox rows, one
transaction per batch) and, as the reference, raw ``executemany`` of ready-made rows into the
same ``samples`` and ``outbox`` tables of a fresh file with the same PRAGMAs. Prints samples/s
for both and their ratio. Usage: python benchmarks/store_bench.py [--samples N] [--batch B]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from bess_edge.model import Reading
from bess_edge.store import SAMPLE_COLUMNS, Cycle, Store, pack_cells


def readings(cells: int, count: int) -> list[Reading]:
    rng = np.random.default_rng(1)
    return [
        Reading(
            device_id="rack-1",
            ts_ms=1_700_000_000_000 + i * 1000,
            pack_voltage_v=3.3 * cells,
            pack_current_a=-20.0,
            bms_soc_pct=50.0,
            cell_voltage_v=3.3 + 0.01 * rng.standard_normal(cells),
            cell_temperature_c=25 + rng.standard_normal(cells),
        )
        for i in range(count)
    ]


def bench_store(path: Path, data: list[Reading], batch: int, synchronous: str) -> float:
    store = Store(path, max_size_mb=4096, synchronous=synchronous)
    start = time.perf_counter()
    for i in range(0, len(data), batch):
        store.commit_cycles([Cycle(reading=r) for r in data[i : i + batch]])
    elapsed = time.perf_counter() - start
    store.close()
    return len(data) / elapsed


def bench_raw(path: Path, data: list[Reading], batch: int, synchronous: str) -> float:
    Store(path, max_size_mb=4096, synchronous=synchronous).close()  # same schema and PRAGMAs
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    # The reference gets its rows ready-made (not timed): only the SQLite work is measured.
    rows = [
        ("rack-1", i + 1, r.ts_ms, 0, r.pack_voltage_v, r.pack_current_a, r.pack_power_w,
         r.bms_soc_pct, None, 3.2, 3.4, 24.0, 26.0, 0, 0,
         pack_cells(r.cell_voltage_v), pack_cells(r.cell_temperature_c), None, None)
        for i, r in enumerate(data)
    ]  # fmt: skip
    marks = ",".join("?" * 19)
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO samples ({SAMPLE_COLUMNS}) VALUES ({marks})", chunk)
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        conn.executemany(
            "INSERT INTO outbox (priority, stream, device, seq, ref_id, ts_ms) "
            "VALUES (2, 'telemetry', 'rack-1', ?, ?, ?)",
            [(row[1], last - len(chunk) + 1 + j, row[2]) for j, row in enumerate(chunk)],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="full")
    args = parser.parse_args()
    print(
        f"{args.samples} samples per case, {args.batch} per transaction, "
        f"synchronous={args.synchronous}"
    )
    header = ("cells", "store samples/s", "raw samples/s", "ratio", "cell values/s")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 16, 14, 6, 14), strict=True)))
    for cells in (16, 1000):
        count = args.samples if cells == 16 else max(args.samples // 10, args.batch)
        data = readings(cells, count)
        with tempfile.TemporaryDirectory() as tmp:
            ours = bench_store(Path(tmp) / "store.db", data, args.batch, args.synchronous)
            raw = bench_raw(Path(tmp) / "raw.db", data, args.batch, args.synchronous)
        print(f"{cells:>6} {ours:>16,.0f} {raw:>14,.0f} {ours / raw:>6.2f} {ours * cells:>14,.0f}")


if __name__ == "__main__":
    main()
