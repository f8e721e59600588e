"""``driver = "modbus"``: any BMS reachable over Modbus TCP or RTU, described by a register map.

Adding a BMS means writing a map file (see ``docs/modbus.md``), not Python. The driver plans the
map's registers into as few reads as the device allows once, then each poll reads those blocks on
the shared connection, decodes them in one vectorised pass and returns a Reading in SI units with
current > 0 while charging. Bad values are flagged on the Reading; an unreachable device raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from bess_edge.drivers.base import Driver
from bess_edge.drivers.modbus_decode import (
    Block,
    Decoded,
    Decoder,
    decode_string,
    image_size,
    plan_blocks,
)
from bess_edge.drivers.modbus_transport import (
    Connection,
    ConnectionOptions,
    ImageRead,
    NothingReadable,
    acquire,
    read_image,
    release,
)
from bess_edge.drivers.register_map import (
    FLAG_TARGETS,
    TARGETS,
    Field,
    MapError,
    load_map,
)
from pydantic import model_validator

from bess_edge.model import FloatArray, Quality, Reading, now_ms


class ModbusOptions(ConnectionOptions):
    # A shipped map's name (``bess-edge probe modbus --list-maps``) or a path to a TOML file.
    map: str

    @property
    def reports_cell_voltages(self) -> bool:
        return any(f.name == "cell_voltage_v" for f in load_map(self.map).fields)

    @model_validator(mode="after")
    def _map_loads(self) -> ModbusOptions:
        try:
            load_map(self.map)
        except MapError as exc:
            raise ValueError(str(exc)) from None
        return self


class ReadingLayout:
    """Where each decoded field goes in a Reading, worked out once per map, not once per poll."""

    def __init__(self, slices: list[tuple[Field, slice]]) -> None:
        self.scalars: list[tuple[str, int]] = []
        self.flags: list[tuple[str, int]] = []
        self.arrays: list[tuple[str, slice]] = []
        self.extras: list[tuple[str, int]] = []
        for f, s in slices:
            if f.name.startswith("extra."):
                self.extras.append((f.name.removeprefix("extra."), s.start))
            elif f.name in FLAG_TARGETS:
                self.flags.append((f.name, s.start))
            elif TARGETS[f.name].array:
                self.arrays.append((f.name, s))
            else:
                self.scalars.append((f.name, s.start))
        self.clean_reading = self._compile_clean_reading()

    def reading(self, device_id: str, ts_ms: int, flat: FloatArray) -> Reading:
        """A Reading from every element's value in map order (NaN where unusable)."""
        values = flat.tolist()  # Python floats: cheaper to pick one by one than numpy scalars
        kwargs: dict[str, Any] = {name: values[i] for name, i in self.scalars}
        for name, i in self.flags:
            kwargs[name] = int(values[i]) if math.isfinite(values[i]) else 0
        for name, s in self.arrays:
            kwargs[name] = flat[s]
        extra = {name: values[i] for name, i in self.extras}
        return Reading(device_id=device_id, ts_ms=ts_ms, extra=extra, **kwargs)

    def _compile_clean_reading(self) -> Callable[[str, int, list[float]], Reading]:
        """``clean_reading(device_id, ts_ms, values)``: the Reading of a clean poll (every value
        finite, see ``Decoder.values_if_clean``) in one generated call with literal indices.

        Right after a round trip (cold caches), building it field by field as :meth:`reading`
        does took 13-15 µs on a 16-cell RTU poll, one call 9-10 µs (benchmarks/modbus_bench.py).
        """
        args = ["device_id=device_id", "ts_ms=ts_ms"]
        args += [f"{name}=v[{i}]" for name, i in self.scalars]
        args += [f"{name}=int(v[{i}])" for name, i in self.flags]
        args += [f"{name}=_array(v[{s.start}:{s.stop}], _float64)" for name, s in self.arrays]
        extra = ", ".join(f"{name!r}: v[{i}]" for name, i in self.extras)
        args.append(f"extra={{{extra}}}")
        call = f"_Reading({', '.join(args)})"
        source = f"def clean_reading(device_id, ts_ms, v):\n    return {call}\n"
        namespace: dict[str, Any] = dict(_Reading=Reading, _array=np.array, _float64=np.float64)
        exec(source, namespace)  # the source holds only field names, indices and reprs
        return namespace["clean_reading"]  # type: ignore[no-any-return]


