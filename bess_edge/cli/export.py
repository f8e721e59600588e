"""``bess-edge export``: a device's buffered samples as CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from datetime import datetime
from typing import Any, TextIO

from bess_edge.cli._common import EXIT_OK, add_config_argument, load_or_exit, open_store_readonly

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> int:
    """A time for --since/--until as epoch ms: ISO 8601, '-15m'/'-2h'/'-1d', or epoch ms."""
    match = _RELATIVE.match(text)
    if match:
        return int((time.time() - float(match[1]) * _UNIT_S[match[2]]) * 1000)
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-22T10:00), -30m/-2h/-1d, or epoch ms"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive times are the site controller's local time
    return int(moment.timestamp() * 1000)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a device's samples as CSV or JSON lines",
        description="Write the samples of one device from the local buffer, oldest first. "
        "CSV has one column per pack value and one per cell (cell_voltage_v_0, ...); JSON lines "
        "keep the cell arrays as lists. Times are milliseconds since the Unix epoch (UTC).",
    )
    add_config_argument(parser)
    parser.add_argument("--device", required=True, help="device id, as in the config")
    parser.add_argument("--since", type=parse_time, help="start time (inclusive)")
    parser.add_argument("--until", type=parse_time, help="end time (exclusive)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("-o", "--output", type=argparse.FileType("w"), default=sys.stdout)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    if args.device not in {d.id for d in settings.devices}:
        print(
            f"unknown device {args.device!r}; the config has: "
            f"{', '.join(d.id for d in settings.devices)}",
            file=sys.stderr,
        )
        return 2
    store = open_store_readonly(settings)
    rows = store.samples(args.device, args.since, args.until)
    count = (write_csv if args.format == "csv" else write_jsonl)(rows, args.output)
    print(f"exported {count} samples of {args.device}", file=sys.stderr)
    return EXIT_OK


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


def write_jsonl(rows: Any, out: TextIO) -> int:
    count = 0
    for row in rows:
        row.pop("id", None)
        out.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        count += 1
    return count


def write_csv(rows: Any, out: TextIO) -> int:
    writer = None
    count = 0
    for row in rows:
        row.pop("id", None)
        cells = {f"cell_voltage_v_{i}": v for i, v in enumerate(row.pop("cell_voltage_v"))}
        temps = {f"cell_temperature_c_{i}": v for i, v in enumerate(row.pop("cell_temperature_c"))}
        row["extra"] = json.dumps(json_safe(row["extra"]), allow_nan=False) if row["extra"] else ""
        row["quality_notes"] = "; ".join(row["quality_notes"])
        flat = {**row, **cells, **temps}
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(flat), extrasaction="ignore")
            writer.writeheader()
        writer.writerow(flat)
        count += 1
    return count
