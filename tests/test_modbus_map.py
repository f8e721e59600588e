"""Register maps as data: validation of map files, read planning, and decoding (pure logic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bess_edge.drivers.modbus import ReadingLayout
from bess_edge.drivers.modbus_decode import Decoder, image_size, plan_blocks
from bess_edge.drivers.register_map import Field, MapError, load_map, shipped_maps

from bess_edge.config import ConfigError, load_config
from bess_edge.model import Quality, Reading

REPO = Path(__file__).resolve().parent.parent


def write_map(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bms.toml"
    path.write_text('[map]\nname = "t"\n' + body)
    return str(path)


def test_every_shipped_map_loads_and_names_its_source() -> None:
    assert {"generic-16s-example", "rack-hv-example"} <= set(shipped_maps())
    for name in shipped_maps():
        register_map = load_map(name)
        assert register_map.header.source, f"{name} must say where its layout comes from"
        assert register_map.fields


def test_cell_range_of_400_cells_is_read_in_blocks_of_at_most_125() -> None:
    cells = Field("cell_voltage_v", "holding", 1000, "u16", count=400)
    blocks = plan_blocks([cells])
    assert [b.count for b in blocks] == [125, 125, 125, 25]
    assert [b.address for b in blocks] == [1000, 1125, 1250, 1375]


def test_contiguous_fields_are_coalesced_and_functions_kept_apart() -> None:
    fields = [
        Field("pack_voltage_v", "holding", 10, "u32"),
        Field("pack_current_a", "holding", 12, "s16"),
        Field("bms_soc_pct", "holding", 14, "u16"),  # gap at 13: a separate read by default
        Field("bms_soh_pct", "input", 13, "u16"),
    ]
    blocks = plan_blocks(fields)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        ("holding", 10, 3),
        ("holding", 14, 1),
        ("input", 13, 1),
    ]
    assert next((b.address, b.count) for b in plan_blocks(fields, max_gap=1)) == (10, 5)


def test_a_32_bit_value_is_never_cut_between_two_reads() -> None:
    fields = [Field("cell_voltage_v", "holding", 0, "u16", count=124),
              Field("pack_voltage_v", "holding", 124, "u32")]  # fmt: skip
    blocks = plan_blocks(fields)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 2)]


def test_decoder_applies_word_order_scale_factor_register_and_sentinels() -> None:
    fields = [
        Field("pack_voltage_v", "holding", 0, "u32", word_order="little", factor=1e-3),
        Field("pack_current_a", "holding", 2, "s16", scale_address=3),
        Field("extra.cycle_count", "holding", 4, "u16", missing=0xFFFF, flag_missing=False),
        Field("bms_soc_pct", "holding", 5, "u16", valid_min=0, valid_max=100),
    ]
    blocks = plan_blocks(fields)
    image = np.array([0xCF08, 0x0000, (-1234) & 0xFFFF, (-1) & 0xFFFF, 0xFFFF, 101], np.uint16)
    decoded = Decoder(fields, blocks).decode(image, np.ones(image_size(blocks), bool))
    assert decoded.values["pack_voltage_v"][0] == 53.0  # 0x0000CF08 mV, low word first
    assert decoded.values["pack_current_a"][0] == pytest.approx(-123.4)  # x 10^-1
    assert math.isnan(decoded.values["extra.cycle_count"][0])  # optional: silent
    assert math.isnan(decoded.values["bms_soc_pct"][0])
    assert [q for q, _ in decoded.problems] == [Quality.OUT_OF_RANGE]


def test_unit_that_does_not_fit_the_field_is_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, '[fields.pack_voltage_v]\naddress = 0\nunit = "A"\n')
    with pytest.raises(MapError, match="pack_voltage_v: unit 'A' is not a voltage"):
        load_map(path)


def test_unknown_reading_field_is_rejected_with_the_known_ones(tmp_path: Path) -> None:
    path = write_map(tmp_path, "[fields.pack_volts]\naddress = 0\n")
    with pytest.raises(MapError, match=r"fields\.pack_volts: not a Reading field; known: pack_"):
        load_map(path)


def test_typo_in_a_map_key_names_the_key_path(tmp_path: Path) -> None:
    path = write_map(tmp_path, "[fields.bms_soc_pct]\naddress = 0\nscael = 0.1\n")
    with pytest.raises(MapError, match=r"bms\.toml: fields\.bms_soc_pct\.scael: Extra inputs"):
        load_map(path)


def test_bad_map_in_a_device_is_reported_by_the_config_loader(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nid = "s"\n[[devices]]\nid = "bms"\ndriver = "modbus"\n'
        '[devices.options]\nhost = "127.0.0.1"\nmap = "no-such-map"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "devices[0].options" in str(info.value)
    assert "no shipped register map 'no-such-map'" in str(info.value)


def test_a_device_without_cell_voltages_needs_its_series_count(tmp_path: Path) -> None:
    """Without cells the series count cannot be learned, and the pack voltage over the
    nominal cell voltage misjudged a 16S LFP pack near empty as 17 cells."""
    pack_map = write_map(
        tmp_path, '[fields.pack_voltage_v]\naddress = 0\nscale = 0.01\nunit = "V"\n'
    )
    site = '[site]\nid = "s"\n[[devices]]\nid = "bms"\ndriver = "modbus"\n{}'
    site += f'[devices.options]\nhost = "127.0.0.1"\nmap = "{pack_map}"\n'
    config = tmp_path / "site.toml"
    config.write_text(site.format(""))
    with pytest.raises(ConfigError, match=r"devices\[0\]\.series_cells: required"):
        load_config(config)
    config.write_text(site.format("series_cells = 16\n"))
    assert load_config(config).devices[0].series_cells == 16


def test_shipped_modbus_example_config_is_valid() -> None:
    settings = load_config(REPO / "config" / "modbus-example.toml")
    assert {d.driver for d in settings.devices} >= {"modbus", "sunspec"}


def test_the_map_example_in_the_docs_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "modbus.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "docs-example.toml"
    path.write_text(example)
    register_map = load_map(str(path))
    names = {f.name for f in register_map.fields}
    assert {"pack_voltage_v", "cell_voltage_v", "extra.cycle_count"} <= names
    assert [f.name for f in register_map.info] == ["info.serial_number"]


def _mixed_fields() -> list[Field]:
    """Every type, word order, scale, offset, inversion, limit and sentinel a map can use."""
    return [
        Field("cell_voltage_v", "holding", 0, "u16", count=8, factor=1e-3, valid_min=0.0,
              valid_max=5.0),
        Field("cell_temperature_c", "holding", 8, "s16", count=3, scale=0.1, valid_min=-55.0,
              valid_max=150.0),
        Field("pack_voltage_v", "holding", 11, "u32", word_order="little", factor=1e-3),
        Field("pack_current_a", "holding", 13, "s32", factor=1e-3, invert=True),
        Field("pack_power_w", "holding", 15, "f32", valid_min=-2e7, valid_max=2e7),
        Field("bms_soc_pct", "holding", 17, "u16", valid_min=0, valid_max=100, missing=0xFFFF),
        Field("extra.temperature_k", "holding", 18, "s16", offset=2731.5, scale=0.1,
              si_offset=-273.15, missing=0x8000, flag_missing=False),
        Field("extra.energy_wh", "input", 0, "f32", word_order="little"),
        Field("fault_flags", "input", 2, "u32"),
    ]  # fmt: skip


def test_straight_line_decoder_gives_the_numpy_decoders_values_bit_for_bit() -> None:
    fields = _mixed_fields()
    blocks = plan_blocks(fields)
    decoder = Decoder(fields, blocks)
    assert decoder.clean is not None
    size = image_size(blocks)
    ok = np.ones(size, dtype=np.bool_)
    rng = np.random.default_rng(11)
    clean = flagged = 0
    for trial in range(3000):
        # Mostly plausible images (small values), some with registers anywhere in 0..65535.
        high = 65536 if trial % 3 == 0 else 120
        image = rng.integers(0, high, size).astype(np.uint16)
        if trial % 7 == 0:
            image[17] = 0xFFFF  # bms_soc_pct "not available"
        decoded = decoder.decode(image, ok, all_read=True)
        fast = decoder.values_if_clean(image.astype(">u2").tobytes())
        if decoded.problems or np.isnan(decoded.flat).any():
            assert fast is None, (image.tolist(), decoded.problems)
            flagged += 1
        else:
            assert fast is not None, image.tolist()
            assert np.array_equal(np.array(fast), decoded.flat), image.tolist()
            assert all(type(v) is float for v in fast)
            clean += 1
    assert clean > 500 and flagged > 500  # both paths were exercised


def test_maps_with_scale_factor_registers_or_many_cells_keep_the_numpy_decoder() -> None:
    with_sf = [Field("pack_current_a", "holding", 2, "s16", scale_address=3)]
    assert Decoder(with_sf, plan_blocks(with_sf)).clean is None
    many = [Field("cell_voltage_v", "holding", 0, "u16", count=400, factor=1e-3)]
    assert Decoder(many, plan_blocks(many)).clean is None


@pytest.mark.parametrize("fields", [list(load_map("generic-16s-example").fields), _mixed_fields()])
def test_a_clean_poll_builds_the_same_reading_either_way(fields: list[Field]) -> None:
    blocks = plan_blocks(fields)
    decoder = Decoder(fields, blocks)
    layout = ReadingLayout(decoder.slices)
    ok = np.ones(image_size(blocks), dtype=np.bool_)
    rng = np.random.default_rng(5)
    built = 0
    for _ in range(1000):
        image = rng.integers(0, 100, image_size(blocks)).astype(np.uint16)
        values = decoder.values_if_clean(image.astype(">u2").tobytes())
        if values is None:
            continue
        fast = layout.clean_reading("rack-1", 7, values)
        slow = layout.reading("rack-1", 7, decoder.decode(image, ok, all_read=True).flat)
        for attr in Reading.__slots__:
            a, b = getattr(fast, attr), getattr(slow, attr)
            if isinstance(a, np.ndarray):
                assert a.dtype == np.float64 and np.array_equal(a, b, equal_nan=True), attr
            else:
                assert a == b or (a != a and b != b), (attr, a, b)  # NaN equals NaN here
        built += 1
    assert built > 100


def test_extra_values_are_range_checked_by_the_unit_in_their_name(tmp_path: Path) -> None:
    """A 32-bit cycle counter reading all ones (4,294,967,295) and a 9.999 V cell maximum are
    null with out_of_range; a map's own valid_max still wins."""
    path = write_map(
        tmp_path,
        '[fields.pack_voltage_v]\naddress = 0\nscale = 0.01\nunit = "V"\n'
        '[extra.cycle_count]\naddress = 1\ntype = "u32"\n'
        '[extra.cell_voltage_max_v]\naddress = 3\nunit = "mV"\n'
        '[extra.max_charge_current_a]\naddress = 4\nunit = "A"\nvalid_max = 100\n',
    )
    register_map = load_map(path)
    blocks = plan_blocks(register_map.fields)
    decoder = Decoder(register_map.fields, blocks)
    image = np.array([5318, 0xFFFF, 0xFFFF, 9999, 140], dtype=np.uint16)
    decoded = decoder.decode(image, np.ones(image_size(blocks), bool))
    reading = ReadingLayout(decoder.slices).reading("d", 0, decoded.flat)
    assert reading.pack_voltage_v == pytest.approx(53.18)
    assert math.isnan(reading.extra["cycle_count"])
    assert math.isnan(reading.extra["cell_voltage_max_v"])
    assert math.isnan(reading.extra["max_charge_current_a"])  # 140 A beyond the map's 100 A
    notes = " ".join(note for _, note in decoded.problems)
    assert "extra.cycle_count" in notes and "extra.cell_voltage_max_v" in notes
    assert {q for q, _ in decoded.problems} == {Quality.OUT_OF_RANGE}
