"""The per-device diagnostics pipeline the daemon calls once per poll.

Walking-skeleton version: coulomb-counted SOC seeded from the rested OCV. The estimators of
issue 3 (EKF SOC, R0, SOH, cycles, balance, thermal, anomalies) plug in here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.model import Reading


@dataclass(slots=True)
class Diagnosis:
    """What the daemon concluded about one device at one poll (SI units, SOC/SOH in %)."""

    device_id: str
    ts_ms: int
    soc_pct: float = math.nan
    soc_uncertainty_pct: float = math.nan
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, numpy arrays become lists."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class Diagnostician:
    """Holds one device's estimator state between polls."""

    def __init__(self, device_id: str, chemistry: Chemistry, capacity_ah: float) -> None:
        self.device_id = device_id
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        self._soc_pct = math.nan
        self._last_ts_ms: int | None = None

    def update(self, reading: Reading) -> Diagnosis:
        cells = reading.cell_voltage_v[np.isfinite(reading.cell_voltage_v)]
        current = reading.pack_current_a if math.isfinite(reading.pack_current_a) else 0.0
        if math.isnan(self._soc_pct) and cells.size:
            self._soc_pct = float(self.chemistry.soc_from_ocv(float(np.median(cells))))
        elif self._last_ts_ms is not None and not math.isnan(self._soc_pct):
            dt_s = (reading.ts_ms - self._last_ts_ms) / 1000.0
            self._soc_pct += 100.0 * current * dt_s / 3600.0 / self.capacity_ah
            self._soc_pct = min(max(self._soc_pct, 0.0), 100.0)
        self._last_ts_ms = reading.ts_ms
        return Diagnosis(device_id=self.device_id, ts_ms=reading.ts_ms, soc_pct=self._soc_pct)
