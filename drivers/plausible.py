"""Plausibility ranges of every value a driver hands over, by name, shared by all drivers.

These are not operating limits (those are per chemistry, in the diagnostics): a value outside
its range cannot be a measurement at all, it is a decoding error, a "not available" pattern or
garbage on the wire, so the driver stores it as null (NaN) and flags the Reading OUT_OF_RANGE.
Reading fields have fixed ranges; ``extra`` values are ranged by the SI unit their name carries
(``max_charge_current_a``, ``cell_voltage_max_v``), which the mapping already checks.
"""

from __future__ import annotations

import math

INF = math.inf

# 2000 V covers 1500 V DC-class BESS strings (IEC 62933 / UL 9540 systems stop at 1500 V DC); no
# Li-ion, LFP or lead-acid cell reaches 5 V; NTC sensors used in BMS read -40..125 °C, so
# -55..150 °C leaves margin; SoC is 0..100 % by definition. SoH of a new cell may read a little
# above 100 % (capacity above rating); 120 % leaves margin and still refuses 127.5 %, the
# all-ones pattern of the usual 8-bit, 0.5 %/bit SoH signal.
CELL_VOLTAGE_V = (0.0, 5.0)
TEMPERATURE_C = (-55.0, 150.0)
SOC_PCT = (0.0, 100.0)
SOH_PCT = (0.0, 120.0)
READING_RANGES: dict[str, tuple[float, float]] = {
    "pack_voltage_v": (0.0, 2000.0),
    "pack_current_a": (-10_000.0, 10_000.0),
    "pack_power_w": (-2e7, 2e7),
    "bms_soc_pct": SOC_PCT,
    "bms_soh_pct": SOH_PCT,
    "status_flags": (-INF, INF),
    "fault_flags": (-INF, INF),
    "cell_voltage_v": CELL_VOLTAGE_V,
    "cell_temperature_c": TEMPERATURE_C,
}

# ``extra`` names by unit suffix. Limits beyond anything one BESS string or site reports.
_BY_SUFFIX: dict[str, tuple[float, float]] = {
    "v": READING_RANGES["pack_voltage_v"],
    "a": READING_RANGES["pack_current_a"],
    "w": READING_RANGES["pack_power_w"],
    "c": TEMPERATURE_C,
    "wh": (-1e12, 1e12),  # a TWh counter would be a power station, not a BESS string
    "ah": (-1e9, 1e9),
    "ohm": (0.0, 1e12),  # insulation resistance reaches GΩ
    "s": (0.0, 1e10),
    "pct": (-1000.0, 1000.0),
}
# A cycle counter: LFP cells are rated for up to ~10,000 cycles; 10^6 leaves margin and refuses
# 4,294,967,295, the all-ones pattern of a 32-bit counter.
CYCLES = (0.0, 1e6)
# Unit-less values (states, enums, counts): within a signed 32-bit integer.
UNITLESS = (-(2.0**31), 2.0**31 - 1)


def plausible_range(name: str) -> tuple[float, float]:
    """The (min, max) SI value a field or ``extra`` value named ``name`` can take."""
    if name in READING_RANGES:
        return READING_RANGES[name]
    suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
    if suffix == "v" and "cell" in name:
        return CELL_VOLTAGE_V
    if suffix == "pct":
        if "soc" in name or "depth_of_discharge" in name:
            return SOC_PCT
        if "soh" in name:
            return SOH_PCT
    if "cycle" in name:
        return CYCLES
    return _BY_SUFFIX.get(suffix, UNITLESS)


def plausible(name: str, value: float) -> bool:
    """Whether ``value`` (NaN is not) lies within ``name``'s plausible range."""
    lo, hi = plausible_range(name)
    return lo <= value <= hi
