"""``driver = "sunspec"``: a SunSpec energy-storage device, discovered rather than mapped.

At open the driver finds the ``SunS`` marker (40000, then 0, then 50000), walks the model chain
(ID, length) to the end marker 0xFFFF, reads model 1 (manufacturer, model, serial number) and
turns every point of the energy-storage models 802 (battery base), 803 (lithium-ion bank), 804
(lithium-ion string) and 805 (lithium-ion module) into register-map fields, using the layouts of
:mod:`bess_edge.drivers.sunspec_models`. Polling then runs through the same planner and decoder
as the ``modbus`` driver. How points map to the Reading is documented in ``docs/modbus.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from bess_edge.drivers.base import DriverError
from bess_edge.drivers.modbus import ModbusDriver
from bess_edge.drivers.modbus_decode import Block
from bess_edge.drivers.modbus_transport import ConnectionOptions, ExceptionResponse, read_block
from bess_edge.drivers.plausible import plausible_range
from bess_edge.drivers.register_map import Field
from bess_edge.drivers.sunspec_models import (
    BASE_ADDRESSES,
    END_ID,
    MARKER,
    NOT_IMPLEMENTED,
    NUMERIC,
    Point,
    layout,
)
from pydantic import Field as PydanticField

from bess_edge.model import FloatArray, Quality, Reading, now_ms

STORAGE_MODELS = (802, 803, 804, 805)
# Model 1 (common) points -> identity names shared by every driver.
IDENTITY = {"Mn": "manufacturer", "Md": "model", "SN": "serial_number", "Vr": "firmware"}
MAX_MODELS = 200  # a chain longer than this is a device bug, not a real layout

# Points whose values fill a Reading field: their plausible range comes from that field, and a
# "not implemented" value is a data-quality problem (for every other point it is just absent).
READING_POINTS: dict[int, dict[str, str]] = {
    802: {
        "V": "pack_voltage_v",
        "A": "pack_current_a",
        "W": "pack_power_w",
        "SoC": "bms_soc_pct",
        "SoH": "bms_soh_pct",
    },
    805: {"CellV": "cell_voltage_v", "CellTmp": "cell_temperature_c"},
}
# 802's cell-voltage extremes: the Reading's own fields, used when no 805 gives the cells.
EXTREME_POINTS: dict[str, str] = {
    "CellVMax": "cell_voltage_max_v",
    "CellVMin": "cell_voltage_min_v",
}
# Points that go to Reading.extra, by model: SunSpec name -> our name (SI unit in the name).
EXTRA_POINTS: dict[int, dict[str, str]] = {
    802: {
        "AHRtg": "capacity_rating_ah",
        "WHRtg": "energy_rating_wh",
        "WChaRteMax": "max_charge_power_w",
        "WDisChaRteMax": "max_discharge_power_w",
        "DoD": "depth_of_discharge_pct",
        "NCyc": "cycle_count",
        "ChaSt": "charge_status",
        "CellVAvg": "cell_voltage_avg_v",
        "AChaMax": "max_charge_current_a",
        "ADisChaMax": "max_discharge_current_a",
    },
    803: {
        "NStr": "strings",
        "NStrCon": "strings_connected",
        "ModTmpMax": "module_temperature_max_c",
        "ModTmpMin": "module_temperature_min_c",
        "ModTmpAvg": "module_temperature_avg_c",
    },
    804: {  # per string, prefixed "string<Idx>_"
        "NMod": "modules",
        "St": "status",
        "SoC": "soc_pct",
        "SoH": "soh_pct",
        "A": "current_a",
        "V": "voltage_v",
        "CellVMax": "cell_voltage_max_v",
        "CellVMin": "cell_voltage_min_v",
        "ModTmpMax": "module_temperature_max_c",
        "ModTmpMin": "module_temperature_min_c",
    },
}
CURRENT_POINTS = frozenset({"current_a"})
# Model 802 ChaSt symbols (model_802.json): the charge state a device reports with its current.
CHARGING, DISCHARGING = 4, 3


class SunSpecOptions(ConnectionOptions):
    base_address: int | None = PydanticField(None, ge=0, le=0xFFFD)  # look for "SunS" only here
    # SunSpec 802 does not say which sign A and W take while charging; we read them as charge
    # positive. A device that counts discharge as positive needs ``invert_current = true``
    # (the driver flags INCONSISTENT when A disagrees with the charge status ChaSt).
    invert_current: bool = False


@dataclass(frozen=True, slots=True)
class ModelInstance:
    id: int
    address: int  # of its ID register
    length: int  # registers after ID and L
    index: int  # 0 for the first instance of this model id, 1 for the next, ...

    @property
    def key(self) -> str:
        return f"{self.id}:{self.index}"


def point_field(model: ModelInstance, point: Point) -> Field:
    """A register-map field for one numeric SunSpec point of one model instance."""
    leaf = point.name.rsplit(".", 1)[-1]
    target = READING_POINTS.get(model.id, {}).get(leaf)
    extra = EXTRA_POINTS.get(model.id, {}).get(leaf)
    if model.id == 802 and leaf in EXTREME_POINTS:
        extra = EXTREME_POINTS[leaf]
    valid = plausible_range(target or extra) if (target or extra) else (-math.inf, math.inf)
    missing = NOT_IMPLEMENTED.get(point.type)
    return Field(
        name=f"{model.key}.{point.name}",
        function="holding",
        address=model.address + point.offset,
        type=NUMERIC[point.type],  # type: ignore[arg-type]
        scale=10.0**point.sf_value if point.sf_value is not None else 1.0,
        scale_address=None if point.sf_offset is None else model.address + point.sf_offset,
        valid_min=valid[0],
        valid_max=valid[1],
        missing=missing,
        flag_missing=target is not None,
    )


class SunSpecDriver(ModbusDriver):
    """Discovers the SunSpec model chain at open, then polls models 802-805."""

    Options = SunSpecOptions
    options: SunSpecOptions

    def __init__(self, device, options) -> None:  # type: ignore[no-untyped-def]
        super().__init__(device, options)
        self.models: list[ModelInstance] = []
        # Per 805 model: the field names of its cells' voltages, in cell order (found once).
        self._cell_names: dict[str, list[str]] = {}

    async def _describe(self) -> None:
        if self._decoder is not None:
            return
        base = await self._find_base()
        self.models = await self._walk(base + 2)
        common = [m for m in self.models if m.id == 1]
        if common:
            self.info = await self._read_common(common[0])
        self._identity_pending = True
        storage = [m for m in self.models if m.id in STORAGE_MODELS]
        if not storage:
            found = ", ".join(str(m.id) for m in self.models) or "none"
            raise DriverError(f"no SunSpec energy-storage model (802-805); models found: {found}")
        fields = []
        for model in storage:
            try:
                points = layout(model.id, model.length)
            except ValueError as exc:
                raise DriverError(f"SunSpec model at {model.address}: {exc}") from None
            fields += [point_field(model, p) for p in points if p.type in NUMERIC]
        self._use_fields(tuple(fields), max_registers=125, max_gap=0)
        self._cell_names = {
            m.key: [f.name for f in fields if f.name.startswith(f"{m.key}.")
                    and f.name.endswith(".CellV")]
            for m in storage
            if m.id == 805
        }  # fmt: skip

    async def _registers(self, address: int, count: int) -> list[int]:
        assert self._conn is not None
        async with self._conn.exclusive():
            block = Block("holding", address, count, 0)
            registers = await read_block(self._conn.client, self.options.unit_id, block)
        return registers.tolist()  # type: ignore[no-any-return]

    async def _find_base(self) -> int:
        candidates = (
            (self.options.base_address,)
            if self.options.base_address is not None
            else BASE_ADDRESSES
        )
        silent: list[int] = []
        last_error: DriverError | None = None
        for base in candidates:
            try:
                if tuple(await self._registers(base, 2)) == MARKER:
                    return base
            except ExceptionResponse:
                continue  # nothing there: try the next place the specification allows
            except DriverError as exc:
                # No answer at all: some devices (and gateways) stay silent for registers they do
                # not implement instead of answering ILLEGAL DATA ADDRESS, so keep looking.
                silent.append(base)
                last_error = exc
        unit = self.options.unit_id
        where = ", ".join(str(b) for b in candidates)
        if len(silent) == len(candidates):
            raise DriverError(f"unit {unit}: no answer at {where}: {last_error}")
        unanswered = f" (no answer at {', '.join(map(str, silent))})" if silent else ""
        raise DriverError(f"unit {unit}: no SunSpec marker 'SunS' at {where}{unanswered}")

    async def _walk(self, address: int) -> list[ModelInstance]:
        models: list[ModelInstance] = []
        seen: dict[int, int] = {}
        while len(models) < MAX_MODELS:
            try:
                model_id, length = await self._registers(address, 2)
            except ExceptionResponse:
                if not models:
                    raise
                return models  # some devices refuse reads past their last model, no 0xFFFF
            if model_id == END_ID:
                return models
            models.append(ModelInstance(model_id, address, length, seen.get(model_id, 0)))
            seen[model_id] = seen.get(model_id, 0) + 1
            address += 2 + length
            if address > 0xFFFF:
                break
        raise DriverError(f"SunSpec model chain has no end marker (stopped at {address})")

    async def _read_common(self, model: ModelInstance) -> dict[str, str]:
        """Model 1's identity strings (Mn, Md, Opt, Vr, SN)."""
        strings = [p for p in layout(1, model.length) if p.type == "string"]
        return await self._read_strings(
            [
                Field(f"info.{p.name}", "holding", model.address + p.offset, "string", p.size)
                for p in strings
            ]
        )

    async def read(self) -> Reading:
        ts_ms = now_ms()
        decoded, problems = await self.poll_values()
        reading = self._assemble(decoded.values, ts_ms)
        for quality, note in problems:
            reading.flag(quality, note)
        self._check_sign(decoded.values, reading)
        return self._first_after_open(reading) if self._identity_pending else reading

    @property
    def identity(self) -> dict[str, str]:
        """Model 1's strings under the names every driver uses."""
        return {name: self.info[k] for k, name in IDENTITY.items() if k in self.info}

    def _assemble(self, values: dict[str, FloatArray], ts_ms: int) -> Reading:
        sign = -1.0 if self.options.invert_current else 1.0

        def value(key: str) -> float:
            found = values.get(key)
            return float(found[0]) if found is not None else math.nan

        base = "802:0."
        extra: dict[str, float] = {}
        fault_flags = _flags(value(base + "Evt1"))
        cells_v: list[float] = []
        cells_t: list[float] = []
        for model in sorted(self.models, key=lambda m: self._module_order(m, values)):
            key = model.key + "."
            prefix = ""
            if model.id == 804:
                prefix = f"string{_int(value(key + 'Idx'), model.index + 1)}_"
                fault_flags |= _flags(value(key + "Evt1"))
            for point, name in EXTRA_POINTS.get(model.id, {}).items():
                number = value(key + point)
                if math.isfinite(number):
                    extra[prefix + name] = number * sign if name in CURRENT_POINTS else number
            if model.id == 805:
                cells = self._cell_names[model.key]
                cells_v += [value(k) for k in cells]
                cells_t += [value(k.removesuffix("CellV") + "CellTmp") for k in cells]
        return Reading(
            device_id=self.device_id,
            ts_ms=ts_ms,
            pack_voltage_v=value(base + "V"),
            pack_current_a=sign * value(base + "A"),
            pack_power_w=sign * value(base + "W"),
            bms_soc_pct=value(base + "SoC"),
            bms_soh_pct=value(base + "SoH"),
            status_flags=_int(value(base + "State"), 0),
            fault_flags=fault_flags,
            cell_voltage_v=np.asarray(cells_v),
            cell_temperature_c=np.asarray(cells_t),
            cell_voltage_min_v=value(base + "CellVMin"),
            cell_voltage_max_v=value(base + "CellVMax"),
            extra=_with_series_cells(extra, value(base + "V")),
        )

    @staticmethod
    def _module_order(model: ModelInstance, values: dict[str, FloatArray]) -> tuple[float, ...]:
        """805 modules in (string, module) order, so cell arrays follow the physical string."""
        if model.id != 805:
            return (0.0, 0.0, float(model.address))
        found = [values.get(f"{model.key}.{p}") for p in ("StrIdx", "ModIdx")]
        return (
            *tuple(float(v[0]) if v is not None else math.inf for v in found),
            float(model.address),
        )

    def _check_sign(self, values: dict[str, FloatArray], reading: Reading) -> None:
        status = values.get("802:0.ChaSt")
        current = reading.pack_current_a
        if status is None or not math.isfinite(current) or current == 0:
            return
        if (status[0] == CHARGING and current < 0) or (status[0] == DISCHARGING and current > 0):
            reading.flag(
                Quality.INCONSISTENT,
                f"802.A = {current:g} A disagrees with ChaSt = {int(status[0])}; "
                "check the device's sign convention (option invert_current)",
            )


# The pack voltage over the average cell voltage is the series count to within busbar drops
# and rounding of both: a ratio this far from a whole number is no count.
SERIES_RATIO_TOLERANCE = 0.1


def _with_series_cells(extra: dict[str, float], pack_voltage_v: float) -> dict[str, float]:
    """``series_cells`` from 802's V / CellVAvg when the device gives both, so the diagnostics
    need not guess it from the chemistry's nominal voltage (53.18 V of a 16S LFP pack is 17
    cells at 3.2 V nominal)."""
    avg = extra.get("cell_voltage_avg_v", math.nan)
    if math.isfinite(pack_voltage_v) and math.isfinite(avg) and avg > 0:
        ratio = pack_voltage_v / avg
        if round(ratio) >= 1 and abs(ratio - round(ratio)) <= SERIES_RATIO_TOLERANCE:
            extra["series_cells"] = float(round(ratio))
    return extra


def _int(number: float, default: int) -> int:
    return int(number) if math.isfinite(number) else default


def _flags(number: float) -> int:
    return _int(number, 0)
