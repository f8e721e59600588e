"""``bess-edge ack ALERT_ID``: acknowledge an alert, through the daemon that owns alert state.

The request is queued in the SQLite file and the daemon applies it within a second; when no
daemon runs it waits there and is applied at the next start.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
import time
from typing import Any

from bess_edge.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_config_argument,
    load_or_exit,
    open_store_readonly,
)
from bess_edge.cli.reload import running_daemon_pid
from bess_edge.store import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ack",
        help="acknowledge an active alert",
        description="Acknowledge an active alert (ids from 'bess-edge alerts --active'). The "
        "acknowledgement is recorded with who and when, and sent to the cloud like every "
        "alert transition; the alert stays active until its condition clears.",
    )
    parser.add_argument("alert_id", type=int, metavar="ALERT_ID")
    parser.add_argument("--note", help="free text stored with the acknowledgement")
    parser.add_argument(
        "--actor", default=f"cli:{getpass.getuser()}", help="who acknowledges (default: cli:USER)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="how long to wait for the running daemon to apply it (default 10 s)",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def _refusal(alert_id: int, alert: dict[str, Any] | None) -> str | None:
    """Why this alert cannot be acknowledged (checked here too, to answer at once)."""
    if alert is None:
        return f"no alert {alert_id}"
    if alert["state"] != "active":
        return f"alert {alert_id} is already cleared"
    if alert["acked_ts_ms"] is not None:
        return f"alert {alert_id} is already acknowledged by {alert['acked_by']}"
    return None


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    readonly = open_store_readonly(settings)
    alert = readonly.alert(args.alert_id)
    readonly.close()
    problem = _refusal(args.alert_id, alert)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_FAILURE
    try:
        store = Store(settings.storage.path)
        request = store.request_ack(args.alert_id, args.actor, args.note)
    except sqlite3.Error as exc:
        print(f"{settings.storage.path}: cannot queue the acknowledgement: {exc}", file=sys.stderr)
        print("run as the daemon's user (or root), who can write its SQLite file", file=sys.stderr)
        return EXIT_FAILURE
    try:
        if running_daemon_pid(settings) is None:
            print(
                f"the daemon is not running: the acknowledgement of alert {args.alert_id} is "
                "queued and will be applied when it starts"
            )
            return EXIT_OK
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            row = store.ack_request(request)
            if row and row["done_ts_ms"] is not None:
                if row["result"] == "acknowledged":
                    print(f"alert {args.alert_id} acknowledged by {args.actor}")
                    return EXIT_OK
                print(f"alert {args.alert_id}: {row['result']}", file=sys.stderr)
                return EXIT_FAILURE
            time.sleep(0.1)
    finally:
        store.close()
    print(
        f"the daemon has not applied the acknowledgement within {args.wait:g} s; it stays "
        "queued and is applied as soon as the daemon gets to it",
        file=sys.stderr,
    )
    return EXIT_FAILURE
