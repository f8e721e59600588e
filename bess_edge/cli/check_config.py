"""``bess-edge check-config [FILE | --config FILE]``: validate a config without starting it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bess_edge.cli._common import EXIT_OK, EXIT_USAGE, add_config_argument, load_or_exit
from bess_edge.config import ConfigError, read_toml
from bess_edge.config_check import check_thresholds_file, is_thresholds_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and summarise it",
        description="Validate FILE (TOML syntax, every key, each driver's options, "
        "environment overrides BESS_EDGE__SECTION__KEY included) and check that this machine can "
        "run it (TLS and password files readable, storage path usable). Prints a summary and "
        "exits 0, or prints every problem as 'FILE: key.path: reason' (a value from the "
        "environment names its variable instead of FILE) and exits 2. A file holding only "
        "[[thresholds]] is checked as a rule file for include_thresholds.",
    )
    parser.add_argument(
        "file", type=Path, metavar="FILE", nargs="?", help="the file (or give it with --config)"
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.file or args.config
    try:
        thresholds_only = is_thresholds_file(read_toml(path))
        if thresholds_only:
            rules = check_thresholds_file(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    if thresholds_only:
        print(f"{path}: ok (a thresholds file: {len(rules)} rule(s) for include_thresholds)")
        for rule in rules:
            print(f"  {rule.name}: {rule.metric} {'>' if rule.above is not None else '<'} "
                  f"{rule.threshold:g} ({rule.severity})")  # fmt: skip
        return EXIT_OK
    settings = load_or_exit(path, runnable=True)
    print(f"{path}: ok")
    print(settings.summary())
    return EXIT_OK
