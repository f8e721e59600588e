"""``bess-edge export``: a device's buffered samples as CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, TextIO

from bess_edge.cli._common import EXIT_OK, add_config_argument, load_or_exit, open_store_readonly
from bess_edge.cli._csv import flatten, json_safe
from bess_edge.cli._progress import Progress
from bess_edge.store import Store

# "5m", "-5m", "1.5h", "2d": that long before now (the sign is optional; "-" reads as "ago").
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

TIME_FORMS = """\
times (--since, --until):
  5m, 2h, 1d, 90s      that long ago (also written -5m; --last 5m is --since 5m)
  2026-11-22T10:00     ISO 8601; without a zone it is this machine's local time
  2026-11-22T10:00Z    ISO 8601 in UTC (or with any +hh:mm offset)
  1763805600000        milliseconds since the Unix epoch (UTC)
examples:
  bess-edge export --config config/demo.toml --device rack-1 --last 5m
  bess-edge export --device rack-1 --since 2026-11-22T00:00Z --until 2026-11-23T00:00Z -o day.csv
"""


def parse_time(text: str) -> int:
    """A time for --since/--until as epoch ms: a duration ago, ISO 8601, or epoch ms."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return int((time.time() - float(match[1]) * _UNIT_S[match[2]]) * 1000)
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use a duration ago (5m, 2h, 1d), ISO 8601 "
            "(2026-11-22T10:00, ...Z for UTC) or epoch ms"
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
        "keep the cell arrays as lists. ts_ms is milliseconds since the Unix epoch (UTC); CSV "
        "adds time_utc, the same instant as ISO 8601. Progress goes to stderr.",
        epilog=TIME_FORMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # "-5m" would otherwise be taken for an option ("expected one argument"): let argparse
    # read it as a value, as it already does for negative numbers.
    parser._negative_number_matcher = re.compile(r"^-\d+(?:\.\d+)?[smhd]?$|^-\d*\.\d+$")
    add_config_argument(parser)
    parser.add_argument("--device", required=True, help="device id, as in the config")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since", type=parse_time, metavar="T", help="start time (inclusive)")
    start.add_argument(
        "--last", type=parse_time, metavar="DURATION", help="the last DURATION (5m, 2h, 1d)"
    )
    parser.add_argument("--until", type=parse_time, metavar="T", help="end time (exclusive)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("-o", "--output", type=argparse.FileType("w"), default=sys.stdout)
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
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
    since = args.since if args.since is not None else args.last
    store = open_store_readonly(settings)
    window = _window(store, args.device, since, args.until)
    progress = Progress(
        (window[1] - window[0]) / 1000 if window else None,
        # Rows printed on the terminal are their own progress: a bar would cut through them.
        None if args.no_progress or args.output.isatty() else sys.stderr,
        unit="s of data",
    )
    rows = _reporting(store.samples(args.device, since, args.until), progress, window)
    count = (write_csv if args.format == "csv" else write_jsonl)(rows, args.output)
    elapsed_s = progress.finish()
    print(f"exported {count} samples of {args.device} in {elapsed_s:.1f} s", file=sys.stderr)
    return EXIT_OK


def _window(
    store: Store, device: str, since_ms: int | None, until_ms: int | None
) -> tuple[int, int] | None:
    """The span the export walks, from its first sample to the window's end or the last
    sample: rows come in time order, so a row's ts says how far along we are without
    counting the rows first."""
    latest = store.latest_sample(device)
    first = next(iter(store.samples(device, since_ms, until_ms)), None)
    if latest is None or first is None:
        return None
    end_ms = latest["ts_ms"] + 1 if until_ms is None else min(until_ms, latest["ts_ms"] + 1)
    return first["ts_ms"], max(end_ms, first["ts_ms"] + 1)


def _reporting(
    rows: Iterable[dict[str, Any]], progress: Progress, window: tuple[int, int] | None
) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows, 1):
        if window is not None and i % 256 == 0:
            progress.update((row["ts_ms"] - window[0]) / 1000)
        yield row
    if window is not None:
        progress.update((window[1] - window[0]) / 1000)


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
        flat = flatten(row)
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(flat), extrasaction="ignore")
            writer.writeheader()
        writer.writerow(flat)
        count += 1
    return count
