"""The [api] section: defaults, clear errors, and where the API's own threshold rules come in."""

from __future__ import annotations

import pytest

from bess_edge.config import ConfigError, load_config

SHIPPED_RULE = "cell-overvoltage"  # from the shipped thresholds-lfp.toml


def test_defaults_listen_on_loopback_with_files_beside_the_store(make_config, tmp_path):
    settings = load_config(make_config())
    api = settings.api
    assert (api.host, api.port, api.cors_origins) == ("127.0.0.1", 8080, [])
    assert api.keys_path(settings.storage) == tmp_path / "api-keys.json"
    assert api.thresholds_path(settings.storage) == tmp_path / "api-thresholds.toml"


def test_tls_cert_without_key_is_refused_naming_the_key(make_config, tmp_path):
    config = make_config(api={"tls_cert_file": str(tmp_path / "cert.pem")})
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.lines() == [
        f"{config}: api: tls_cert_file and tls_key_file must be given together"
    ]


def test_api_rules_override_shipped_defaults_but_not_the_config_files_own(make_config, tmp_path):
    own = {"name": "pack-high", "metric": "pack_voltage_v", "above": 60.0}
    config = make_config(thresholds=[own])
    config.write_text('include_thresholds = ["thresholds-lfp.toml"]\n' + config.read_text())
    (tmp_path / "api-thresholds.toml").write_text(
        '[[thresholds]]\nname = "pack-high"\nmetric = "pack_voltage_v"\nabove = 1.0\n\n'
        f'[[thresholds]]\nname = "{SHIPPED_RULE}"\nmetric = "cell_voltage_v"\nabove = 3.5\n\n'
        '[[thresholds]]\nname = "api-only"\nmetric = "pack_current_a"\nabove = 90.0\n'
    )
    rules = {r.name: r for r in load_config(config).thresholds}
    assert rules["pack-high"].above == 60.0  # the config file's own rule wins
    assert rules[SHIPPED_RULE].above == 3.5  # the API's edit overrides the shipped default
    assert rules["api-only"].above == 90.0


def test_a_bad_api_rule_file_is_reported_with_its_path(make_config, tmp_path):
    config = make_config()
    bad = tmp_path / "api-thresholds.toml"
    bad.write_text('[[thresholds]]\nname = "x"\nmetric = "pack_voltage_v"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.lines() == [f"{bad}: thresholds[0]: give exactly one of 'above' or 'below'"]
