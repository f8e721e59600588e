"""What several subcommands share: the --config option and loading it with clear errors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bess_edge.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_config
from bess_edge.store import Store

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("BESS_EDGE_CONFIG", str(DEFAULT_CONFIG_PATH))
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path(default),
        metavar="FILE",
        help=f"the config file (default: $BESS_EDGE_CONFIG or {DEFAULT_CONFIG_PATH})",
    )


def load_or_exit(path: Path, *, runnable: bool = False) -> Settings:
    """The config, or every problem printed on stderr and exit code 2 (``runnable``: see
    :func:`bess_edge.config.load_config`)."""
    try:
        return load_config(path, runnable=runnable)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def open_store_readonly(settings: Settings) -> Store:
    """The daemon's SQLite file opened read-only, or a clear message and exit code 1."""
    try:
        return Store(settings.storage.path, readonly=True)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
