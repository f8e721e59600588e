"""Rows as a spreadsheet wants them: one scalar per column.

``export`` and ``subscribe -o x.csv`` both write samples, diagnoses and alerts whose values are
lists (one per cell) and small dicts (``extra``): a JSON blob in a cell is useless in a
spreadsheet, so lists become ``cell_voltage_v_0, cell_voltage_v_1, ...`` and dicts
``extra.max_charge_current_a`` or ``diagnosis.soc_pct``.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO


def utc_text(ts_ms: int) -> str:
    """Epoch ms as ISO 8601 UTC with milliseconds, what a spreadsheet reads as a time."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def json_safe(value: Any) -> Any:
    """NaN and infinities (a cell the BMS did not report) as null: JSON has no NaN, and a bare
    ``NaN`` token breaks every strict parser downstream."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One scalar per key: numeric lists indexed (``key_0``), lists of text joined with "; ",
    dicts as ``key.sub`` (at any depth); ``time_utc`` follows ``ts_ms``; NaN as an empty
    cell."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        key = prefix + name
        if isinstance(value, list):
            if all(v is None or isinstance(v, int | float) for v in value):
                out.update({f"{key}_{i}": _cell(v) for i, v in enumerate(value)})
            else:
                out[key] = "; ".join(str(v) for v in value)
        elif isinstance(value, dict):
            out.update(flatten(value, f"{key}."))
        else:
            out[key] = _cell(value)
        if name == "ts_ms" and isinstance(value, int):
            out[f"{prefix}time_utc"] = utc_text(value)
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


class WideCsv:
    """A CSV file whose header grows: a row with a column not seen before rewrites the file
    once with the wider header (a first alert, the per-cell arrays a diagnosis carries every
    60 polls, a device with more cells), so every row keeps all its values."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] = []
        self._known: set[str] = set()
        self.out: TextIO = path.open("w", newline="")
        self.writer = csv.DictWriter(self.out, self.fields)

    def write(self, row: dict[str, Any]) -> None:
        new = [key for key in row if key not in self._known]
        if new:
            self.fields += new
            self._known.update(new)
            self._rewrite()
        self.writer.writerow(row)

    def _rewrite(self) -> None:
        self.out.close()
        with self.path.open(newline="") as old:
            rows = list(csv.DictReader(old))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as new:
            writer = csv.DictWriter(new, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)
        self.out = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.out, self.fields)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        self.out.close()
