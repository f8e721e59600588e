"""Alert raise latency: from the sample that crosses a threshold to the committed alert row.

A simulated 16-cell LFP string goes through the daemon's own path, ``DevicePipeline.on_reading``
(diagnostics → alert rules) then ``Store.commit_cycle`` (one SQLite transaction, fsync with
``synchronous = full``), on a real file. Cell 7's temperature is made to cross a rule's level on
every other poll, so each crossing raises an episode and the next poll clears it (``for_s = 0``,
no hysteresis, no re-raise delay). Latency of a crossing = the time from handing its Reading to
the pipeline until the commit holding the ``raised`` row returns. The reference, in the same
run, is the same path for a poll that changes no alert. Prints p50/p99 of both and the ratio.

Second figure: the rule evaluation alone on a 10,000-cell Reading with the shipped LFP default
rules, against ``Reading.cell_stats()`` on the same Reading (what every commit computes anyway).

Usage: python benchmarks/alert_latency.py [--crossings N] [--synchronous full|normal]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.alerts import AlertEngine
from bess_edge.config import DeviceConfig, ThresholdRule
from bess_edge.model import Reading
from bess_edge.pipeline import DevicePipeline
from bess_edge.resources import data_dir
from bess_edge.store import Store

LEVEL_C = 45.0
RULE = ThresholdRule(name="cell-hot", metric="cell_temperature_c", above=LEVEL_C, min_reraise_s=0.0)


def timed_commit(pipeline: DevicePipeline, store: Store, reading: Reading) -> tuple[float, int]:
    """Seconds from Reading to committed cycle, and how many alert transitions it carried."""
    start = time.perf_counter()
    cycle = pipeline.on_reading(reading)
    store.commit_cycle(cycle)
    return time.perf_counter() - start, len(cycle.alerts)


def run(crossings: int, synchronous: str) -> None:
    device = DeviceConfig(id="rack-1", driver="sim", chemistry="lfp", capacity_ah=280.0)
    sim = SimulatedString(
        SimOptions(cells=16, profile="idle", seed=1), device.chemistry_preset(), 280
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db", synchronous=synchronous)
        engine = AlertEngine([RULE], store.max_alert_id(), store.active_alerts())
        pipeline = DevicePipeline(device, store, engine)
        alert_s, plain_s = [], []
        ts_ms = 1_700_000_000_000
        for i in range(4 * crossings):
            sim.advance(1.0)
            ts_ms += 1000
            reading = sim.measure(ts_ms, device.id)
            # Polls cycle: quiet, crossing (raise), back below (clear), quiet.
            if i % 4 == 1:
                reading.cell_temperature_c[7] = LEVEL_C + 2.0
            elapsed, transitions = timed_commit(pipeline, store, reading)
            if i % 4 == 1:
                assert transitions == 1, "the crossing did not raise"
                alert_s.append(elapsed)
            elif i % 4 in (0, 3):
                assert transitions == 0
                plain_s.append(elapsed)
        raised = store.conn.execute("SELECT count(*) FROM alerts WHERE rule = 'cell-hot'")
        assert raised.fetchone()[0] == crossings
        store.close()
    a, p = np.array(alert_s) * 1000, np.array(plain_s) * 1000
    print(f"alert raise latency over {crossings} crossings (synchronous={synchronous}):")
    print(f"  crossing sample -> committed alert row  p50 {np.median(a):7.3f} ms  "
          f"p99 {np.percentile(a, 99):7.3f} ms")  # fmt: skip
    print(f"  reference: poll with no alert change   p50 {np.median(p):7.3f} ms  "
          f"p99 {np.percentile(p, 99):7.3f} ms")  # fmt: skip
    print(f"  ratio alert/reference                  p50 {np.median(a) / np.median(p):7.2f}x  "
          f"p99 {np.percentile(a, 99) / np.percentile(p, 99):7.2f}x")  # fmt: skip


def bench_evaluate(cells: int = 10_000, polls: int = 300) -> None:
    raw = tomllib.loads((data_dir("config") / "thresholds-lfp.toml").read_text())
    engine = AlertEngine([ThresholdRule(**r) for r in raw["thresholds"]], 0, [])
    rng = np.random.default_rng(2)
    readings = [
        Reading(
            device_id="site",
            ts_ms=1_700_000_000_000 + i * 1000,
            pack_voltage_v=3.3 * cells,
            pack_current_a=-50.0,
            cell_voltage_v=3.3 + 0.005 * rng.standard_normal(cells),
            cell_temperature_c=25 + rng.standard_normal(cells),
        )
        for i in range(polls)
    ]
    start = time.perf_counter()
    for r in readings:
        engine.evaluate(r, None)
    evaluate_s = (time.perf_counter() - start) / polls
    start = time.perf_counter()
    for r in readings:
        r.cell_stats()
    stats_s = (time.perf_counter() - start) / polls
    print(f"rule evaluation, {cells} cells, {len(engine.rules)} rules (LFP defaults + built-in):")
    print(f"  engine.evaluate   {evaluate_s * 1e6:8.1f} µs per poll "
          f"({evaluate_s * 100:.3f} % of one core at 1 Hz)")  # fmt: skip
    print(f"  reference: Reading.cell_stats() {stats_s * 1e6:8.1f} µs; "
          f"ratio {evaluate_s / stats_s:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crossings", type=int, default=500)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one "alert raised" line per crossing is not the point here
    run(args.crossings, args.synchronous)
    bench_evaluate()


if __name__ == "__main__":
    main()
