"""``bess-edge check-config FILE``: validate a config file without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from bess_edge.cli._common import EXIT_OK, load_or_exit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and summarise it",
        description="Validate FILE (TOML syntax, every key, each driver's options, "
        "environment overrides BESS_EDGE__SECTION__KEY included). Prints a summary and exits 0, "
        "or prints every problem as 'FILE: key.path: reason' and exits 2.",
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.file)
    print(f"{args.file}: ok")
    print(settings.summary())
    return EXIT_OK
