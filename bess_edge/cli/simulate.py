"""``bess-edge simulate can``: the simulated BMS speaking CAN, for demos and end-to-end tests.

The simulator's state (:class:`~bess_edge.drivers.sim.SimulatedString`) is encoded with the same
DBC and the same ``signals`` mapping the ``can`` driver decodes, so a gateway pointed at the same
bus receives, within the DBC's resolution, exactly what was simulated.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import can

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, load_or_exit
from bess_edge.config import ConfigError, DeviceConfig, Settings, read_toml
from bess_edge.drivers.can_encode import FrameEncoder
from bess_edge.drivers.can_map import CanOptions
from bess_edge.drivers.sim import SimOptions, SimulatedString
from bess_edge.model import now_ms
from bess_edge.resources import data_dir

EPILOG = """\
examples:
  # a simulated 384-cell rack on SocketCAN, decoded by config/can-rack.toml's mapping
  bess-edge simulate can --config config/can-rack.toml
  # the same over slcan (a USB-CAN adapter, or one end of a socat pty pair)
  bess-edge simulate can --dbc rack_bms.dbc --interface slcan --channel /dev/pts/7
  # a Pylontech-protocol battery on a python-can virtual bus, 10 cycles then exit
  bess-edge simulate can --dbc pylontech_lv.dbc --interface virtual --channel demo --cycles 10

Without --config the mapping comes from the shipped config/can-*.toml that uses the DBC.
"""


_NO_NOISE = {"voltage_noise_v": 0.0, "current_noise_a": 0.0, "temperature_noise_c": 0.0}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a simulated BMS on a bus (CAN)",
        description="Run the simulated BMS and publish its state on a real bus.",
    )
    kinds = parser.add_subparsers(title="bus", metavar="BUS", required=True)
    can_parser = kinds.add_parser(
        "can",
        help="send the simulated BMS's state as CAN frames encoded with a DBC",
        description="Send the simulated string's state as CAN frames, encoded with a DBC and "
        "the 'signals' mapping of a can device's config, once per --period, until Ctrl-C.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    can_parser.add_argument("--config", "-c", type=Path, help="a config with a can device")
    can_parser.add_argument("--device", help="the can device of --config (default: the first)")
    can_parser.add_argument("--dbc", help="DBC path or shipped name (default: the device's)")
    can_parser.add_argument("--interface", help="python-can interface (default: the device's)")
    can_parser.add_argument("--channel", help="channel, e.g. can0, /dev/pts/3, socket://host:port")
    can_parser.add_argument("--bitrate", type=int, help="bit/s (default: the device's)")
    can_parser.add_argument(
        "--period", type=float, default=1.0, metavar="S", help="seconds between state cycles"
    )
    can_parser.add_argument("--cycles", type=int, help="stop after this many cycles")
    can_parser.add_argument("--seed", type=int, default=1, help="simulator random seed")
    can_parser.add_argument(
        "--profile",
        choices=["idle", "constant", "daily", "regulation"],
        default="constant",
        help="current profile of the simulated string (default: constant)",
    )
    can_parser.add_argument(
        "--current", type=float, default=-20.0, metavar="A", help="constant current, > 0 charging"
    )
    can_parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="simulated seconds per wall-clock second (0 freezes the state)",
    )
    can_parser.add_argument(
        "--no-noise",
        action="store_true",
        help="no sensor noise: with --time-scale 0 every cycle after the first sends the same "
        "state, so a receiver can be checked value by value",
    )
    can_parser.set_defaults(func=simulate_can)


def simulate_can(args: argparse.Namespace) -> int:
    try:
        device, options = _device_and_options(args)
    except (ConfigError, ValueError, KeyError) as exc:
        print(f"bess-edge simulate can: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts = {f: m.count for f, m in options.signals.items() if hasattr(m, "count")}
    sim = SimulatedString(
        SimOptions(
            cells=counts.get("cell_voltage_v", 16),
            temperature_sensors=counts.get("cell_temperature_c"),
            profile=args.profile,
            current_a=args.current,
            seed=args.seed,
            **(_NO_NOISE if args.no_noise else {}),
        ),
        device.chemistry_preset(),
        device.capacity_ah,
    )
    encoder = FrameEncoder(options.slots(), options.invert_current)
    kwargs: dict[str, Any] = dict(options.bus_options)
    if options.channel is not None:
        kwargs["channel"] = options.channel
    if options.bitrate is not None:
        kwargs["bitrate"] = options.bitrate
    try:
        bus = can.Bus(interface=options.interface, **kwargs)
    except Exception as exc:  # python-can raises interface-specific errors
        where = f"{options.interface} {options.channel or ''}".strip()
        print(f"bess-edge simulate can: cannot open {where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    print(
        f"simulating {device.id}: {sim.options.cells} cells, {options.dbc} on "
        f"{options.interface} {options.channel or ''}, every {args.period:g} s",
        file=sys.stderr,
        flush=True,
    )
    cycle = 0
    try:
        while not stop.is_set() and (args.cycles is None or cycle < args.cycles):
            started = time.monotonic()
            reading = sim.measure(now_ms(), device.id)
            for frame in encoder.frames(reading):
                bus.send(
                    can.Message(
                        arbitration_id=frame.frame_id,
                        data=frame.data,
                        is_extended_id=frame.is_extended,
                    )
                )
            cycle += 1
            stop.wait(max(args.period - (time.monotonic() - started), 0.0))
            sim.advance(args.period * args.time_scale)
    except can.CanError as exc:
        print(f"bess-edge simulate can: send failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        bus.shutdown()
    print(f"sent {cycle} cycles", file=sys.stderr)
    return EXIT_OK


def _device_and_options(args: argparse.Namespace) -> tuple[DeviceConfig, CanOptions]:
    """The can device (from --config, or the shipped config of --dbc) with the CLI overrides."""
    if args.config is not None:
        settings = load_or_exit(args.config)
    elif args.dbc is not None:
        settings = _shipped_config_for(args.dbc)
    else:
        raise ValueError("give --config, or --dbc with a DBC that has a shipped config")
    candidates = [d for d in settings.devices if d.driver == "can"]
    if args.device is not None:
        candidates = [d for d in candidates if d.id == args.device]
    if not candidates:
        raise ValueError(f"no can device {args.device or ''} in the config".replace("  ", " "))
    device = candidates[0]
    options = device.parsed_options
    assert isinstance(options, CanOptions)
    overrides = {
        key: getattr(args, key)
        for key in ("dbc", "interface", "channel", "bitrate")
        if getattr(args, key) is not None
    }
    return device, CanOptions.model_validate(options.model_dump() | overrides)


def _shipped_config_for(dbc: str) -> Settings:
    name = Path(dbc).name
    for path in sorted(data_dir("config").glob("can-*.toml")):
        devices = read_toml(path).get("devices", [])
        if any(d.get("options", {}).get("dbc") == name for d in devices):
            return load_or_exit(path)
    raise ValueError(f"no shipped config maps {name}; give --config with a mapping for it")
