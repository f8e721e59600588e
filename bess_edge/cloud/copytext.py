"""Rows as PostgreSQL COPY text, formatted here instead of value by value in psycopg.

psycopg's ``write_row`` dumps every value through its adapters, and an array through a generic
per-element dumper with a regex check per element: for a 16-cell sample (two arrays, 20
elements) that was most of the write path's CPU. Our values are few types whose text forms are
simple: numbers (``repr`` is the shortest exact form; PostgreSQL reads it into real or bigint),
NULL, arrays of numbers, and JSON documents. COPY's text format needs only backslash, tab,
newline and carriage return escaped (PostgreSQL documentation, COPY, "Text Format").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from psycopg.types.json import Jsonb

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_BRACES = str.maketrans({"[": "{", "]": "}", " ": None})


def _array(values: list[Any]) -> str:
    """A list of numbers and None as an array literal: Python's own list repr (one C call,
    each float in its shortest exact form) with braces, no spaces and NULL."""
    return repr(values).translate(_BRACES).replace("None", "NULL")


def _value(value: Any) -> str:
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)
    if kind is list:
        return _array(value)  # numbers only (the schema says so): nothing to escape
    if kind is Jsonb:
        return json.dumps(value.obj, separators=(",", ":")).translate(_ESCAPES)
    if kind is bool:
        return "t" if value else "f"
    return str(value).translate(_ESCAPES)


def copy_text(rows: Iterable[tuple[Any, ...]]) -> bytes:
    """The rows as one block of COPY text (one line per row, tab-separated)."""
    return "".join("\t".join(map(_value, row)) + "\n" for row in rows).encode()
