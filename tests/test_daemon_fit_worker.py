"""A device's electrode fit (about a second of CPU) runs off the daemon's event loop: the
other devices keep their poll schedule and their alerts go out on time meanwhile."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
from conftest import sim_device

from bess_edge.config import load_config
from bess_edge.daemon import Daemon
from bess_edge.diagnostics.electrode import full_cell_ocv
from bess_edge.diagnostics.electrode_ocp import LIBRARY
from bess_edge.model import Reading
from bess_edge.store import Cycle

POLL_S = 0.2
# At least this long, and until two fits came back from the worker: a fit is ~1 s alone, many
# on a box shared with other work (CI ran none to the end in a fixed 6 s beside a benchmark).
RUN_S = 6.0
MAX_RUN_S = 120.0
# The A123 cell's electrodes (Safari & Delacourt 2011): a real LFP fit, 12 library pairs.
SOC_PCT = np.linspace(0.0, 100.0, 41)
OCV_V = full_cell_ocv(
    LIBRARY["lfp_safari2011"],
    LIBRARY["graphite_safari2011"],
    np.array([0.02, 0.95, 0.98, 0.05]),
    SOC_PCT / 100,
)
HOT_RULE = {
    "name": "cell-hot", "metric": "cell_temperature_c", "above": 40.0, "clear": 35.0,
    "for_s": 1.0, "clear_for_s": 30.0, "severity": "critical",
}  # fmt: skip


def test_a_long_fit_on_one_device_stalls_neither_the_others_polls_nor_their_alerts(make_config):
    hot = {"kind": "over_temperature", "cell": 7, "heat_w": 120.0, "at_s": 0.0}
    fitting = sim_device("rack-fit", poll_interval_s=POLL_S)
    other = sim_device(
        "rack-hot", poll_interval_s=POLL_S,
        options={"profile": "idle", "time_scale": 120.0, "temperature_noise_c": 0.0,
                 "faults": [hot]},
    )  # fmt: skip
    settings = load_config(make_config(devices=[fitting, other], thresholds=[HOT_RULE]))
    fits: list[float] = []  # wall times a fit was started (a new one once the last is in)
    fit_s: list[float] = []  # each fit's own wall time on the worker: what it would hold inline
    adopted: list[str] = []  # electrode pairs the fitting device's Diagnoses carried
    polls: list[tuple[float, float, bool]] = []  # the hot device: wall time, max °C, raised

    async def main() -> None:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        while len(daemon.pipelines) < 2:
            await asyncio.sleep(0.01)
        diag = daemon.pipelines["rack-fit"].diagnostician
        update, on_reading = diag.update, daemon.pipelines["rack-hot"].on_reading
        submit = diag.fit_runner

        def timed_runner(job: Any) -> Any:
            def timed() -> Any:
                start = time.monotonic()
                result = job()
                fit_s.append(time.monotonic() - start)
                return result

            return submit(timed)

        def fit_and_update(reading: Reading, cell_views: bool = True) -> Any:
            if diag.electrode.due(math.inf):  # no fit running
                fits.append(time.monotonic())
                diag.refit_electrodes(SOC_PCT, OCV_V)
            d = update(reading, cell_views)
            adopted.append(d.electrode_pair)
            return d

        def record(reading: Reading) -> Cycle:
            cycle = on_reading(reading)
            raised = any(t.rule == "cell-hot" and t.transition == "raised" for t in cycle.alerts)
            polls.append((time.monotonic(), float(np.max(reading.cell_temperature_c)), raised))
            return cycle

        diag.update = fit_and_update  # type: ignore[method-assign]
        diag.fit_runner = timed_runner
        daemon.pipelines["rack-hot"].on_reading = record  # type: ignore[method-assign]
        started = time.monotonic()
        while time.monotonic() - started < RUN_S or (
            len(fit_s) < 2 and time.monotonic() - started < MAX_RUN_S
        ):
            await asyncio.sleep(0.1)
        daemon.request_stop()
        assert await task == 0

    asyncio.run(main())
    assert len(fit_s) >= 2, f"{len(fit_s)} fits came back from the worker in {MAX_RUN_S} s"
    pairs = [p for p in adopted if p]
    during = [t for t, _, _ in polls if fits[0] <= t]
    gaps = np.diff(during)
    print(
        f"{len(fits)} fits started, {len(pairs)} polls carried a fit; hot device: "
        f"{len(during)} polls, gaps {1000 * gaps.mean():.0f} ms mean, "
        f"{1000 * gaps.max():.0f} ms max, {1000 * np.percentile(gaps, 90):.0f} ms 90th "
        f"percentile; fits {1000 * min(fit_s):.0f}-{1000 * max(fit_s):.0f} ms"
    )
    assert len(fits) >= 2 and pairs[-1] == "lfp_safari2011/graphite_safari2011"
    # Inline, each fit would hold every poll for its whole run (0.5-1 s alone, more on a busy
    # box): no gap comes near the shortest fit, and nine polls in ten keep their schedule
    # within a quarter of a fit. Both bounds scale with the box's contention, which fixed ones
    # in ms did not (a busy CI box read 430 ms; beside five busy loops fits took 16 s and the
    # 90th-percentile gap 302 ms).
    assert gaps.max() < 0.75 * min(fit_s)
    assert np.percentile(gaps, 90) < POLL_S + 0.25 * min(fit_s)
    crossed = next(t for t, temp, _ in polls if temp > HOT_RULE["above"])
    raised = next(t for t, _, r in polls if r)
    assert fits[0] < raised and raised - crossed < HOT_RULE["for_s"] + 2 * POLL_S
