"""An overloaded gateway sheds whole polls on each device's schedule, and says so."""

from __future__ import annotations

import time

from conftest import free_port, read_db, sim_device, wait_until
from test_service_http import http_on, scrape

# Far shorter than a 4,000-cell poll cycle (read, diagnostics, commit) on any machine: CI measured
# 4 ms a cycle, and at a 2-ms interval a fast moment shed fewer slots than it polled.
INTERVAL_S = 0.0005


def _slots(metrics: dict, device: str) -> tuple[float, float]:
    labels = (("device", device),)
    return metrics[("bess_edge_polls_total", labels)], metrics.get(
        ("bess_edge_polls_skipped_total", labels), 0.0
    )


def test_polls_past_their_slot_skip_whole_slots_counted_and_alerted(make_config, daemon, tmp_path):
    port = free_port()
    device = sim_device("huge", poll_interval_s=INTERVAL_S, options={"cells": 4000})
    proc = daemon(make_config(devices=[device], http=http_on(port)))
    proc.wait_for_log('"msg": "ready"')
    db = tmp_path / "bess-edge.db"
    alert = wait_until(
        lambda: read_db(db, "SELECT severity, message FROM alerts WHERE rule = 'polls_skipped'"),
        timeout=60,
    )
    assert alert[0][0] == "warning" and "cannot keep up" in alert[0][1]
    first, t0 = scrape(port), time.monotonic()
    time.sleep(3.0)
    last, t1 = scrape(port), time.monotonic()
    polls = _slots(last, "huge")[0] - _slots(first, "huge")[0]
    skipped = _slots(last, "huge")[1] - _slots(first, "huge")[1]
    assert polls > 0 and skipped > polls  # most slots are shed, not queued up or drifted
    # Every slot of the schedule is either polled or counted as skipped.
    slots = (t1 - t0) / INTERVAL_S
    assert abs(polls + skipped - slots) < 0.1 * slots, (polls, skipped, slots)
    lateness = last[("bess_edge_poll_lateness_seconds_count", (("device", "huge"),))]
    assert lateness >= polls
    assert proc.stop() == 0
