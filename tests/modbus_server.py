"""A real pymodbus server in its own process, serving a register image, for tests and benchmarks.

Run as a script it serves the image in a JSON file over Modbus TCP or RTU and prints
``READY <port>`` once it listens::

    python tests/modbus_server.py --image image.json --tcp 127.0.0.1:0
    python tests/modbus_server.py --image image.json --rtu /tmp/x/server --baudrate 115200

The image: ``{"units": {"1": {"holding": [[address, [u16, ...]], ...], "input": [...]}},
"exceptions": [[unit, "holding", address, code], ...]}``. Addresses not in the image answer
ILLEGAL DATA ADDRESS (pymodbus does this for undefined registers); an ``exceptions`` entry makes
any read touching that register answer the given exception code; a ``silent`` entry
``[unit, "holding", address]`` leaves any read touching that register unanswered (a device or
gateway dropping what it cannot serve), other requests still being answered.
``{"garbage": "random"}`` (TCP) answers every request with random bytes, ``{"garbage": "short"}``
(TCP) answers reads of more than 40 registers one register short, ``{"garbage": "bad_crc"}``
(RTU) with a well-formed reply whose CRC is wrong: devices that are there but talk nonsense.
Imported, this module gives the tests :class:`ServerProcess` (start, pause with SIGSTOP,
resume, stop) and :func:`pty_pair`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

Image = dict[str, Any]


def _sim_devices(image: Image) -> list[Any]:
    from pymodbus.constants import ExcCodes
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def action(faults, silent, func_code, _start, address, count, _regs, _values):  # type: ignore[no-untyped-def]
        function = "input" if func_code == 4 else "holding"
        for silent_function, silent_address in silent:
            if silent_function == function and address <= silent_address < address + count:
                await asyncio.Event().wait()  # never answers: the client's timeout runs out
        for fault_function, fault_address, code in faults:
            if fault_function == function and address <= fault_address < address + count:
                return ExcCodes(code)
        return None

    devices = []
    for unit, tables in image["units"].items():
        blocks = []
        for function in ("holding", "input"):
            runs = tables.get(function) or [[65000, [0]]]  # pymodbus needs a non-empty block
            blocks.append(
                [SimData(a, values=list(v), datatype=DataType.REGISTERS) for a, v in runs]
            )
        faults = [(f, a, c) for u, f, a, c in image.get("exceptions", []) if str(u) == str(unit)]
        silent = [(f, a) for u, f, a in image.get("silent", []) if str(u) == str(unit)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        devices.append(
            SimDevice(
                int(unit),
                simdata=(bits, bits, blocks[0], blocks[1]),
                action=partial(action, faults, silent) if faults or silent else None,
            )
        )
    return devices


async def _serve_garbage(args: argparse.Namespace, kind: str) -> int:
    """A broken device: random bytes for every TCP request, or RTU replies with a bad CRC."""
    import random
    import termios
    import tty

    rng = random.Random(4)
    if args.tcp:

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while request := await reader.read(260):
                if kind == "short" and len(request) >= 12:
                    # MBAP header + read request; answer zeros, one register short above 40.
                    count = int.from_bytes(request[10:12], "big")
                    count -= count > 40
                    pdu = bytes([request[7], 2 * count]) + bytes(2 * count)
                    mbap = request[:4] + (len(pdu) + 1).to_bytes(2, "big") + request[6:7]
                    writer.write(mbap + pdu)
                else:
                    writer.write(bytes(rng.randrange(256) for _ in range(rng.randrange(5, 40))))

        host, _, port = args.tcp.rpartition(":")
        server = await asyncio.start_server(answer, host, int(port))
        return int(server.sockets[0].getsockname()[1])
    fd = os.open(args.rtu, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)

    def reply() -> None:
        request = os.read(fd, 256)
        if len(request) >= 8 and kind == "bad_crc":
            count = int.from_bytes(request[4:6], "big")
            frame = bytes([request[0], request[1], 2 * count]) + bytes(2 * count)
            os.write(fd, frame + b"\xde\xad")  # CRC-16/MODBUS of this frame is never 0xADDE

    asyncio.get_running_loop().add_reader(fd, reply)
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    image = json.loads(Path(args.image).read_text())
    if image.get("garbage"):
        print(f"READY {await _serve_garbage(args, image['garbage'])}", flush=True)
        await asyncio.Event().wait()
    devices = _sim_devices(image)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server = ModbusTcpServer(devices, address=(host, int(port)))
        await server.serve_forever(background=True)
        bound = server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    else:
        server = ModbusSerialServer(
            devices, port=args.rtu, baudrate=args.baudrate, parity="N", stopbits=1
        )
        await server.serve_forever(background=True)
        bound = 0
    print(f"READY {bound}", flush=True)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nobody reads the pipe from here on
    await server.serving


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="register image (JSON)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", help="HOST:PORT to listen on (port 0: any free port)")
    where.add_argument("--rtu", help="serial device to serve on (one end of a pty pair)")
    parser.add_argument("--baudrate", type=int, default=115200)
    asyncio.run(_serve(parser.parse_args(argv)))


def encode(value: float | int | str, type_: str, word_order: str = "big") -> list[int]:
    """Registers of one value, encoded by pymodbus itself (independent of the driver's decoder)."""
    from pymodbus.client.mixin import ModbusClientMixin

    dt = ModbusClientMixin.DATATYPE
    kinds = {
        "u16": dt.UINT16,
        "s16": dt.INT16,
        "u32": dt.UINT32,
        "s32": dt.INT32,
        "f32": dt.FLOAT32,
        "string": dt.STRING,
    }
    order = "little" if word_order == "little" else "big"
    return ModbusClientMixin.convert_to_registers(value, kinds[type_], word_order=order)


# Registers a SunSpec device sends for a point it does not implement (SunSpec Information Model
# Specification); spelled out here, apart from the driver's own table, so the tests check it.
_UNIMPLEMENTED = {"u16": 0xFFFF, "s16": -0x8000, "u32": 0xFFFF_FFFF, "s32": -0x8000_0000}
_SUNSPEC_TYPES = {
    "uint16": "u16",
    "enum16": "u16",
    "bitfield16": "u16",
    "count": "u16",
    "acc16": "u16",
    "int16": "s16",
    "sunssf": "s16",
    "pad": "s16",
    "uint32": "u32",
    "enum32": "u32",
    "bitfield32": "u32",
    "acc32": "u32",
    "int32": "s32",
    "float32": "f32",
    "string": "string",
}


def sunspec_model(
    model_id: int, values: dict[str, Any], groups: list[dict[str, Any]] = ()
) -> list[int]:
    """One model's registers, laid out from pysunspec2's official JSON definition.

    ``values`` are raw point values by name (scale factors included, e.g. ``"SoC_SF": -1``);
    ``groups`` holds one dict per instance of the model's repeating group. A point not given
    gets the "not implemented" pattern of its type.
    """
    from importlib import resources

    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    top = json.loads(path.read_text())["group"]
    regs: list[int] = []

    def put(points: list[dict[str, Any]], given: dict[str, Any]) -> None:
        for point in points:
            kind, size = _SUNSPEC_TYPES[point["type"]], int(point.get("size", 1))
            value = given.get(point["name"])
            if point["name"] == "ID":
                value = model_id
            if kind == "string":
                text = (value or "").encode()[: 2 * size].ljust(2 * size, b"\0")
                regs.extend(int.from_bytes(text[i : i + 2], "big") for i in range(0, 2 * size, 2))
            elif kind == "f32":
                regs.extend(encode(float("nan") if value is None else value, "f32"))
            else:
                regs.extend(encode(_UNIMPLEMENTED[kind] if value is None else value, kind))

    put(top["points"], values)
    for instance in groups:
        put(top["groups"][0]["points"], instance)
    regs[1] = len(regs) - 2  # L: registers after ID and L
    return regs


def sunspec_image(models: list[list[int]], base: int = 40000) -> list[list[Any]]:
    """A holding-register run: the "SunS" marker, the models, and the end marker."""
    regs = [0x5375, 0x6E53]
    for model in models:
        regs += model
    return [[base, [*regs, 0xFFFF, 0]]]


class ServerProcess:
    """The server script in a child process; ``port`` is the TCP port it bound."""

    def __init__(self, image: Image, *, rtu: str | None = None, baudrate: int = 115200) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="modbus-image-")
        self.image_path = Path(self._dir.name) / "image.json"
        self.image_path.write_text(json.dumps(image))
        self.rtu = rtu
        self.baudrate = baudrate
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, port: int = 0, timeout_s: float = 20.0) -> ServerProcess:
        """Start (or restart, on the same port) and wait until it listens."""
        where = ["--rtu", self.rtu] if self.rtu else ["--tcp", f"127.0.0.1:{port or self.port}"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--image",
                str(self.image_path),
                "--baudrate",
                str(self.baudrate),
                *where,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"modbus test server did not start: {line!r}")
        self.port = int(line.split()[1]) or self.port
        return self

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing answers (a hung device)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (server end, client end), like a null-modem cable, via socat."""
    with tempfile.TemporaryDirectory(prefix="modbus-pty-") as tmp:
        server, client = f"{tmp}/server", f"{tmp}/client"
        proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={server}", f"pty,raw,echo=0,link={client}"],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not (os.path.exists(server) and os.path.exists(client)):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("socat did not create the pty pair")
                time.sleep(0.02)
            yield server, client
        finally:
            proc.terminate()
            proc.wait(timeout=5)


if __name__ == "__main__":
    main()
