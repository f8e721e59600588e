"""A quick check of a message's items, derived from the published item schema, that can only
say "valid".

fastjsonschema's compiled code checks every value with its own ``isinstance`` calls: 9.3 µs of
a 16-cell telemetry sample's ~60 µs write path, 3.2 µs of it the two cell arrays element by
element. This check looks at a message's items property by property instead: one ``type()``
pass in C over every value of a property across all items (cells flattened), compared with the
Python types the schema allows. It knows only the few kinds of property the item schemas use;
a schema with anything else gets no quick check. Whatever it does not vouch for (a wrong type,
a float where an integer is due, a missing key) goes to the full validator, which decides and
gives the reason: a payload is accepted exactly when the published schema accepts it.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from operator import itemgetter
from typing import Any

Check = Callable[[list[Any]], bool]

# JSON types as json.loads builds them. Narrower than the schema's (an integer-valued float is
# an integer to JSON Schema, and bool is not a number): the full validator decides those.
_TYPES = {"integer": int, "number": (int, float), "null": type(None), "string": str}
_KNOWN_KEYS = {"type", "minimum", "items", "enum", "additionalProperties", "description"}


def _types(names: str | list[str]) -> set[type] | None:
    out: set[type] = set()
    for name in [names] if isinstance(names, str) else names:
        found = _TYPES.get(name)
        if found is None:
            return None
        out.update(found if isinstance(found, tuple) else (found,))
    return out


def _values_check(schema: dict[str, Any]) -> Check | None:
    """A check over one property's values in all items, or None for a kind it does not know."""
    if not schema.keys() <= _KNOWN_KEYS:
        return None
    if "enum" in schema:
        allowed = set(schema["enum"])
        if schema.keys() - {"enum", "description"} or not all(type(v) is str for v in allowed):
            return None
        return lambda values: set(map(type, values)) <= {str} and allowed.issuperset(values)
    kind = schema.get("type")
    if kind == "array" and schema.keys() - {"description"} == {"type", "items"}:
        elements = _values_check(schema["items"])
        if elements is None:
            return None
        return lambda values: (
            set(map(type, values)) <= {list} and elements(list(chain.from_iterable(values)))
        )
    if kind == "object" and schema.keys() - {"description"} == {"type", "additionalProperties"}:
        members = _values_check(schema["additionalProperties"])
        if members is None:
            return None
        return lambda values: (
            set(map(type, values)) <= {dict}
            and members(list(chain.from_iterable(map(dict.values, values))))
        )
    if kind is None or schema.keys() - {"type", "minimum", "description"}:
        return None
    kinds = _types(kind)
    if kinds is None:
        return None
    if "minimum" in schema:
        if kinds != {int}:
            return None
        low = schema["minimum"]
        return lambda values: set(map(type, values)) <= {int} and (not values or min(values) >= low)
    return lambda values: set(map(type, values)) <= kinds


def items_check(item: dict[str, Any]) -> Check | None:
    """A quick check of a list of items for an item schema that is an object with every property
    required and no other allowed; None when the schema is not of that kind or has a property
    of a kind this does not know."""
    properties = item.get("properties")
    if (
        not isinstance(properties, dict)
        or item.keys() - {"type", "additionalProperties", "required", "properties", "description"}
        or item.get("type") != "object"
        or item.get("additionalProperties") is not False
        or set(item.get("required", ())) != properties.keys()
    ):
        return None
    checks = []
    for name, sub in properties.items():
        values_ok = _values_check(sub)
        if values_ok is None:
            return None
        checks.append((itemgetter(name), values_ok))
    keys = frozenset(properties)

    def vouch(items: list[Any]) -> bool:
        return (
            set(map(type, items)) <= {dict}
            and set(map(frozenset, items)) <= {keys}
            and all(values_ok(list(map(get, items))) for get, values_ok in checks)
        )

    return vouch
