"""Time per Diagnostician.update() for 16, 1,000 and 10,000 cells, every estimator on.

Target (issue 3): a 10,000-cell string polled at 1 Hz costs under 2 % of one core, i.e. at most
20 ms per update. The reference in the same run is ``Reading.cell_stats()`` (the min/max/mean
every consumer computes anyway), so the ratio says what the full diagnosis costs on top of
merely looking at the cells, on whatever machine this runs.

    .venv/bin/python benchmarks/diagnostics_speed.py
"""

from __future__ import annotations

import time

from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import NMC
from bess_edge.diagnostics import Diagnostician

CELLS = (16, 1_000, 10_000)
POLLS = 200
WARMUP = 20
BUDGET_MS = 20.0  # 2 % of one core at 1 Hz


def _per_call_ms(func, readings) -> float:
    start = time.perf_counter()
    for reading in readings:
        func(reading)
    return (time.perf_counter() - start) / len(readings) * 1e3


def main() -> None:
    print(f"{'cells':>7} {'update ms':>10} {'% core @1Hz':>12} {'cell_stats ms':>14} {'ratio':>7}")
    worst_10k = None
    for cells in CELLS:
        # Regulation duty: a current step every poll, so the R0, SOC and anomaly paths all run.
        sim = SimulatedString(
            SimOptions(cells=cells, profile="regulation", c_rate=0.5, seed=1), NMC, 280.0
        )
        readings = list(sim.readings(duration_s=WARMUP + POLLS, poll_s=1.0))
        diag = Diagnostician("bench", NMC, 280.0)
        for reading in readings[:WARMUP]:
            diag.update(reading)
        timed = readings[WARMUP:]
        update_ms = _per_call_ms(diag.update, timed)
        stats_ms = _per_call_ms(lambda r: r.cell_stats(), timed)
        print(
            f"{cells:>7} {update_ms:>10.3f} {update_ms / 10:>11.2f}% {stats_ms:>14.4f} "
            f"{update_ms / stats_ms:>7.0f}x"
        )
        if cells == 10_000:
            worst_10k = update_ms
    verdict = "meets" if worst_10k is not None and worst_10k <= BUDGET_MS else "MISSES"
    print(f"10,000 cells: {worst_10k:.2f} ms per update {verdict} the {BUDGET_MS:.0f} ms budget")


if __name__ == "__main__":
    main()
