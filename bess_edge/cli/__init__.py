"""The ``bess-edge`` command.

As in cantools, each subcommand is one module of this package that defines
``register(subparsers)``: it adds its parser and sets ``func``, a callable taking the parsed
arguments and returning the exit code. Modules are found by name, so adding a subcommand means
adding a file. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from bess_edge import __version__

EPILOG = """\
Every subcommand has its own --help. The config file defaults to /etc/bess-edge/bess-edge.toml;
values in it can be overridden with environment variables BESS_EDGE__SECTION__KEY
(e.g. BESS_EDGE__MQTT__HOST=broker.example). Documentation: docs/ in the source tree.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bess-edge",
        description="Edge gateway for battery energy storage sites: polls BMS devices (Modbus, "
        "CAN, simulated), diagnoses the cells on the device, buffers everything in SQLite, "
        "raises local alerts and syncs to the cloud over MQTT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bess-edge {__version__}")
    # Not required: a bare ``bess-edge`` prints the help below rather than argparse's
    # "the following arguments are required: COMMAND".
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2  # a command is still missing: a usage error, as argparse would say
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bess-edge export ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
