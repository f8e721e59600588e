"""Metrics a driver keeps itself (the CAN driver's frame counters) reach /metrics unchanged."""

from __future__ import annotations

import asyncio
import time

import can
from prometheus_client.parser import text_string_to_metric_families
from test_can_driver import channel, make_driver, send, sender, simulated_rack  # noqa: F401

from bess_edge import metrics
from bess_edge.health import DeviceHealth, Health, _frame_counters


def test_can_frames_decoded_and_dropped_by_reason_are_exported(make_driver, sender):  # noqa: F811
    driver = make_driver()

    async def traffic() -> int:
        await driver.open()
        try:
            good = send(sender, driver, simulated_rack())
            for _ in range(7):
                sender.send(can.Message(arbitration_id=0x7A5, data=bytes(8), is_extended_id=False))
            for _ in range(3):  # a mapped message with the wrong length
                sender.send(can.Message(arbitration_id=0x100, data=bytes(3), is_extended_id=False))
            deadline = time.monotonic() + 10
            while driver.counters.frames < good + 10:
                assert time.monotonic() < deadline, driver.counters
                await asyncio.sleep(0.01)
            return good
        finally:
            await driver.close()

    good = asyncio.run(traffic())
    device = DeviceHealth(
        id="rack-1",
        driver="can",
        comms="ok",
        polls=1,
        poll_errors=0,
        consecutive_failures=0,
        last_reading_age_s=0.1,
        last_poll_duration_s=0.001,
        last_error=None,
        frame_counters=_frame_counters(driver),
    )
    text = metrics.exposition(Health(devices=[device], mqtt="disabled")).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    rack = ("device", "rack-1")
    assert samples[("bess_edge_can_frames_decoded_total", (rack,))] == good
    assert samples[("bess_edge_can_frames_dropped_total", (rack, ("reason", "unknown_id")))] == 7
    assert samples[("bess_edge_can_frames_dropped_total", (rack, ("reason", "wrong_dlc")))] == 3
    assert samples[("bess_edge_can_events_total", (rack, ("event", "frames")))] == good + 10


def test_a_driver_without_counters_exports_no_can_metrics():
    class Plain:
        pass

    assert _frame_counters(Plain()) is None
