"""``bess-edge alerts``: alert history from the SQLite file (read-only; the daemon may run)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bess_edge.cli._common import EXIT_OK, add_config_argument, load_or_exit, open_store_readonly


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "alerts",
        help="list alerts (history or only the active ones)",
        description="Alert episodes, newest first: id, state, severity, device, cell, rule, "
        "when raised/acknowledged/cleared and the message. --json adds every transition. "
        "Reads the daemon's SQLite file, read-only.",
    )
    parser.add_argument("--active", action="store_true", help="only alerts not yet cleared")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    store = open_store_readonly(settings)
    alerts = store.alert_history(active_only=args.active, limit=args.limit)
    if args.json:
        print(json.dumps(alerts, indent=2))
    elif not alerts:
        print("no active alerts" if args.active else "no alerts")
    else:
        print("\n".join(render(a) for a in alerts))
    return EXIT_OK


def _when(ts_ms: int | None) -> str:
    return (
        "-" if ts_ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms / 1000))
    )


def render(a: dict[str, Any]) -> str:
    """One alert as two lines for a terminal."""
    cell = "" if a["cell"] is None else f" cell {a['cell']}"
    head = (
        f"#{a['id']:<5} {a['state']:<7} {a['severity']:<8} {a['device']}{cell}  {a['rule']}  "
        f"raised {_when(a['raised_ts_ms'])}"
    )
    if a["acked_ts_ms"] is not None:
        head += f", acked {_when(a['acked_ts_ms'])} by {a['acked_by']}"
        head += f" ({a['ack_note']})" if a["ack_note"] else ""
    if a["cleared_ts_ms"] is not None:
        head += f", cleared {_when(a['cleared_ts_ms'])}"
    return f"{head}\n       {a['message']}"
