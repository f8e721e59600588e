"""Check a config in one pass: every problem at once, each with its key path and its source.

Pydantic stops early in two ways that hid problems from an integrator: a model's cross-field
check runs only once all its fields are valid (a bad message template hid a ``clear`` on the
wrong side of the level), and the checks across devices ran only once the whole file was valid
(a bad device id hid a reserved one, a top-level typo hid an unknown driver option). Here a key
that fails is taken out and the model validated again until nothing new turns up, and the device
checks read the raw tables. Values are attributed to the environment variable that supplied them
(``BESS_EDGE__SECTION__KEY``) rather than to the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_settings import EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from bess_edge.chemistry import get_chemistry, load_ocv_table, override_problems
from bess_edge.config import (
    RESERVED_DEVICE_IDS,
    ConfigError,
    DeviceConfig,
    Problem,
    Settings,
    StorageConfig,
    ThresholdRule,
    api_thresholds_path,
    read_toml,
)
from bess_edge.config_reasons import Loc, key_path, reason, wrong_scalar_types
from bess_edge.diagnostics.electrode_tracker import read_reference

# (key path, reason, source): source "" is the file being checked.
Found = list[tuple[Loc, str, str]]
ENV_PREFIX = "BESS_EDGE__"
_PATH: TypeAdapter[Path | None] = TypeAdapter(Path | None)
MAX_PASSES = 8  # each pass takes out the keys that failed; a real file needs two or three


def check_config(path: Path, raw: dict[str, Any], *, runnable: bool = False) -> Settings:
    """The validated Settings of ``raw`` (read from ``path``), or ConfigError with everything
    that is wrong with it."""
    found: Found = []
    env = _environment(found)
    overridden = _env_paths(env)
    found += [
        (loc, why, "")
        for loc, why in wrong_scalar_types(Settings, raw)
        if not any(loc[:n] in overridden for n in range(1, len(loc) + 1))
    ]
    data = _merge(_paths_beside(path, raw), env)
    _include_api_thresholds(data)
    if isinstance(data.get("include_thresholds"), list):
        data["thresholds"] = _merge_included(path, data, found)
    settings, errors = validate_all(Settings, data)
    found += [(loc, why, "") for loc, why in errors]
    parsed: dict[int, BaseModel] = {}
    if isinstance(data.get("devices"), list):
        found += [(loc, why, "") for loc, why in _device_problems(data["devices"], parsed)]
    if isinstance(data.get("thresholds"), list):
        found += [(loc, why, "") for loc, why in _duplicate_rules(data["thresholds"])]
    if runnable:
        from bess_edge.preflight import preflight

        found += [(loc, why, "") for loc, why in preflight(data)]
    if found or settings is None:
        raise ConfigError(path, _attribute(found, env))
    assert isinstance(settings, Settings)
    for i, options in parsed.items():
        settings.devices[i]._parsed_options = options
    return settings


def check_thresholds_file(path: Path) -> list[ThresholdRule]:
    """A rule file meant for ``include_thresholds``, checked on its own."""
    raw = read_toml(path)
    found = [(loc, why, "") for loc, why in _rule_file_problems(raw)]
    if found:
        raise ConfigError(path, _attribute(found, {}))
    return [ThresholdRule.model_validate(rule) for rule in raw.get("thresholds", [])]


def is_thresholds_file(raw: dict[str, Any]) -> bool:
    """A file with nothing but [[thresholds]]: a rule file, not a site's config."""
    return "thresholds" in raw and set(raw) == {"thresholds"}


def validate_all(
    model: type[BaseModel], data: Any, context: dict[str, Any] | None = None
) -> tuple[BaseModel | None, list[tuple[Loc, str]]]:
    """The validated model, or None and every problem: after each failing pass, the keys that
    failed are taken out of a copy and the model is validated again, so that the checks pydantic
    runs only on valid fields (model validators) get their turn too."""
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        errors = exc.errors()
    data = copy.deepcopy(data)
    seen: set[tuple[Loc, str]] = set()
    removed: set[Loc] = set()
    out: list[tuple[Loc, str]] = []
    for _ in range(MAX_PASSES):
        progress = False
        for error in errors:
            loc = tuple(error["loc"])
            if error["type"] == "missing" and loc in removed:
                continue  # taken out by us, already reported
            why = reason(error, model)
            if (loc, why) in seen:
                continue
            seen.add((loc, why))
            out.append((loc, why))
            taken = _take_out(data, loc)
            if taken is not None:
                removed.add(taken)
                progress = True
        if not progress:
            break
        try:
            model.model_validate(data, context=context)
            break
        except ValidationError as exc:
            errors = exc.errors()
    return None, out


