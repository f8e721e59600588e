"""DevicePipeline keeps a Diagnosis at most once per ``diagnosis_interval_s`` of the device's
clock, and always one at an alert change, while every poll is still diagnosed and alerted on."""

from pathlib import Path

import numpy as np
import pytest

from bess_edge.alerts import AlertEngine
from bess_edge.config import load_config
from bess_edge.config_rules import ThresholdRule
from bess_edge.model import Reading
from bess_edge.pipeline import CELL_ARRAYS_EVERY_KEPT, DevicePipeline
from bess_edge.store import Store

T0_MS = 1_790_000_000_000


def _reading(ts_ms: int, current_a: float = 10.0) -> Reading:
    return Reading(
        device_id="rack-1",
        ts_ms=ts_ms,
        pack_voltage_v=16 * 3.3,
        pack_current_a=current_a,
        cell_voltage_v=np.full(16, 3.3),
        cell_temperature_c=np.full(4, 25.0),
    )


def _pipeline(
    tmp_path: Path,
    poll_interval_s: float,
    rules: tuple[ThresholdRule, ...] = (),
    device_id: str = "rack-1",
    **device: float,
) -> tuple[DevicePipeline, Store]:
    keys = "".join(f"{key} = {value!r}\n" for key, value in device.items())
    path = tmp_path / "pipeline.toml"
    path.write_text(
        f'[site]\nid = "s"\n[[devices]]\nid = "{device_id}"\ndriver = "sim"\n'
        f"poll_interval_s = {poll_interval_s!r}\n{keys}"
    )
    config = load_config(path).devices[0]
    store = Store(tmp_path / f"{device_id}.db")
    return DevicePipeline(config, store, AlertEngine(list(rules), 0, [])), store


def _kept_ms(pipeline: DevicePipeline, times_ms: list[int], **reading: float) -> list[int]:
    """The timestamps of the polls whose Diagnosis the pipeline keeps."""
    cycles = [pipeline.on_reading(_reading(t, **reading)) for t in times_ms]
    assert all(c.reading is not None for c in cycles)  # every poll is stored as telemetry
    return [c.reading.ts_ms for c in cycles if c.diagnosis is not None]


def test_a_10_hz_device_keeps_one_diagnosis_a_second(tmp_path: Path):
    pipeline, store = _pipeline(tmp_path, 0.1)
    # 10 Hz with ±30 ms of poll jitter, for 20 s.
    jitter = np.random.default_rng(1).integers(-30, 31, 200)
    times = [T0_MS + 100 * i + int(j) for i, j in enumerate(jitter)]
    kept = _kept_ms(pipeline, times)
    # Half a poll of slack: at least 950 ms apart after the first (the rack's phase shortens
    # the first gap), so 20 to 23 in 20 s, never 200.
    assert 20 <= len(kept) <= 23
    gaps = np.diff(kept)
    assert min(gaps[1:]) >= 950 and max(gaps) <= 1100
    for t in times:  # committed: every reading, the kept diagnoses only
        cycle = pipeline.on_reading(_reading(t + 60_000))
        store.commit_cycle(cycle)
    samples, diagnoses = store.conn.execute(
        "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM diagnoses)"
    ).fetchone()
    assert samples == 200 and 20 <= diagnoses <= 23
    store.close()


def test_a_jittery_1_hz_device_keeps_every_diagnosis(tmp_path: Path):
    pipeline, store = _pipeline(tmp_path, 1.0)
    jitter = np.random.default_rng(2).integers(-300, 301, 60)
    times = [T0_MS + 1000 * i + int(j) for i, j in enumerate(jitter)]
    assert _kept_ms(pipeline, times) == times
    store.close()


def test_interval_zero_keeps_every_poll_and_a_clock_step_back_keeps_the_next(tmp_path: Path):
    pipeline, store = _pipeline(tmp_path, 0.1, diagnosis_interval_s=0)
    times = [T0_MS + 100 * i for i in range(30)]
    assert _kept_ms(pipeline, times) == times
    pipeline, _ = _pipeline(tmp_path, 0.1)
    stepped = [T0_MS, T0_MS + 100, T0_MS - 5000, T0_MS - 4900]
    assert _kept_ms(pipeline, stepped) == [T0_MS, T0_MS - 5000]
    store.close()


def test_a_poll_that_raises_or_clears_an_alert_keeps_its_diagnosis(tmp_path: Path):
    rule = ThresholdRule(
        name="high-current", metric="pack_current_a", above=100.0, clear=90.0, min_reraise_s=0.0
    )
    pipeline, store = _pipeline(tmp_path, 0.1, (rule,), diagnosis_interval_s=10)
    assert _kept_ms(pipeline, [T0_MS, T0_MS + 100]) == [T0_MS]
    raised = pipeline.on_reading(_reading(T0_MS + 200, current_a=150.0))
    assert [t.transition for t in raised.alerts] == ["raised"]
    assert raised.diagnosis is not None
    assert _kept_ms(pipeline, [T0_MS + 300], current_a=150.0) == []
    cleared = pipeline.on_reading(_reading(T0_MS + 400, current_a=10.0))
    assert [t.transition for t in cleared.alerts] == ["cleared"] and cleared.diagnosis is not None
    store.close()


@pytest.mark.parametrize("poll_interval_s", [0.1, 1.0])
def test_cell_arrays_come_in_the_first_kept_diagnosis_and_one_in_60_after(
    tmp_path: Path, poll_interval_s: float
):
    pipeline, store = _pipeline(tmp_path, poll_interval_s)
    step_ms = round(poll_interval_s * 1000)
    kept = []
    for i in range(round(2 * CELL_ARRAYS_EVERY_KEPT / poll_interval_s) + 1):
        cycle = pipeline.on_reading(_reading(T0_MS + step_ms * i))
        if cycle.diagnosis is not None:
            kept.append("cell_soc_pct" in cycle.diagnosis)
    assert len(kept) == 2 * CELL_ARRAYS_EVERY_KEPT + 1
    assert [i for i, arrays in enumerate(kept) if arrays] == [0, 60, 120]
    store.close()


def test_racks_polled_on_one_grid_keep_their_diagnoses_in_different_slots(tmp_path: Path):
    """A refresh costs a full poll's diagnostics: 20 racks refreshing in the same 0.1-s slot
    were a burst that made polls late. Each rack keeps to its own share of the second."""
    times = [T0_MS + 100 * i for i in range(50)]
    slots = set()
    for rack in range(20):
        pipeline, store = _pipeline(tmp_path, 0.1, device_id=f"rack-{rack}")
        kept = _kept_ms(pipeline, times)
        assert len(kept) in (5, 6)  # the first poll, then one a second
        slots.add((kept[1] - T0_MS) // 100 % 10)
        store.close()
    assert len(slots) >= 6
