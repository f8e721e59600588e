"""``bess-edge ingest``: a cloud worker filling PostgreSQL from the fleet's MQTT topics
(docs/cloud.md). Start as many as needed with the same ``[ingest] group``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="cloud: MQTT 5 shared subscription -> PostgreSQL, with gap repair",
        description="Subscribe to every site's telemetry, diagnostics and alerts through the MQTT "
        "5 shared subscription $share/<group>/<prefix>/+/+/+, validate each payload, write it to "
        "PostgreSQL (idempotent on site, device, stream, seq), acknowledge it to the broker after "
        "the commit, and ask the gateways to re-publish missing seqs. Creates and migrates the "
        "schema. Runs until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("-c", "--config", type=Path, required=True, metavar="FILE",
                        help="cloud.toml: [mqtt] as on a gateway, [ingest] database_url, group, "
                        "prefix")  # fmt: skip
    parser.add_argument("--client-id", help="MQTT client id (default: random)")
    parser.add_argument("--add-site", metavar="SITE", help="register a site id, then exit")
    parser.add_argument("--name", default="", help="with --add-site: its display name")
    parser.add_argument(
        "--add-user", metavar="NAME", help="create an API user, print its key once, then exit"
    )
    parser.add_argument("--role", default="viewer", choices=("viewer", "operator", "admin"))
    parser.add_argument("--migrate", action="store_true", help="create/migrate the schema, exit")
    parser.add_argument("--duration", type=float, metavar="S", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bess_edge.cloud.config import load_cloud_or_exit
    from bess_edge.logs import setup_logging

    settings = load_cloud_or_exit(args.config)
    setup_logging(settings.logging)
    if args.add_site or args.add_user or args.migrate:
        return _admin(args, settings.ingest.database_url)

    from bess_edge.cloud.metrics import REGISTRY
    from bess_edge.cloud.worker import IngestWorker

    if settings.http.enabled:
        from prometheus_client import start_http_server

        start_http_server(settings.http.port, settings.http.host, registry=REGISTRY)
    worker = IngestWorker(settings, client_id=args.client_id)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    if args.duration:
        threading.Timer(args.duration, worker.stop).start()
    started = time.monotonic()
    worker.run()
    print(f"ingest stopped after {time.monotonic() - started:.1f} s: {worker.counts}",
          file=sys.stderr)  # fmt: skip
    return EXIT_OK


def _admin(args: argparse.Namespace, database_url: str) -> int:
    import psycopg

    from bess_edge.cloud.schema import migrate
    from bess_edge.cloud.writer import now_ms

    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            version = migrate(conn)
            if args.add_site:
                conn.execute(
                    "INSERT INTO sites (site, name, created_ms) VALUES (%s, %s, %s) "
                    "ON CONFLICT (site) DO UPDATE SET name = excluded.name",
                    (args.add_site, args.name, now_ms()),
                )
                print(f"site {args.add_site} registered")
            if args.add_user:
                from bess_edge.cloud.keys import PgKeyStore

                key = PgKeyStore(database_url).create(args.add_user, args.role)
                print(f"user {args.add_user} ({args.role}); API key, shown only now:\n{key}")
            if args.migrate:
                print(f"schema version {version}")
    except psycopg.Error as exc:
        print(f"database: {str(exc).strip()}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # KeyRefused, or a name the API would not accept
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
