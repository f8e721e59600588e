"""``bess-edge subscribe``: the reference cloud-side consumer (see docs/mqtt.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from bess_edge.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_config_argument,
    load_or_exit,
)
from bess_edge.cli._csv import WideCsv, flatten
from bess_edge.cli._progress import Progress

NEEDS_CLOUD_EXTRA = (
    "It validates payloads with jsonschema, which the gateway does not need: install it with "
    "pip install 'bess-edge[cloud]'."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "subscribe",
        help="receive a site's MQTT data: validate, de-duplicate, repair gaps, write JSONL/CSV",
        description="Subscribe to a site's telemetry, diagnostics and alerts on the broker of "
        "the config's [mqtt] table, validate each payload against the JSON Schemas, drop "
        "duplicates by (site, device, stream, seq), ask the gateway to re-publish any gap "
        "(cmd/republish) and write each new item once. With --from-first, shows its progress "
        "through the gateway's backlog on stderr; prints a summary on exit (Ctrl-C). "
        + NEEDS_CLOUD_EXTRA,
    )
    add_config_argument(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="FILE.jsonl, or FILE.csv with one column per field (cells as cell_voltage_v_0, "
        "...; a new field widens the file); default: JSON lines on stdout",
    )
    parser.add_argument("--site", help="site id (default: the config's site.id)")
    parser.add_argument(
        "--shared-group",
        metavar="NAME",
        help="MQTT 5 shared subscription $share/NAME/...: consumers of one group split the "
        "messages (gap repair is then off, see docs/mqtt.md)",
    )
    parser.add_argument(
        "--from-first", action="store_true", help="expect every stream to start at seq 1"
    )
    parser.add_argument("--no-repair", action="store_true", help="never ask for a re-publish")
    parser.add_argument("--client-id", help="MQTT client id (default: random)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--exit-when-synced",
        action="store_true",
        help="stop once the gateway's outbox is empty and no seq is missing",
    )
    parser.add_argument("--tick-s", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bess_edge.sync.consumer import Consumer  # paho and jsonschema only for this command

    settings = load_or_exit(args.config)
    try:
        import jsonschema  # noqa: F401 - checked before connecting or creating the output
    except ImportError:
        print(f"bess-edge subscribe: jsonschema is not installed. {NEEDS_CLOUD_EXTRA}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    out, writer = _open_output(args.output)
    lock = threading.Lock()

    def on_item(site: str, device: str, stream: str, item: dict[str, Any]) -> None:
        with lock:
            writer(site, device, stream, item)

    consumer = Consumer(
        settings,
        site=args.site,
        shared_group=args.shared_group,
        from_first=args.from_first,
        repair=not args.no_repair,
        client_id=args.client_id,
        on_item=on_item,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    consumer.start()
    progress = Progress(None, sys.stderr if args.from_first else None, unit="seqs")
    deadline = time.monotonic() + args.duration if args.duration else None
    synced = False
    while not stop.wait(args.tick_s):
        consumer.tick()
        received, progress.total = consumer.progress()
        progress.update(received)
        if args.exit_when_synced and consumer.synced():
            synced = True
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    consumer.stop()
    elapsed_s = progress.finish()
    with lock:
        out.flush()
        if out is not sys.stdout:
            out.close()
    summary = {
        **consumer.summary.as_dict(),
        "synced": synced or consumer.synced(),
        "elapsed_s": round(elapsed_s, 1),
    }
    print(json.dumps(summary), file=sys.stderr)
    if args.exit_when_synced and not synced:
        return EXIT_FAILURE
    return EXIT_OK


def _open_output(path: Path | None) -> tuple[Any, Any]:
    if path is not None and path.suffix == ".csv":
        table = WideCsv(path)

        def write_csv(site: str, device: str, stream: str, item: dict[str, Any]) -> None:
            table.write(flatten({"site": site, "device": device, "stream": stream, **item}))

        return table, write_csv
    out: TextIO = path.open("w", newline="") if path else sys.stdout

    def write_jsonl(site: str, device: str, stream: str, item: dict[str, Any]) -> None:
        out.write(json.dumps({"site": site, "device": device, "stream": stream, **item}) + "\n")

    return out, write_jsonl
