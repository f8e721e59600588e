"""``bess-edge run``: the daemon itself (what the systemd unit starts)."""

from __future__ import annotations

import argparse

from bess_edge.cli._common import add_config_argument, load_or_exit
from bess_edge.daemon import run_daemon
from bess_edge.logs import setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the gateway daemon",
        description="Poll every enabled device, diagnose, store in SQLite, raise local alerts "
        "and (when [mqtt] enabled = true) sync to the broker, until SIGTERM or Ctrl-C. "
        "SIGHUP re-reads the thresholds. Logs go to stdout: text on a terminal, JSON otherwise.",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config, runnable=True)
    setup_logging(settings.logging)
    return run_daemon(settings, args.config)
