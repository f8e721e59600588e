"""Estimator state survives a restart; a blob that does not fit is ignored, not fatal."""

import io
import json
import logging
import zlib

import numpy as np
import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.chemistry import LFP, NMC
from bess_edge.diagnostics import Diagnostician, persist

# The simulated cells follow the preset's curve exactly: for them it is a measured table.
MEASURED_NMC = NMC.with_overrides({"ocv_source": "file"})


def _cycled(hours=7.0):
    options = SimOptions(cells=8, day_length_s=6 * 3600, c_rate=0.25, seed=4, current_offset_a=0.4)
    sim = SimulatedString(options, NMC, 100.0)
    diag = Diagnostician("d", MEASURED_NMC, 100.0)
    for reading in sim.readings(duration_s=hours * 3600, poll_s=2.0):
        d = diag.update(reading)
    return sim, diag, d


def test_restart_keeps_soc_capacity_cycles_and_baselines():
    sim, before, d_before = _cycled()
    assert np.isfinite(d_before.capacity_ah) and d_before.equivalent_full_cycles > 0.3
    blob = before.export_state()
    after = Diagnostician("d", MEASURED_NMC, 100.0)
    after.restore_state(blob)
    start = 7 * 3600 * 1000
    for reading in sim.readings(duration_s=600, poll_s=2.0, start_ms=start):
        d_before = before.update(reading)
        d_after = after.update(reading)
    assert d_after.capacity_ah == d_before.capacity_ah
    # The restored side misses the one poll interval spanning the restart, nothing more.
    assert d_after.equivalent_full_cycles == pytest.approx(
        d_before.equivalent_full_cycles, rel=1e-3
    )
    assert d_after.life_used_pct == pytest.approx(d_before.life_used_pct, rel=1e-3)
    assert d_after.soc_pct == pytest.approx(d_before.soc_pct, abs=0.1)
    assert d_after.current_offset_a == pytest.approx(d_before.current_offset_a, abs=0.01)
    np.testing.assert_allclose(d_after.cell_r0_ohm, d_before.cell_r0_ohm, rtol=1e-3)
    assert after.rest.rests_measured == before.rest.rests_measured > 0
    assert d_after.r0_pulse_1s_ohm == d_before.r0_pulse_1s_ohm or np.isnan(d_before.r0_pulse_1s_ohm)
    print(f"state blob: {len(blob)} bytes for 8 cells")


def _hostile(arrays: list, body: bytes = b"") -> bytes:
    """A version-2 blob whose header lists ``arrays`` and whose body is ``body``."""
    meta = json.dumps({"header": {"version": 2, "chemistry": "lfp"}, "arrays": arrays}).encode()
    return persist.MAGIC + len(meta).to_bytes(4, "little") + meta + zlib.compress(body)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not a blob",
        b"PK\x03\x04garbage",
        persist.MAGIC + b"\xff\xff\x00\x00{}",
        _hostile([["engine/scalars", "|O", [2]]], bytes(16)),
        _hostile([["engine/scalars", "<f8", [10**9]]], bytes(16)),
        _hostile([["engine/scalars", "<f8", [1]]], bytes(16)),
        None,
    ],
    ids=[
        "empty",
        "text",
        "broken-zip",
        "cut-header",
        "object-dtype",
        "longer-than-the-blob",
        "bytes-left-over",
        "other-chemistry",
    ],
)
def test_corrupt_or_foreign_state_is_ignored_with_a_warning(blob, caplog):
    if blob is None:
        blob = Diagnostician("d", LFP, 100.0).export_state()
    _, diag, _ = _cycled(hours=0.2)
    soc_before = diag.string_soc.soc_pct.copy()
    with caplog.at_level(logging.WARNING):
        diag.restore_state(blob)
    assert "ignoring saved diagnostics state" in caplog.text
    np.testing.assert_array_equal(diag.string_soc.soc_pct, soc_before)


def test_a_state_saved_as_npz_by_an_earlier_version_resumes_the_same():
    """A gateway updated in place resumes from the version-1 blob (numpy's .npz) it saved:
    the same estimators as from today's blob, which is a third of its size."""
    sim, before, _ = _cycled(hours=1.0)
    blob = before.export_state()
    header, parts = persist.unpack(blob)
    arrays = {f"{c}/{name}": value for c, fields in parts.items() for name, value in fields.items()}
    meta = json.dumps({**header, "version": 1}).encode()
    npz = io.BytesIO()
    np.savez_compressed(npz, __header__=np.frombuffer(meta, dtype=np.uint8), **arrays)
    from_npz, from_blob = (Diagnostician("d", MEASURED_NMC, 100.0) for _ in range(2))
    from_npz.restore_state(npz.getvalue())
    from_blob.restore_state(blob)
    assert from_npz.export_state() == from_blob.export_state()
    for reading in sim.readings(duration_s=60, poll_s=2.0, start_ms=3600 * 1000):
        a, b = from_npz.update(reading), from_blob.update(reading)
        assert a.to_dict() == b.to_dict()
    assert 3 * len(blob) < len(npz.getvalue())


def test_diagnosis_json_keeps_six_significant_digits_and_a_whole_eol_timestamp():
    from bess_edge.diagnostics.diagnosis import Diagnosis

    d = Diagnosis(
        "rack-1",
        ts_ms=1_795_396_875_128,
        soc_pct=45.537126508281844,
        cell_r0_mean_ohm=0.00031334034750944413,
        eol_projected_ts_ms=2_100_000_000_123.4,
        cell_deviation_v=np.array([0.005999999999999783, np.nan, -1.113591626134497e-11]),
    )
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["ts_ms"] == 1_795_396_875_128
    assert out["soc_pct"] == 45.5371
    assert out["cell_r0_mean_ohm"] == 0.00031334
    assert out["eol_projected_ts_ms"] == 2_100_000_000_123
    assert out["cell_deviation_v"] == [0.006, None, -1.11359e-11]
    assert out["capacity_ah"] is None


def test_state_saved_before_anchors_were_kept_restores_with_its_capacity():
    from bess_edge.diagnostics import persist

    _, before, d_before = _cycled()
    header, parts = persist.unpack(before.export_state())
    # The capacity part as the pair-based estimator wrote it (four scalars, pairs of charge).
    scalars = parts["capacity"]["scalars"]
    parts["capacity"] = {
        "scalars": scalars[:4],
        "pending": np.full(4, np.nan),
        "anchor": np.full(4, np.nan),
        "pairs": np.zeros((0, 4)),
        "history": parts["capacity"]["history"],
    }
    after = Diagnostician("d", MEASURED_NMC, 100.0)
    after.restore_state(persist.pack(header, parts))
    assert after.capacity.capacity_ah == d_before.capacity_ah
    assert after.capacity.anchors.shape == (0, 6)
    np.testing.assert_array_equal(after.string_soc.soc_pct, before.string_soc.soc_pct)
