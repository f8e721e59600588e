"""The shipped default rules: derived from the chemistry presets, includable, quiet on a healthy
string and loud on a hot cell."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from bess_edge.drivers.sim import SimOptions, SimulatedString

from bess_edge.alerts.engine import AlertEngine
from bess_edge.alerts.metrics import known_metrics
from bess_edge.chemistry import PRESETS
from bess_edge.config import ConfigError, ThresholdRule, load_config
from bess_edge.diagnostics import Diagnostician
from bess_edge.resources import data_dir

FILES = {"lfp": "thresholds-lfp.toml", "nmc": "thresholds-nmc.toml"}
FILES["lead_acid"] = "thresholds-lead-acid.toml"


def shipped_rules(name: str) -> dict[str, ThresholdRule]:
    raw = tomllib.loads((data_dir("config") / name).read_text())
    return {r["name"]: ThresholdRule(**r) for r in raw["thresholds"]}


@pytest.mark.parametrize("chemistry", sorted(FILES))
def test_default_limits_are_the_chemistry_presets_limits(chemistry: str):
    c, rules = PRESETS[chemistry], shipped_rules(FILES[chemistry])
    assert rules["cell-overvoltage"].above == c.cell_voltage_max_v
    assert rules["cell-undervoltage"].below == c.cell_voltage_min_v
    assert rules["cell-overtemperature"].above == c.charge_temp_max_c
    assert rules["cell-undertemperature"].below == c.charge_temp_min_c
    assert rules["soh-end-of-life"].below == c.end_of_life_soh_pct
    assert {r.metric for r in rules.values()} <= known_metrics()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SITE = """
[site]
id = "s"
[storage]
path = "x.db"
[[devices]]
id = "rack-1"
driver = "sim"
"""


def test_include_finds_the_shipped_file_and_own_rules_override_by_name(tmp_path: Path):
    config = write(
        tmp_path / "site.toml",
        'include_thresholds = ["thresholds-lfp.toml"]\n'
        + SITE
        + '[[thresholds]]\nname = "overcurrent-charge"\nmetric = "pack_current_a"\nabove = 50\n',
    )
    rules = {r.name: r for r in load_config(config).thresholds}
    assert set(rules) == set(shipped_rules(FILES["lfp"]))
    assert rules["overcurrent-charge"].above == 50  # this site's 100 Ah string
    assert rules["cell-overvoltage"].above == 3.65


def test_a_missing_or_invalid_included_file_is_a_config_error_naming_it(tmp_path: Path):
    missing = write(tmp_path / "a.toml", 'include_thresholds = ["nope.toml"]\n' + SITE)
    with pytest.raises(ConfigError) as error:
        load_config(missing)
    assert "include_thresholds[0]: 'nope.toml': file not found" in str(error.value)
    write(tmp_path / "mine.toml", '[[thresholds]]\nname = "x"\nmetric = "soc_pct"\n')
    bad = write(tmp_path / "b.toml", 'include_thresholds = ["mine.toml"]\n' + SITE)
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert "mine.toml: thresholds[0]: give exactly one of 'above' or 'below'" in str(error.value)


def simulate(chemistry: str, polls: int, **options: Any) -> list[Any]:
    """The default rules on a simulated 280 Ah string through the real diagnostics, one poll per
    simulated minute; every transition they produce."""
    rules = list(shipped_rules(FILES[chemistry]).values())
    engine = AlertEngine(rules, 0, [])
    preset = PRESETS[chemistry]
    sim = SimulatedString(SimOptions(cells=16, seed=5, **options), preset, 280.0)
    diagnostician = Diagnostician("rack-1", preset, 280.0)
    out = []
    for i in range(polls):
        sim.advance(60.0)
        reading = sim.measure(1_700_000_000_000 + i * 60_000, "rack-1")
        out += engine.evaluate(reading, diagnostician.update(reading))
    return out


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_default_rules_stay_quiet_over_a_healthy_day(chemistry: str):
    transitions = simulate(chemistry, 24 * 60, profile="daily", c_rate=0.1)
    assert [(t.rule, t.cell) for t in transitions] == []


def test_default_rules_name_the_overheating_cell():
    fault = {"kind": "over_temperature", "cell": 7, "heat_w": 300.0, "at_s": 0.0}
    transitions = simulate("lfp", 60, profile="idle", faults=[fault])
    hot = [(t.rule, t.transition, t.cell) for t in transitions if t.rule.startswith("cell-")]
    assert hot[:2] == [
        ("cell-temperature-high", "raised", 7),
        ("cell-overtemperature", "raised", 7),
    ]


def test_every_toml_example_in_the_alerts_doc_is_a_valid_config(tmp_path: Path):
    doc = (Path(__file__).parent.parent / "docs" / "alerts.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.DOTALL)
    assert len(blocks) == 4
    for i, block in enumerate(blocks):
        top, _, rules = block.partition("[[thresholds]]")
        text = top + SITE + ("[[thresholds]]" + rules if rules else "")
        settings = load_config(write(tmp_path / f"doc-{i}.toml", text))
        assert settings.thresholds