def _take_out(data: Any, loc: Loc) -> Loc | None:
    """Delete the deepest table key on ``loc``; its path, or None when the error is not under a
    key (a list item or a whole model: taking it out would shift every index after it)."""
    node, last = data, None
    for depth, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            last = (node, part, depth)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            last = None
            node = node[part]
        else:
            break
    if last is None:
        return None
    table, key, depth = last
    del table[key]
    return loc[: depth + 1]


def _environment(found: Found) -> dict[str, Any]:
    try:
        return EnvSettingsSource(Settings)()
    except SettingsError as exc:
        found.append(((), f"an environment variable {ENV_PREFIX}...: {exc}", "environment"))
        return {}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins, table by table (an environment variable replaces one key of a section)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_paths(env: dict[str, Any], prefix: Loc = ()) -> dict[Loc, str]:
    """Every key path the environment supplied, with the variable that did."""
    out: dict[Loc, str] = {}
    for key, value in env.items():
        loc = (*prefix, key)
        if isinstance(value, dict) and value:
            out.update(_env_paths(value, loc))
        else:
            out[loc] = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
    return out


def _attribute(found: Found, env: dict[str, Any]) -> list[Problem]:
    variables = _env_paths(env)
    problems = []
    for loc, why, source in found:
        if not source:
            for n in range(len(loc), 0, -1):
                if loc[:n] in variables:
                    source = f"environment variable {variables[loc[:n]]}"
                    break
        problem = Problem(key_path(loc), why, source)
        if problem not in problems:
            problems.append(problem)
    return problems


def _include_api_thresholds(data: dict[str, Any]) -> None:
    """Read the API's rule file, when it exists, first among the included ones: an API edit
    overrides a shipped default of the same name, never a rule of this file itself."""
    api, storage = data.get("api", {}), data.get("storage", {})
    includes = data.get("include_thresholds", [])
    if not (isinstance(api, dict) and isinstance(storage, dict) and isinstance(includes, list)):
        return  # the Settings model reports the type error with its key path
    try:
        thresholds_file = _PATH.validate_python(api.get("thresholds_file"))
        storage_path = _PATH.validate_python(storage.get("path")) or StorageConfig().path
        path = api_thresholds_path(thresholds_file, storage_path)
    except (ValidationError, ValueError):
        return  # not paths (or a NUL in one): reported with their key paths
    if path.is_file():
        data["include_thresholds"] = [str(path), *includes]


def _merge_included(path: Path, data: dict[str, Any], found: Found) -> Any:
    """This file's rules, then those of the included files it does not override by name. An
    included file's problems are reported with its own path."""
    own = data.get("thresholds", [])
    if not isinstance(own, list):
        return own  # the Settings model reports the type error with its key path
    names = {r.get("name") for r in own if isinstance(r, dict) and isinstance(r.get("name"), str)}
    merged = list(own)
    for i, name in enumerate(data["include_thresholds"]):
        included = _find_included(path, str(name))
        if included is None:
            found.append((("include_thresholds", i), f"{name!r}: file not found", ""))
            continue
        try:
            raw = read_toml(included)
        except ConfigError as exc:
            found += [((), p.reason, str(included)) for p in exc.problems]
            continue
        problems = _rule_file_problems(raw)
        if problems:
            found += [(loc, why, str(included)) for loc, why in problems]
            continue
        rules = raw.get("thresholds", [])
        merged += [r for r in rules if r.get("name") not in names]
        names |= {r.get("name") for r in rules}
    return merged


def _find_included(path: Path, name: str) -> Path | None:
    from bess_edge.resources import data_dir

    for candidate in (path.parent / name, data_dir("config") / name):
        if candidate.is_file():
            return candidate
    return None


