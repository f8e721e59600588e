"""Register maps as data: validation of map files, read planning, and decoding (pure logic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bess_edge.drivers.modbus_decode import Decoder, image_size, plan_blocks
from bess_edge.drivers.register_map import Field, MapError, load_map, shipped_maps

from bess_edge.config import ConfigError, load_config
from bess_edge.model import Quality

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
