"""Modbus connections, shared where the wire is shared, and block reads that survive bad registers.

Devices on one RS-485 bus share one serial port: they get one pymodbus client and one lock, held
for a whole poll, so two devices never interleave frames on the bus. Devices behind one Modbus TCP
gateway (same host and port, different unit ids) share one TCP connection, because many gateways
accept only one or two. The connection registry is keyed by the running event loop as well, since
a pymodbus client belongs to the loop it was created on.

Nothing here retries or backs off beyond pymodbus's own ``retries`` (kept small): the daemon's
poll task owns timeouts, back-off and ``comms_lost``, so a failed request simply raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.modbus_decode import Block, BoolArray, U16Array
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from bess_edge.model import Quality

# Modbus Application Protocol v1.1b3, section 7: exception codes.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a device is reached; equal endpoints share one connection."""

    transport: Literal["tcp", "rtu"]
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        if self.transport == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"rtu:{self.serial_port}@{self.baudrate}/8{self.parity}{self.stopbits}"


@dataclass(slots=True)
class Connection:
    """A pymodbus client shared by the devices of one endpoint."""

    endpoint: Endpoint
    client: ModbusBaseClient
    bus_lock: asyncio.Lock | None  # serial buses only: one device's poll at a time
    key: tuple[int, Endpoint]
    users: int = 0

    async def ensure_connected(self) -> None:
        """Connect if not connected (once, bounded by the client's timeout)."""
        if not self.client.connected and not await self.client.connect():
            raise DriverError(f"cannot connect to {self.endpoint}")

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold the bus for one device's poll (a no-op on TCP, where requests are tagged).

        The lock itself, not a generator-based context manager: this runs on every poll, and an
        ``asynccontextmanager`` costs a few µs each time (measured: benchmarks/modbus_bench.py).
        """
        return self.bus_lock if self.bus_lock is not None else _NO_LOCK


class ConnectionOptions(BaseModel):
    """How to reach a Modbus device: the part of ``[devices.options]`` both drivers share."""

    model_config = ConfigDict(extra="forbid")

    transport: Literal["tcp", "rtu"] = "tcp"
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None
    # Modbus over Serial Line v1.02, 2.5.1: 19200 baud and even parity are the defaults every
    # device must support; many BMS ship at 9600 8N1, so set both from the device's manual.
    baudrate: int = Field(19200, ge=1200, le=921600)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(1, ge=1, le=247)  # 0 is broadcast (no reply); 248..255 reserved
    request_timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(0, ge=0, le=3)  # pymodbus's own; back-off belongs to the poll task

    @model_validator(mode="after")
    def _address_for_transport(self) -> ConnectionOptions:
        if self.transport == "tcp" and not self.host:
            raise ValueError("transport 'tcp' needs 'host'")
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport 'rtu' needs 'serial_port'")
        return self

    def endpoint(self) -> Endpoint:
        if self.transport == "tcp":
            return Endpoint("tcp", host=self.host or "", port=self.port)
        return Endpoint(
            "rtu",
            serial_port=self.serial_port or "",
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
        )


_CONNECTIONS: dict[tuple[int, Endpoint], Connection] = {}
_NO_LOCK = contextlib.nullcontext()


class _RegistersReply(ReadHoldingRegistersResponse):
    """A read-registers reply that keeps the registers as the bytes on the wire.

    pymodbus's own reply unpacks the registers one ``struct.unpack`` at a time into a list, and
    its decoder formats the whole PDU, list included, for a debug line even when debug logging
    is off: about 7 µs for 33 registers and 21 µs for 125 per reply (pymodbus 3.16, measured).
    Slicing the bytes costs nothing; the decoder unpacks them once, for the whole poll.
    ``registers`` still works (as a list, built when asked for) for anything that reads the
    reply the usual way.
    """

    wire: bytes = b""  # big-endian, two bytes per register

    # pymodbus's __init__ sets and reads ``registers`` on every reply: keep the empty case cheap.
    @property  # type: ignore[override]
    def registers(self) -> list[int]:
        return list(struct.unpack(f">{len(self.wire) // 2}H", self.wire)) if self.wire else []

    @registers.setter
    def registers(self, registers: list[int]) -> None:
        self.wire = struct.pack(f">{len(registers)}H", *registers) if registers else b""

    def decode(self, data: bytes) -> None:
        byte_count = int(data[0])
        if byte_count >= len(data):
            raise ModbusIOException(
                f"byte_count {byte_count} > length of packet {len(data)}",
                function_code=self.function_code,
            )
        self.wire = bytes(data[1 : 1 + byte_count - byte_count % 2])

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, "
            f"transaction_id={self.transaction_id}, registers={len(self.wire) // 2})"
        )


class _HoldingReply(_RegistersReply):
    function_code = 3


class _InputReply(_RegistersReply):
    function_code = 4


def _new_client(endpoint: Endpoint, timeout_s: float, retries: int) -> ModbusBaseClient:
    client = _pymodbus_client(endpoint, timeout_s, retries)
    client.register(_HoldingReply)
    client.register(_InputReply)
    return client


def _pymodbus_client(endpoint: Endpoint, timeout_s: float, retries: int) -> ModbusBaseClient:
    # reconnect_delay=0 turns off pymodbus's background reconnect loop: reconnecting is the
    # poll task's decision, made by calling the driver's open() again after its back-off.
    if endpoint.transport == "tcp":
        return AsyncModbusTcpClient(
            endpoint.host, port=endpoint.port, timeout=timeout_s, retries=retries, reconnect_delay=0
        )
    return AsyncModbusSerialClient(
        endpoint.serial_port,
        baudrate=endpoint.baudrate,
        parity=endpoint.parity,
        stopbits=endpoint.stopbits,
        timeout=timeout_s,
        retries=retries,
        reconnect_delay=0,
    )


async def acquire(endpoint: Endpoint, timeout_s: float, retries: int) -> Connection:
    """The shared connection to ``endpoint``, connected; release it with :func:`release`."""
    key = (id(asyncio.get_running_loop()), endpoint)
    conn = _CONNECTIONS.get(key)
    if conn is None:
        client = _new_client(endpoint, timeout_s, retries)
        lock = asyncio.Lock() if endpoint.transport == "rtu" else None
        conn = Connection(endpoint, client, lock, key)
        _CONNECTIONS[key] = conn
    conn.users += 1
    try:
        await conn.ensure_connected()
    except BaseException:
        release(conn)
        raise
    return conn


def release(conn: Connection) -> None:
    """Drop one user; the last one closes the client. Safe to call once per acquire."""
    conn.users -= 1
    if conn.users <= 0:
        conn.client.close()
        if _CONNECTIONS.get(conn.key) is conn:
            del _CONNECTIONS[conn.key]


class ExceptionResponse(DriverError):
    """The device answered a request with a Modbus exception code."""

    def __init__(self, block: Block, code: int) -> None:
        self.block = block
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(
            f"{block.function} registers {block.address}..{block.address + block.count - 1}: "
            f"exception {code} ({name})"
        )


def _request(client: ModbusBaseClient, unit_id: int, block: Block) -> Awaitable[ModbusPDU]:
    read = (
        client.read_holding_registers
        if block.function == "holding"
        else client.read_input_registers
    )
    return read(block.address, count=block.count, device_id=unit_id)  # type: ignore[no-any-return]


def _wire(response: ModbusPDU, block: Block) -> bytes:
    """The registers of a reply as sent (big-endian); raises ExceptionResponse or ShortRead."""
    if response.isError():
        raise ExceptionResponse(block, int(getattr(response, "exception_code", 0)))
    if isinstance(response, _RegistersReply):
        wire = response.wire
    else:
        wire = struct.pack(f">{len(response.registers)}H", *response.registers)
    if len(wire) != 2 * block.count:
        raise ShortRead(block, len(wire) // 2)
    return wire


def _image(wire: bytes) -> U16Array:
    return np.frombuffer(wire, dtype=">u2").astype(np.uint16)


async def read_block(client: ModbusBaseClient, unit_id: int, block: Block) -> U16Array:
    """One read request; raises ExceptionResponse, or DriverError when nothing usable came."""
    try:
        response = await _request(client, unit_id, block)
    except ModbusException as exc:
        raise DriverError(f"unit {unit_id}: {exc}") from exc
    return _image(_wire(response, block))


class ShortRead(DriverError):
    """The device answered with fewer registers than asked: which ones are missing is unknown."""

    def __init__(self, block: Block, got: int) -> None:
        self.block = block
        super().__init__(
            f"{block.function} registers {block.address}..{block.address + block.count - 1}: "
            f"short read ({got} of {block.count} registers)"
        )


class NothingReadable(DriverError):
    """The device answered, but refused every register asked for."""


@dataclass(slots=True)
class ImageRead:
    """The registers of one poll, which of them arrived, and what went wrong."""

    ok: BoolArray  # read-only when every register arrived (one shared all-True array)
    blocks: list[Block]  # the plan refined by this poll's splits, to reuse next time
    problems: list[tuple[Quality, str]]
    all_read: bool = False
    wire: bytes = b""  # when all_read: every register as sent, big-endian, in image order
    _image: U16Array | None = field(default=None, repr=False)

    @property
    def image(self) -> U16Array:
        """The registers in native byte order (zero where unread), built when first asked for."""
        if self._image is None:
            self._image = _image(self.wire)
        return self._image


@functools.lru_cache(maxsize=64)
def _all_read(size: int) -> BoolArray:
    ok = np.ones(size, dtype=np.bool_)
    ok.flags.writeable = False
    return ok


async def read_image(conn: Connection, unit_id: int, blocks: list[Block], size: int) -> ImageRead:
    """Read every block, holding the bus; split a block refused with ILLEGAL DATA ADDRESS until
    the bad register stands alone, so one unimplemented register does not blank the device.

    A timeout or a broken connection raises at once (the device is unreachable). Exception
    responses and short replies mark their registers unread and flag the poll ``PARTIAL``; if no
    register at all could be read, the poll fails.
    """
    # The request is awaited here rather than through read_block: one coroutine layer less to
    # resume per reply, which is measurable on a 16-cell map.
    parts: list[tuple[Block, bytes]] = []
    refined: list[Block] = []
    unread: list[Block] = []
    problems: list[tuple[Quality, str]] = []
    pending = deque(blocks)
    client = conn.client
    async with conn.exclusive():
        if not client.connected:
            await conn.ensure_connected()
        while pending:
            block = pending.popleft()
            try:
                try:
                    response = await _request(client, unit_id, block)
                except ModbusException as exc:
                    raise DriverError(f"unit {unit_id}: {exc}") from exc
                parts.append((block, _wire(response, block)))
            except ExceptionResponse as exc:
                if exc.code == ExcCodes.ILLEGAL_ADDRESS and block.count > 1:
                    pending.extendleft(reversed(block.halves()))
                    continue
                unread.append(block)
                problems.append((Quality.PARTIAL, f"unit {unit_id}: {exc}"))
            except ShortRead as exc:
                unread.append(block)
                note = f"unit {unit_id}: {exc}"
                problems.append((Quality.PARTIAL | Quality.DECODE_ERROR, note))
            refined.append(block)
    if not unread:
        # Blocks (and the halves of split ones) are read in image order: the image is the replies
        # one after the other.
        wire = parts[0][1] if len(parts) == 1 else b"".join(w for _, w in parts)
        return ImageRead(_all_read(size), refined, problems, all_read=True, wire=wire)
    image = np.zeros(size, dtype=np.uint16)
    for block, wire in parts:
        image[block.offset : block.offset + block.count] = _image(wire)
    ok = np.ones(size, dtype=np.bool_)
    for block in unread:
        ok[block.offset : block.offset + block.count] = False
    if size and not ok.any():
        reasons = "; ".join(note for _, note in problems)
        raise NothingReadable(f"no register could be read: {reasons}")
    return ImageRead(ok, refined, problems, _image=image)
