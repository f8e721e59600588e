"""``bess-edge cloud-api``: the fleet's API from the cloud database (docs/cloud.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cloud-api",
        help="cloud: serve every site's API from PostgreSQL",
        description="Serve GET /api/v1/sites and, for each site, the gateway's API and dashboard "
        "under /sites/<site>/, read from the database that `bess-edge ingest` fills. API keys "
        "are the users table's (`bess-edge ingest --add-user`). Acknowledgements reach the "
        "gateway as its cmd/ack, sent by the ingest.",
    )
    parser.add_argument("-c", "--config", type=Path, required=True, metavar="FILE",
                        help="cloud.toml (its [ingest] database_url)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bess_edge.cloud.config import load_cloud_or_exit
    from bess_edge.logs import setup_logging

    settings = load_cloud_or_exit(args.config)
    try:
        import uvicorn

        from bess_edge.cloud.api import fleet_app
    except ImportError as exc:
        print(f"{exc}: install with pip install 'bess-edge[api,cloud]'", file=sys.stderr)
        return EXIT_FAILURE
    setup_logging(settings.logging)
    app = fleet_app(settings.ingest.database_url)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return EXIT_OK