class ModbusDriver(Driver):
    """Polls one unit id through a shared TCP or RTU connection."""

    Options = ModbusOptions
    options: ConnectionOptions
    _layout: ReadingLayout  # set by _describe, before the first read

    def __init__(self, device, options) -> None:  # type: ignore[no-untyped-def]
        super().__init__(device, options)
        self._conn: Connection | None = None
        self._blocks: list[Block] = []
        self._size = 0
        self._decoder: Decoder | None = None
        self.info: dict[str, str] = {}  # identity strings read at open (serial number, ...)
        # Problems met at open (identity strings refused), flagged on the next Reading, which
        # also carries the identity read (see _first_after_open).
        self._open_problems: list[tuple[Quality, str]] = []
        self._identity_pending = False

    @property
    def identity(self) -> dict[str, str]:
        """The identity strings, by the map's own ``[info.*]`` names."""
        return dict(self.info)

    def _use_fields(self, fields: tuple[Field, ...], max_registers: int, max_gap: int) -> None:
        self._blocks = plan_blocks(fields, max_registers, max_gap)
        self._size = image_size(self._blocks)
        self._decoder = Decoder(fields, self._blocks)

    async def open(self) -> None:
        await self.close()
        self._conn = await acquire(
            self.options.endpoint(), self.options.request_timeout_s, self.options.retries
        )
        try:
            await self._describe()
        except BaseException:
            await self.close()
            raise

    async def _describe(self) -> None:
        """Learn what to poll: here, from the map (read once; SunSpec discovers instead)."""
        if self._decoder is not None:
            return
        assert isinstance(self.options, ModbusOptions)
        register_map = load_map(self.options.map)
        self.info = await self._read_strings(register_map.info) if register_map.info else {}
        self._identity_pending = True
        header = register_map.header
        self._use_fields(register_map.fields, header.max_registers, header.max_gap)
        assert self._decoder is not None
        self._layout = ReadingLayout(self._decoder.slices)

    async def _read_strings(self, fields: tuple[Field, ...] | list[Field]) -> dict[str, str]:
        """Identity strings (``info.<name>`` fields), by name; those refused are left out."""
        blocks = plan_blocks(fields)
        names = ", ".join(f.name for f in fields)
        try:
            assert self._conn is not None  # called by open(), once connected
            got = await read_image(self._conn, self.options.unit_id, blocks, image_size(blocks))
        except NothingReadable as exc:
            # Polling goes on without them, but the operator must see why they are missing.
            self._open_problems.append((Quality.PARTIAL, f"identity ({names}) not read: {exc}"))
            return {}
        self._open_problems += [(q, f"identity: {note}") for q, note in got.problems]
        info = {}
        for f in fields:
            text = decode_string(got.image, got.ok, blocks, f)
            if text is not None:
                info[f.name.removeprefix("info.")] = text
        return info

    async def _poll(self) -> ImageRead:
        """One poll's registers; the plan keeps the splits the replies forced."""
        if self._conn is None or self._decoder is None:
            await self.open()
        assert self._conn is not None
        got = await read_image(self._conn, self.options.unit_id, self._blocks, self._size)
        self._blocks = got.blocks
        return got

    def _decode(self, got: ImageRead) -> tuple[Decoded, list[tuple[Quality, str]]]:
        assert self._decoder is not None
        decoded = self._decoder.decode(got.image, got.ok, got.all_read)
        if decoded.problems:
            return decoded, got.problems + decoded.problems
        return decoded, got.problems

    async def poll_values(self) -> tuple[Decoded, list[tuple[Quality, str]]]:
        """One poll's decoded values by field name, and the problems met (for probe, SunSpec)."""
        return self._decode(await self._poll())

    async def read(self) -> Reading:
        ts_ms = now_ms()
        # _poll's body, inlined: one coroutine layer less to resume per poll.
        if self._conn is None or self._decoder is None:
            await self.open()
        assert self._conn is not None
        got = await read_image(self._conn, self.options.unit_id, self._blocks, self._size)
        self._blocks = got.blocks
        assert self._decoder is not None
        if got.all_read and not got.problems:
            # The common case, every value usable, decoded without numpy (see _compile_clean).
            values = self._decoder.values_if_clean(got.wire)
            if values is not None:
                reading = self._layout.clean_reading(self.device_id, ts_ms, values)
                return self._first_after_open(reading) if self._identity_pending else reading
        decoded, problems = self._decode(got)
        reading = self._layout.reading(self.device_id, ts_ms, decoded.flat)
        for quality, note in problems:
            reading.flag(quality, note)
        return self._first_after_open(reading) if self._identity_pending else reading

    def _first_after_open(self, reading: Reading) -> Reading:
        """The identity read at open and the problems met reading it, on the first Reading."""
        for quality, note in self._open_problems:
            reading.flag(quality, note)
        self._open_problems = []
        reading.identity = self.identity
        self._identity_pending = False
        return reading

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            release(conn)
