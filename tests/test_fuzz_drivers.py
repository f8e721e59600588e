"""Property-based fuzzing of what devices and captures hand us: CAN frames, Modbus registers and
capture lines of any content.

The properties are the driver contract (DESIGN.md, invariant 5): bad data never raises through
the decode path, and whatever comes out is either a plausible value or null with a flag.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest
from bess_edge.drivers.can_decode import FrameDecoder, valid_range
from bess_edge.drivers.can_map import DecodeOptions
from bess_edge.drivers.capture import CaptureProblems, parse_candump_line, read_frames
from bess_edge.drivers.modbus import ReadingLayout
from bess_edge.drivers.modbus_decode import Decoder, image_size, plan_blocks
from bess_edge.drivers.plausible import plausible_range
from bess_edge.drivers.register_map import load_map, shipped_maps
from bess_edge.drivers.sunspec import ModelInstance, point_field
from bess_edge.drivers.sunspec_models import NUMERIC, layout
from hypothesis import assume, given
from hypothesis import strategies as st
from thirdparty import FOXBMS

from bess_edge.model import Quality, Reading

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parent.parent
CAN_CONFIGS = ["can-rack.toml", "can-pylontech.toml", "can-foxbms.toml"]


def _decode_options(config: str) -> DecodeOptions:
    options = tomllib.loads((REPO / "config" / config).read_text())["devices"][0]["options"]
    if config == "can-foxbms.toml":
        if not (FOXBMS / "foxbms.dbc").is_file():
            pytest.skip(f"foxBMS DBC not found in {FOXBMS}")
        options["dbc"] = str(FOXBMS / "foxbms.dbc")
    keys = ("dbc", "signals", "signal_timeout_s", "invert_current")
    return DecodeOptions.model_validate({k: v for k, v in options.items() if k in keys})


_OPTIONS: dict[str, DecodeOptions] = {}


def decode_options(config: str) -> DecodeOptions:
    if config not in _OPTIONS:
        _OPTIONS[config] = _decode_options(config)
    return _OPTIONS[config]


_SHARED: dict[str, FrameDecoder] = {}


def shared_decoder(config: str) -> FrameDecoder:
    """One decoder per mapping for properties about the frame just fed, whatever came before
    (building foxBMS's costs ~30 ms, most of an example)."""
    if config not in _SHARED:
        _SHARED[config] = FrameDecoder.for_options(decode_options(config), "dev")
    return _SHARED[config]


def assert_reading_is_plausible_or_flagged(r: Reading, names: set[str]) -> None:
    """Every value a driver produced is null or within its plausible range, and every null
    among the mapped values is explained by a flag."""
    for name in names & {"pack_voltage_v", "pack_current_a", "bms_soc_pct", "bms_soh_pct"}:
        value = getattr(r, name)
        lo, hi = plausible_range(name)
        assert math.isnan(value) or lo <= value <= hi, (name, value)
        if math.isnan(value):
            assert r.quality & (Quality.MISSING | Quality.OUT_OF_RANGE | Quality.STALE), name
    for name, value in r.extra.items():
        lo, hi = plausible_range(name)
        assert math.isnan(value) or lo <= value <= hi, (name, value)
    for name in ("cell_voltage_v", "cell_temperature_c"):
        cells = getattr(r, name)
        finite = cells[np.isfinite(cells)]
        lo, hi = plausible_range(name)
        assert ((finite >= lo) & (finite <= hi)).all(), (name, finite)
    assert isinstance(r.fault_flags, int) and isinstance(r.status_flags, int)
    assert r.fault_flags >= 0 and r.status_flags >= 0


FRAMES = st.lists(
    st.tuples(
        st.integers(0, 2),  # which mapped message (or, with 2, any id at all)
        st.integers(0, 0x1FFF_FFFF),
        st.binary(min_size=0, max_size=64),
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.parametrize("config", CAN_CONFIGS)
@given(frames=FRAMES, now_s=st.floats(0.0, 100.0))
def test_any_frames_decode_to_plausible_or_flagged_values(config: str, frames, now_s: float):
    decoder = FrameDecoder.for_options(decode_options(config), "dev")
    ids = sorted({s.message.frame_id for s in decoder.slots})
    lengths = {s.message.frame_id: s.message.length for s in decoder.slots}
    for ts, (pick, any_id, data) in enumerate(frames):
        frame_id = ids[any_id % len(ids)] if pick < 2 else any_id
        if pick == 0 and frame_id in lengths:  # mostly right-sized, so the values get decoded
            data = (data * (lengths[frame_id] // max(len(data), 1) + 1))[: lengths[frame_id]]
            data = data.ljust(lengths[frame_id], b"\xff")
        decoder.ingest(frame_id, data, float(ts) / 10.0)
    reading = decoder.reading("dev", now_s, 0)
    c = decoder.counters
    assert c.frames == len(frames)
    assert c.decoded + c.unmapped + c.unknown_id + c.wrong_dlc + c.undecodable == c.frames
    assert_reading_is_plausible_or_flagged(reading, {s.field for s in decoder.slots})
    if c.wrong_dlc or c.undecodable:
        assert Quality.DECODE_ERROR in reading.quality


@pytest.mark.parametrize("config", CAN_CONFIGS)
@given(data=st.data())
def test_in_range_values_survive_the_can_decode_unchanged(config: str, data):
    """A payload whose values are all plausible decodes with no out-of-range flag and with the
    values cantools' own Message.decode gives."""
    options = decode_options(config)
    decoder = shared_decoder(config)
    messages = {s.message.frame_id: s.message for s in decoder.slots}
    message = messages[data.draw(st.sampled_from(sorted(messages)))]
    payload = data.draw(st.binary(min_size=message.length, max_size=message.length))
    try:
        expected = message.decode(payload, decode_choices=False)
    except Exception:  # a multiplexer id the DBC does not define
        assume(False)
    decoder.ingest(message.frame_id, payload, 0.0)
    reading = decoder.reading("dev", 0.0, 0)
    for slot in decoder.slots:
        if slot.message is not message or slot.signal.name not in expected:
            continue
        si = expected[slot.signal.name] * slot.factor + slot.offset
        lo, hi = valid_range(slot)
        if slot.kind == "scalar" and slot.field not in ("status_flags", "fault_flags"):
            got = getattr(reading, slot.field, reading.extra.get(slot.field))
            if options.invert_current and slot.field in ("pack_current_a", "pack_power_w"):
                got = -got
            if lo <= si <= hi:
                assert got == pytest.approx(si), slot
            else:
                assert math.isnan(got) and Quality.OUT_OF_RANGE in reading.quality, slot


# -- Modbus ---------------------------------------------------------------------------------


def _map_decoder(name: str) -> tuple[Decoder, ReadingLayout, int]:
    register_map = load_map(name)
    blocks = plan_blocks(register_map.fields, register_map.header.max_registers)
    decoder = Decoder(register_map.fields, blocks)
    return decoder, ReadingLayout(decoder.slices), image_size(blocks)


_MAPS = {name: _map_decoder(name) for name in shipped_maps()}
WORDS = st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FC0, 0xFF80]) | st.integers(0, 0xFFFF)


@pytest.mark.parametrize("name", sorted(_MAPS))
@given(data=st.data())
def test_any_registers_decode_to_plausible_or_flagged_values(name: str, data):
    decoder, reading_layout, size = _MAPS[name]
    image = np.array(data.draw(st.lists(WORDS, min_size=size, max_size=size)), dtype=np.uint16)
    ok = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    if data.draw(st.booleans()):
        ok[:] = True
    decoded = decoder.decode(image, ok)
    for f, s in decoded.slices:
        values = decoded.flat[s]
        finite = values[np.isfinite(values)]
        assert ((finite >= f.valid_min) & (finite <= f.valid_max)).all(), f.name
        if not np.isfinite(values).all():
            assert decoded.problems, f"{f.name} is null with no problem reported"
    reading = reading_layout.reading("dev", 0, decoded.flat)
    for quality, note in decoded.problems:
        reading.flag(quality, note)
    assert_reading_is_plausible_or_flagged(reading, {f.name for f in decoder.fields})
    if ok.all():
        clean = decoder.values_if_clean(image.astype(">u2").tobytes())
        if clean is not None:  # the straight-line decoder agrees bit for bit
            assert not decoded.problems
            np.testing.assert_array_equal(np.array(clean), decoded.flat)


# Model lengths pysunspec2's definitions accept (the repeating groups' counts follow from them).
SUNSPEC_MODELS = st.sampled_from([(802, 62), (803, 58), (804, 78), (805, 106)])


@given(model=SUNSPEC_MODELS, data=st.data())
def test_any_sunspec_storage_registers_decode_to_plausible_or_flagged_values(model, data):
    model_id, length = model
    points = layout(model_id, length)
    instance = ModelInstance(model_id, 40002, length, 0)
    fields = [point_field(instance, p) for p in points if p.type in NUMERIC]
    blocks = plan_blocks(fields, 125)
    decoder = Decoder(fields, blocks)
    size = image_size(blocks)
    image = np.array(data.draw(st.lists(WORDS, min_size=size, max_size=size)), dtype=np.uint16)
    decoded = decoder.decode(image, np.ones(size, dtype=bool))
    for f, s in decoded.slices:
        finite = decoded.flat[s][np.isfinite(decoded.flat[s])]
        assert ((finite >= f.valid_min) & (finite <= f.valid_max)).all(), f.name


# -- Replay ---------------------------------------------------------------------------------


@given(line=st.text(max_size=120))
def test_any_text_is_a_candump_frame_or_a_value_error(line: str):
    try:
        msg = parse_candump_line(line)
    except ValueError:
        return
    if msg is not None and not (msg.is_remote_frame or msg.is_error_frame):
        assert len(msg.data) == msg.dlc <= 64


CAN_FRAMES = st.tuples(
    st.floats(0, 2e9, allow_nan=False).map(lambda t: round(t, 6)),
    st.booleans(),
    st.integers(0, 0x1FFF_FFFF),
    st.binary(max_size=8),
)


def candump_line(ts: float, extended: bool, can_id: int, data: bytes) -> str:
    ident = f"{can_id:08X}" if extended else f"{can_id & 0x7FF:03X}"
    return f"({ts:.6f}) can0 {ident}#{data.hex().upper()}"


@given(frame=CAN_FRAMES)
def test_a_candump_line_reads_back_as_the_frame_written(frame: tuple[float, bool, int, bytes]):
    ts, extended, can_id, data = frame
    assume(not (extended and can_id & 0x2000_0000))  # the error-frame flag
    msg = parse_candump_line(candump_line(*frame))
    assert msg is not None
    assert msg.timestamp == pytest.approx(ts, abs=1e-6)
    assert msg.arbitration_id == (can_id if extended else can_id & 0x7FF)
    assert msg.is_extended_id == extended and bytes(msg.data) == data


@given(
    good=st.lists(CAN_FRAMES, min_size=1, max_size=20),
    junk=st.lists(st.tuples(st.integers(0, 25), st.text(min_size=1, max_size=60)), max_size=10),
)
def test_a_capture_keeps_every_good_frame_whatever_lines_are_mixed_in(
    tmp_path_factory: Any, good, junk
):
    good = [g for g in good if not (g[1] and g[2] & 0x2000_0000)]
    lines = [candump_line(*g) for g in good]
    bad = 0
    for at, text in sorted(junk, reverse=True):
        text = text.replace("\n", " ").replace("\r", " ")  # one line each
        if not text.strip():
            continue
        try:
            parse_candump_line(text)
            continue  # happens to be a frame: not junk
        except ValueError:
            bad += 1
        lines.insert(min(at, len(lines)), text)
    path = tmp_path_factory.mktemp("capture") / "fuzz.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = CaptureProblems()
    frames = list(read_frames(path, problems))
    assert len(frames) == len(good)
    assert problems.count == bad
    assert [bytes(f.data) for f in frames] == [g[3] for g in good]


@pytest.mark.parametrize("suffix", [".asc", ".trc"])
@given(junk=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=8))
def test_junk_lines_in_asc_and_trc_captures_never_abort_the_replay(
    tmp_path_factory: Any, suffix: str, junk: list[str]
):
    path = tmp_path_factory.mktemp("capture") / f"fuzz{suffix}"
    writer = can.Logger(path)
    for k in range(5):
        msg = can.Message(timestamp=1_780_000_000.0 + k, arbitration_id=0x100 + k,
                          data=bytes([k] * 8), is_extended_id=False, channel=0)  # fmt: skip
        writer.on_message_received(msg)
    writer.stop()
    lines = path.read_text().splitlines()
    first_frame = next(i for i, line in enumerate(lines) if "Rx" in line)
    for text in junk:
        clean = " ".join(text.split())
        if clean and not clean.startswith(";"):
            lines.insert(first_frame + 1, clean)
    path.write_text("\n".join(lines) + "\n")
    frames = list(read_frames(path, CaptureProblems()))
    ids = [f.arbitration_id for f in frames]
    assert {0x100, 0x101, 0x102, 0x103, 0x104} <= set(ids)