def _rule_file_problems(raw: dict[str, Any]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = [
        ((key,), "unknown key in a thresholds file (it holds [[thresholds]] only)")
        for key in raw
        if key != "thresholds"
    ]
    rules = raw.get("thresholds", [])
    if not isinstance(rules, list):
        return [*problems, (("thresholds",), "must be an array of tables: [[thresholds]]")]
    for j, rule in enumerate(rules):
        loc: Loc = ("thresholds", j)
        problems += [((*loc, *p), why) for p, why in wrong_scalar_types(ThresholdRule, rule)]
        problems += [((*loc, *p), why) for p, why in validate_all(ThresholdRule, rule)[1]]
    return problems + _duplicate_rules(rules)


def _duplicate_rules(rules: list[Any]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    for i, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            why = f"duplicate rule name {name!r} (also thresholds[{names[name]}])"
            problems.append((("thresholds", i, "name"), why))
        names.setdefault(name, i)
    return problems


def _device_problems(devices: list[Any], parsed: dict[int, BaseModel]) -> list[tuple[Loc, str]]:
    """Checks across devices and each driver's own options, on the raw tables so that no other
    problem in the file hides them. Validated options go into ``parsed`` by device index."""
    # Imported here: drivers import the model, which must not import config at import time.
    from bess_edge.drivers.base import driver_class

    problems: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue  # the Settings model reports it
        loc: Loc = ("devices", i)
        device_id = device.get("id")
        if isinstance(device_id, str):
            if device_id in seen:
                why = f"duplicate device id {device_id!r} (also devices[{seen[device_id]}])"
                problems.append(((*loc, "id"), why))
            seen.setdefault(device_id, i)
            if device_id in RESERVED_DEVICE_IDS:
                why = f"{device_id!r} is reserved ({RESERVED_DEVICE_IDS[device_id]})"
                problems.append(((*loc, "id"), why))
        problems += _chemistry_override_problems(loc, device)
        problems += _ocv_table_problems(loc, device)
        driver = device.get("driver")
        if not isinstance(driver, str):
            continue  # missing or not a string: the Settings model reports it
        try:
            cls = driver_class(driver)
        except ValueError as exc:
            problems.append(((*loc, "driver"), str(exc)))
            continue
        options = device.get("options", {})
        if not isinstance(options, dict):
            continue
        timeout_s = device.get("timeout_s")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            timeout_s = DeviceConfig.model_fields["timeout_s"].default
        at = (*loc, "options")
        problems += [((*at, *p), why) for p, why in wrong_scalar_types(cls.Options, options)]
        model, errors = validate_all(cls.Options, options, context={"timeout_s": timeout_s})
        problems += [((*at, *p), why) for p, why in errors]
        if model is not None:
            parsed[i] = model
            if device.get("series_cells") is None and _reports_no_cells(model):
                why = (
                    "required: this device reports no cell voltages, so the number of cells in "
                    "series cannot be learned (it is not guessed from the pack voltage)"
                )
                problems.append(((*loc, "series_cells"), why))
    return problems


def _reports_no_cells(options: BaseModel) -> bool:
    """True when the driver's options show no per-cell voltages (a Modbus map or a CAN mapping
    without ``cell_voltage_v``); False when they do or cannot tell before discovery (SunSpec)."""
    return getattr(options, "reports_cell_voltages", None) is False


def _paths_beside(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with each device's relative ``ocv_table`` taken from the config file's folder:
    the file and its table are installed together, while the daemon runs in systemd's
    WorkingDirectory and the CLI wherever the user stands."""
    devices = raw.get("devices")
    if not isinstance(devices, list):
        return raw
    folder = path.absolute().parent
    resolved = [
        {**d, "ocv_table": str(folder / d["ocv_table"])}
        if isinstance(d, dict) and isinstance(d.get("ocv_table"), str)
        else d
        for d in devices
    ]
    return {**raw, "devices": resolved}


def _ocv_table_problems(loc: Loc, device: dict[str, Any]) -> list[tuple[Loc, str]]:
    """A device's OCV table file must exist and be a table, and its electrode reference lines
    (if any) must parse (the readers say why not)."""
    path = device.get("ocv_table")
    if not isinstance(path, str):
        return []  # absent, or a wrong type the Settings model reports
    try:
        load_ocv_table(path)
        read_reference(path)
    except ValueError as exc:
        return [((*loc, "ocv_table"), str(exc))]
    return []


def _chemistry_override_problems(loc: Loc, device: dict[str, Any]) -> list[tuple[Loc, str]]:
    chemistry, overrides = device.get("chemistry", "lfp"), device.get("chemistry_overrides")
    if not isinstance(chemistry, str) or not isinstance(overrides, dict) or not overrides:
        return []
    try:
        preset = get_chemistry(chemistry)
    except ValueError:
        return []  # the chemistry itself is reported by the Settings model
    at = (*loc, "chemistry_overrides")
    return [((*at, key) if key else at, why) for key, why in override_problems(preset, overrides)]
