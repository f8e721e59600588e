"""``bess-edge api``: serve the REST API and the dashboard (its own process, beside the daemon)."""

from __future__ import annotations

import argparse
import logging
import sys

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, add_config_argument, load_or_exit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "api",
        help="serve the REST API and the web dashboard",
        description="Serve the REST API (/api/v1, OpenAPI at /docs) and the dashboard (/) from "
        "the daemon's SQLite file, read-only, on [api] host:port (default 127.0.0.1:8080). "
        "Run it as its own process (systemd: bess-edge-api.service) so that a slow page never "
        "delays a poll. Needs the 'api' extra: pip install 'bess-edge[api]'.",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    try:
        import uvicorn

        from bess_edge.api.app import create_app
        from bess_edge.api.thresholds_file import ThresholdsFile
    except ImportError as exc:
        print(f"{exc}: install the API with pip install 'bess-edge[api]'", file=sys.stderr)
        return EXIT_FAILURE
    from bess_edge.logs import setup_logging
    from bess_edge.storage.keys import FileKeyStore
    from bess_edge.storage.sqlite import SqliteStorage

    setup_logging(settings.logging)
    api = settings.api
    try:
        storage = SqliteStorage(settings.storage.path)
    except FileNotFoundError as exc:
        print(f"{exc}; start the daemon first (bess-edge run)", file=sys.stderr)
        return EXIT_FAILURE
    app = create_app(
        storage,
        FileKeyStore(api.keys_path(settings.storage)),
        thresholds_file=ThresholdsFile(args.config, settings),
        cors_origins=api.cors_origins,
        max_body_bytes=api.max_body_bytes,
        site=settings.site.id,
    )
    scheme = "https" if api.tls_cert_file else "http"
    logging.getLogger(__name__).info(
        "api listening", extra={"url": f"{scheme}://{api.host}:{api.port}/"}
    )
    uvicorn.run(
        app, host=api.host, port=api.port, log_config=None, access_log=False,
        ssl_certfile=str(api.tls_cert_file) if api.tls_cert_file else None,
        ssl_keyfile=str(api.tls_key_file) if api.tls_key_file else None,
    )  # fmt: skip
    storage.close()
    return EXIT_OK
