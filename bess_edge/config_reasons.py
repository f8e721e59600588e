"""Config problems phrased for someone editing a TOML file: key paths, reasons, hints.

A secret's value is never shown, whatever its type (``password = 98765432`` once came back as
``got 98765432``). Near-miss keys get a "did you mean"; a value where a table belongs says what
to write instead; a number or a boolean written as a string is refused here, because pydantic
would quietly convert ``capacity_ah = "280"`` while a typo'd ``"28O"`` fails: a TOML user
cannot tell which quotes matter.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

Loc = tuple[str | int, ...]

# Key names whose values are secrets (not *_file paths, which are shown).
_SECRET = re.compile(r"(?i)(^|_)(pass(word|wd|phrase)?|secret|token|credentials?|keys?)$")
# pydantic's internal validator names in an error's location, meaningless to a user.
_INTERNAL = ("function-", "tagged-union", "literal[", "json-or-python", "lax-or-strict")
_ANY_NUMBER = TypeAdapter(float)
_ANY_BOOL = TypeAdapter(bool)


def is_secret(loc: Loc) -> bool:
    return any(isinstance(part, str) and _SECRET.search(part) for part in loc)


def shown(loc: Loc, value: Any) -> str:
    """``value`` as the user wrote it, or only its type when it is a secret."""
    if is_secret(loc):
        return f"a {_toml_type(value)}, not shown: it is a secret"
    return repr(value)


def key_path(loc: Loc) -> str:
    """``("devices", 1, "poll_interval_s")`` -> ``devices[1].poll_interval_s``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(_INTERNAL):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def reason(error: Any, root: type[BaseModel] | None = None) -> str:
    """Pydantic's error, phrased for the TOML file; ``root`` is the model validated, for the
    keys a near-miss could have meant."""
    kind, ctx = error["type"], error.get("ctx") or {}
    loc = tuple(error["loc"])
    given = shown(loc, error.get("input"))
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key(loc, root)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return _not_a_table(loc, error.get("input"), root)
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g} (got {given})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g} (got {given})"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']:g} (got {given})"
    if kind == "less_than":
        return f"must be < {ctx['lt']:g} (got {given})"
    if kind == "too_short" and isinstance(error.get("input"), list):
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{given} may only use letters, digits, '_', '.' and '-' (at most 64)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{error['msg'].lower()} (got {given})"
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _unknown_key(loc: Loc, root: type[BaseModel] | None) -> str:
    model = model_at(root, loc[:-1]) if root is not None else None
    known = [f.alias or name for name, f in model.model_fields.items()] if model else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.75)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key (check the spelling against config/bess-edge.toml)"


def _not_a_table(loc: Loc, value: Any, root: type[BaseModel] | None) -> str:
    model = model_at(root, loc) if root is not None else None
    name = key_path(loc)
    if isinstance(value, bool) and model is not None and "enabled" in model.model_fields:
        return (
            f"is a table, not {str(value).lower()}: write [{name}] on a line of its own and "
            f"'enabled = {str(value).lower()}' below it (with its other keys; see "
            "config/bess-edge.toml)"
        )
    return (
        f"must be a table, not {shown(loc, value)}: write [{name}] on a line of its own with its "
        "keys below it, or an inline table { key = value }"
    )


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model of the table at ``loc`` under ``root``, when it is one."""
    model: type[BaseModel] | None = root
    expect_item = False
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            if not expect_item:
                return None
            expect_item = False
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        kind = _kind(field.annotation)
        if isinstance(kind, tuple):
            model, expect_item = kind[1], True
        elif inspect.isclass(kind) and issubclass(kind, BaseModel):
            model = kind
        else:
            return None
    return None if expect_item else model


def wrong_scalar_types(model: type[BaseModel], raw: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Numbers and booleans that the file gives as strings (``capacity_ah = "280"``, ``enabled =
    "false"``) or as the other kind, which pydantic would convert without a word. Only for
    values from the file: an environment variable is always a string."""
    if not isinstance(raw, dict):
        return []
    out: list[tuple[Loc, str]] = []
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        at = (*loc, key)
        kind = _kind(field.annotation)
        if kind == "number" and (isinstance(value, bool) or _converts(_ANY_NUMBER, value, str)):
            out.append((at, f"must be a number, written without quotes (got {shown(at, value)})"))
        elif kind == "bool" and not isinstance(value, bool) and _converts(_ANY_BOOL, value, Any):
            out.append((at, f"must be true or false, without quotes (got {shown(at, value)})"))
        elif isinstance(kind, tuple) and isinstance(value, list):
            for i, item in enumerate(value):
                out += wrong_scalar_types(kind[1], item, (*at, i))
        elif inspect.isclass(kind) and issubclass(kind, BaseModel):
            out += wrong_scalar_types(kind, value, at)
    return out


def _converts(adapter: TypeAdapter[Any], value: Any, only: Any) -> bool:
    if only is str and not isinstance(value, str):
        return False
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _kind(annotation: Any) -> Any:
    """``"number"``, ``"bool"``, a model class, ``("list", model)`` or None, through Optional
    and Annotated."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        kinds = {_kind(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "number"
    if origin is list:
        (item,) = get_args(annotation) or (None,)
        if inspect.isclass(item) and issubclass(item, BaseModel):
            return ("list", item)
        return None
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__
