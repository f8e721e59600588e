"""``bess-edge reload``: make the running daemon re-read its thresholds (SIGHUP)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, add_config_argument, load_or_exit
from bess_edge.config import Settings
from bess_edge.daemon import pid_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reload",
        help="make the running daemon re-read its alert thresholds",
        description="Check the config file, then send SIGHUP to the daemon using it (found by "
        "the pid file beside its SQLite file). The daemon re-reads the [[thresholds]] rules "
        "without a restart; active alerts carry over. An invalid file is refused here and, "
        "if it changes in between, by the daemon, which then keeps its old rules.",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def running_daemon_pid(settings: Settings) -> int | None:
    """The pid of the daemon that owns this config's SQLite file, or None if none runs."""
    path = pid_path(Path(settings.storage.path))
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file left by a kill -9
    except PermissionError:
        return pid  # runs as another user (the service account)
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"bess" not in cmdline.read_bytes():
        return None  # the pid was reused by an unrelated process
    return pid


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    pid = running_daemon_pid(settings)
    if pid is None:
        print(
            f"no daemon is running on {settings.storage.path}; the rules are read at start",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        print(f"not allowed to signal pid {pid}: run as the service user or root", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"sent SIGHUP to the daemon (pid {pid}): it re-reads {len(settings.thresholds)} "
        f"threshold rule(s) from its config file; its log says 'thresholds reloaded'"
    )
    return EXIT_OK
