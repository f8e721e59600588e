"""Threshold rules edited through the API, the way an integrator would edit them by hand.

The API owns one TOML file (``[api] thresholds_file``) that ``load_config`` reads first among
the included rule files: a rule there may add a rule or override a shipped default, never a rule
of the config file itself (that one is edited in the file). Every change is validated by the
config's own models, written atomically, checked by loading the whole config exactly as the
daemon will (restored if it does not load), then the daemon is sent SIGHUP (DESIGN invariant 6).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from bess_edge.config import (
    ConfigError,
    Settings,
    ThresholdRule,
    _key_path,
    _reason,
    load_config,
    read_toml,
)

Source = Literal["config", "api", "included"]


class RuleView(BaseModel):
    """An effective rule and where it comes from (only ``api`` rules can be edited here)."""

    source: Source
    rule: dict[str, Any]


class RuleRefused(Exception):
    """``kind``: invalid (422), conflict (409) or missing (404); ``lines`` say why."""

    def __init__(self, kind: str, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.kind, self.lines = kind, lines


class ThresholdsFile:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.storage_path = settings.storage.path
        self.path = settings.api.thresholds_path(settings.storage)

    # -- reading --------------------------------------------------------------------------

    def _api_rules(self) -> list[dict[str, Any]]:
        return list(read_toml(self.path).get("thresholds", [])) if self.path.is_file() else []

    def rules(self) -> list[RuleView]:
        own = {r.get("name") for r in read_toml(self.config_path).get("thresholds", [])}
        api = {r.get("name") for r in self._api_rules()}
        out = []
        for rule in load_config(self.config_path).thresholds:
            source: Source = (
                "config" if rule.name in own else "api" if rule.name in api else ("included")
            )
            out.append(RuleView(source=source, rule=_plain(rule)))
        return out

    # -- changing -------------------------------------------------------------------------

    def create(self, body: Any) -> tuple[ThresholdRule, str]:
        rule = validate_rule(body)
        with self._editing() as rules:
            existing = {r.rule["name"]: r.source for r in self.rules()}
            if existing.get(rule.name) in ("config", "api"):
                raise RuleRefused("conflict", [f"a rule named {rule.name!r} exists; update it"])
            rules.append(_plain(rule))
        return rule, self._reload()

    def update(self, name: str, body: Any) -> tuple[ThresholdRule, str]:
        rule = validate_rule(body)
        if rule.name != name:
            raise RuleRefused("invalid", [f"name: the body names {rule.name!r}, the URL {name!r}"])
        with self._editing() as rules:
            sources = {r.rule["name"]: r.source for r in self.rules()}
            if name not in sources:
                raise RuleRefused("missing", [f"no rule named {name!r}"])
            if sources[name] == "config":
                raise RuleRefused(
                    "conflict", [f"{name!r} is defined in {self.config_path}; edit it there"]
                )
            rules[:] = [r for r in rules if r.get("name") != name] + [_plain(rule)]
        return rule, self._reload()

    def delete(self, name: str) -> str:
        with self._editing() as rules:
            kept = [r for r in rules if r.get("name") != name]
            if len(kept) == len(rules):
                sources = {r.rule["name"]: r.source for r in self.rules()}
                if name in sources:
                    raise RuleRefused(
                        "conflict",
                        [f"{name!r} is not an API rule ({sources[name]}): remove it from its file"],
                    )
                raise RuleRefused("missing", [f"no rule named {name!r}"])
            rules[:] = kept
        return self._reload()

    @contextmanager
    def _editing(self) -> Iterator[list[dict[str, Any]]]:
        """Read-modify-write under a lock; the config must still load, or the file is put back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            before = self.path.read_bytes() if self.path.is_file() else None
            rules = self._api_rules()
            yield rules
            _write_atomic(self.path, render_rules(rules).encode())
            try:
                load_config(self.config_path)
            except ConfigError as exc:
                if before is None:
                    self.path.unlink()
                else:
                    _write_atomic(self.path, before)
                raise RuleRefused("invalid", exc.lines()) from None

    def _reload(self) -> str:
        from bess_edge.cli.reload import running_daemon_pid

        pid = running_daemon_pid(load_config(self.config_path))
        if pid is None:
            return "no daemon running: the rules are read when it starts"
        os.kill(pid, signal.SIGHUP)
        return f"sent SIGHUP to the daemon (pid {pid})"


def validate_rule(body: Any) -> ThresholdRule:
    """The config's model, the config's messages (``above: give exactly one of ...``)."""
    if not isinstance(body, dict):
        raise RuleRefused("invalid", ["the body must be a JSON object (one rule)"])
    if body.get("action") is not None:
        raise RuleRefused(
            "invalid",
            ["action: local actions run commands on the gateway; configure them in the "
             "config file, not through the API"],
        )  # fmt: skip
    try:
        return ThresholdRule.model_validate(body)
    except ValidationError as exc:
        raise RuleRefused(
            "invalid", [f"{_key_path(e['loc']) or 'rule'}: {_reason(e)}" for e in exc.errors()]
        ) from None


def _plain(rule: ThresholdRule) -> dict[str, Any]:
    return rule.model_dump(exclude_none=True, exclude={"action"})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string with ASCII escapes is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to a rule file")


def render_rules(rules: list[dict[str, Any]]) -> str:
    head = "# Written by bess-edge api (threshold edits from the dashboard/API). Edit with care.\n"
    blocks = [
        "[[thresholds]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in rule.items())
        for rule in rules
    ]
    return head + "\n" + "\n".join(blocks)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
