"""``bess-edge probe modbus``: read a Modbus device once and print what it holds.

With ``--map`` it polls the device through that register map and prints every mapped value in SI
units; without, it looks for SunSpec, walks the model chain and prints each model found with its
decoded points. Meant for commissioning: run it before adding the device to the config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import textwrap
from typing import Any

from pydantic import ValidationError

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bess_edge.config import DeviceConfig
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.modbus import ModbusDriver, ModbusOptions
from bess_edge.drivers.register_map import MapError, load_map, shipped_maps
from bess_edge.drivers.sunspec import SunSpecDriver, SunSpecOptions
from bess_edge.drivers.sunspec_models import model_name

EPILOG = """\
examples:
  bess-edge probe modbus --host 192.0.2.20                      SunSpec discovery, unit 1
  bess-edge probe modbus --host 192.0.2.10 --unit 3 --map rack-hv-example
  bess-edge probe modbus --serial-port /dev/ttyUSB0 --baudrate 9600 --parity N \\
                         --unit 2 --map ./my-bms.toml
  bess-edge probe modbus --list-maps

exit status: 0 the device answered, 1 it did not (or has no SunSpec marker), 2 bad usage.
Timeouts usually mean a wrong unit id, baud rate or parity; garbled values usually mean a
wrong word order or scale in the map. See docs/modbus.md, "Troubleshooting".
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="read a device once and print what it holds (commissioning)",
        description="Read a device once, outside the daemon, and print what was found.",
    )
    kinds = parser.add_subparsers(title="protocol", metavar="PROTOCOL", required=True)
    modbus = kinds.add_parser(
        "modbus",
        help="a Modbus TCP or RTU device: SunSpec discovery, or the values of a register map",
        description="Connect to a Modbus device, then either read it through a register map "
        "(--map) and print every value in SI units with any data-quality flags, or, without "
        "--map, find the SunSpec marker, walk the model chain and print each model with its "
        "decoded points (energy-storage models 802-805 in full).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = modbus.add_argument_group("where the device is (one of --host, --serial-port)")
    where.add_argument("--host", help="Modbus TCP: the device's or gateway's address")
    where.add_argument("--port", type=int, default=502, help="Modbus TCP port (default 502)")
    where.add_argument("--serial-port", help="Modbus RTU: the serial device, e.g. /dev/ttyUSB0")
    where.add_argument("--baudrate", type=int, default=19200, help="RTU (default 19200)")
    where.add_argument("--parity", choices="NEO", default="E", help="RTU (default E)")
    where.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU (default 1)")
    modbus.add_argument("--unit", type=int, default=1, help="unit id / slave address (default 1)")
    modbus.add_argument(
        "--map", help="a shipped map name or a .toml path; without it, SunSpec discovery"
    )
    modbus.add_argument(
        "--base-address",
        type=int,
        help="SunSpec: look for 'SunS' only here (default: 40000, 0, 50000)",
    )
    modbus.add_argument(
        "--timeout", type=float, default=1.0, help="seconds per request (default 1.0)"
    )
    modbus.add_argument("--list-maps", action="store_true", help="list the shipped maps and exit")
    modbus.add_argument(
        "-v", "--verbose", action="store_true", help="also show pymodbus's own log messages"
    )
    modbus.set_defaults(func=run_modbus)


def run_modbus(args: argparse.Namespace) -> int:
    if not args.verbose:
        # pymodbus logs its own "Failed to connect [Errno 111] ..." before we explain the same
        # failure with the endpoint and unit: one message, ours.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.list_maps:
        for name in shipped_maps():
            header = load_map(name).header
            print(f"{name:24} {header.description}\n{'':24} source: {header.source}")
        return EXIT_OK
    options: dict[str, Any] = {
        "transport": "rtu" if args.serial_port else "tcp",
        "host": args.host,
        "port": args.port,
        "serial_port": args.serial_port,
        "baudrate": args.baudrate,
        "parity": args.parity,
        "stopbits": args.stopbits,
        "unit_id": args.unit,
        "request_timeout_s": args.timeout,
    }
    try:
        if args.map:
            parsed: Any = ModbusOptions.model_validate({**options, "map": args.map})
            driver: ModbusDriver = ModbusDriver(_device("modbus", options), parsed)
        else:
            parsed = SunSpecOptions.model_validate({**options, "base_address": args.base_address})
            driver = SunSpecDriver(_device("sunspec", options), parsed)
    except (ValidationError, MapError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        for error in errors:
            print(f"bess-edge probe: {error['msg']}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_probe(driver, parsed))
    except (DriverError, OSError) as exc:
        print(f"bess-edge probe: {parsed.endpoint()} unit {args.unit}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _device(driver: str, options: dict[str, Any]) -> DeviceConfig:
    return DeviceConfig(id="probe", driver=driver, options=options)


async def _probe(driver: ModbusDriver, options: Any) -> None:
    await driver.open()
    try:
        decoded, problems = await driver.poll_values()
    finally:
        await driver.close()
    print(f"{options.endpoint()} unit {options.unit_id}")
    if isinstance(driver, SunSpecDriver):
        print(f"SunSpec: {len(driver.models)} model(s)")
        for m in driver.models:
            print(f"  model {m.id:<6} at {m.address:<6} length {m.length:<4} {model_name(m.id)}")
    else:
        assert isinstance(options, ModbusOptions)
        header = load_map(options.map).header
        print(f"map {header.name}: {header.description}")
    for key, text in driver.info.items():
        print(f"  {key:24} {text}")
    for name, values in decoded.values.items():
        print(f"  {name:40} {_format(values)}")
    if problems:
        print("data-quality problems:")
        for quality, note in problems:
            print(f"  {', '.join(quality.names())}: {note}")
    else:
        print("no data-quality problems")


def _format(values: Any) -> str:
    text = " ".join("-" if math.isnan(v) else f"{v:g}" for v in values)
    return textwrap.fill(text, width=100, subsequent_indent=" " * 43) if len(values) > 1 else text
