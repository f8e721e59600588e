"""``bess-edge replay FILE``: a CAN capture through decode → diagnostics → alerts → store.

For field debugging: a capture taken on site (candump, CANalyzer, PCAN-View) is decoded with the
site's own config and lands in the SQLite file as if the gateway had been there, alerts and all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bess_edge.alerts import AlertEngine
from bess_edge.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_config_argument,
    load_or_exit,
)
from bess_edge.cli._progress import Progress
from bess_edge.config import DeviceConfig, Settings
from bess_edge.drivers.can_decode import FrameDecoder
from bess_edge.drivers.can_map import DecodeOptions
from bess_edge.drivers.capture import CaptureProblems, read_frames
from bess_edge.drivers.replay import CapturePlayer
from bess_edge.logs import setup_logging
from bess_edge.model import Reading
from bess_edge.pipeline import DevicePipeline
from bess_edge.store import Store

EPILOG = """\
examples:
  bess-edge replay candump-2026-05-01.log --config /etc/bess-edge/bess-edge.toml --fast
  bess-edge replay trace.trc --config config/can-foxbms.toml --speed 10
The device is the config's first can (or replay) device unless --device names another; its
poll_interval_s is the spacing of the Readings in capture time. The Readings go to the config's
[storage] file; point --config at a copy to keep them apart from live data.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="play a CAN capture (.log .asc .blf .trc) through the decode and store path",
        description="Decode a candump .log, Vector .asc or .blf, or PCAN .trc capture with a "
        "device's DBC and mapping, and send the Readings through diagnostics, alerts and the "
        "store, at the recorded speed (or --speed N times it, or --fast).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the capture")
    add_config_argument(parser)
    parser.add_argument("--device", help="the device whose mapping decodes the capture")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="N", help="N × recorded speed")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=replay)


def replay(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    setup_logging(settings.logging)
    try:
        device = _device(settings, args.device)
        total = sum(1 for _ in read_frames(args.file))
    except (ValueError, OSError) as exc:
        print(f"bess-edge replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    options = device.parsed_options
    assert isinstance(options, DecodeOptions)
    decoder = FrameDecoder.for_options(options, device.id)
    player = CapturePlayer(decoder, device.poll_interval_s)
    s = settings.storage
    store = Store(
        s.path,
        max_size_mb=s.max_size_mb,
        retention_days=s.retention_days,
        synchronous=s.synchronous,
    )
    pipeline = DevicePipeline(
        device, store, AlertEngine(settings.thresholds, store.max_alert_id(), store.active_alerts())
    )
    progress = Progress(total, None if args.no_progress else sys.stderr, unit="frames")
    written = 0

    def commit(reading: Reading) -> None:
        nonlocal written
        pipeline.process(store, reading)
        written += 1

    speed = None if args.fast else args.speed
    problems = CaptureProblems()
    try:
        started, t0 = time.monotonic(), None
        for i, msg in enumerate(read_frames(args.file, problems), 1):
            if speed is not None:
                t0 = msg.timestamp if t0 is None else t0
                delay = started + (msg.timestamp - t0) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            for reading in player.feed(msg):
                commit(reading)
            progress.update(i, f"{written} Readings")
        final = player.final()
        if final is not None:
            commit(final)
    except (ValueError, OSError) as exc:
        print(f"\nbess-edge replay: {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()
    elapsed_s = progress.finish()
    if problems.count:
        print(f"bess-edge replay: {args.file.name}: {problems.summary()}", file=sys.stderr)
    c = decoder.counters
    print(
        f"{args.file.name}: {c.frames} frames read, {c.decoded} decoded, "
        f"{c.unmapped} not mapped, {c.unknown_id} unknown id, {c.wrong_dlc} wrong DLC, "
        f"{c.undecodable} undecodable, "
        f"{c.error_frames} error frames, {problems.count} bad lines skipped; "
        f"{written} Readings written to {s.path} "
        f"(device {device.id}) in {elapsed_s:.1f} s"
    )
    return EXIT_OK


def _device(settings: Settings, device_id: str | None) -> DeviceConfig:
    for device in settings.devices:
        if device_id in (None, device.id) and isinstance(device.parsed_options, DecodeOptions):
            return device
    wanted = f"device {device_id!r}" if device_id else "a can or replay device"
    raise ValueError(f"the config has no {wanted} with a DBC mapping")
