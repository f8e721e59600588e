"""Operating limits per chemistry and the risk scale every safety finding is graded on.

A finding is ``(level, reason)``; the device's risk is the highest level found, with all the
reasons. Levels: 0 normal, 1 elevated (watch it), 2 high (a limit is crossed, act), 3 critical
(runaway conditions: isolate).
"""

from __future__ import annotations

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.model import FloatArray

RISK_LEVELS = ("normal", "elevated", "high", "critical")
Finding = tuple[int, str]

# Margin [K] before a temperature limit at which the risk becomes elevated: the ~10 K a lumped
# cell can gain within minutes under a fault, so an operator has time to act.
TEMPERATURE_WARNING_MARGIN_C = 10.0
# Beyond a voltage limit by this much [V] a Li cell is in abuse territory (plating, gassing).
VOLTAGE_ABUSE_MARGIN_V = 0.1


def temperature_limit_c(chemistry: Chemistry, current_a: float) -> tuple[float, float]:
    """(min, max) allowed cell temperature [°C]: charge limits while charging, else discharge."""
    if np.isfinite(current_a) and current_a > 0:
        return chemistry.charge_temp_min_c, chemistry.charge_temp_max_c
    return chemistry.discharge_temp_min_c, chemistry.discharge_temp_max_c


def check_limits(
    chemistry: Chemistry,
    capacity_ah: float,
    cell_voltage_v: FloatArray,
    temperature_c: FloatArray,
    current_a: float,
) -> list[Finding]:
    """Voltage, current and temperature limits of the chemistry preset, graded by severity.

    Only what points toward runaway is graded: this scale feeds the built-in
    thermal_runaway_precursor alert. A low cell voltage is not on it: the shipped
    cell-undervoltage rule is its alert. Over-discharge is harmful when the cell is charged
    again (dissolved copper plates back as dendrites and may grow an internal short), but
    that short announces itself by the precursor's own signs (heat with no current to explain
    it, a voltage sag while heating), which the thermal monitor scores; the low voltage alone
    says nothing of heat.
    """
    findings: list[Finding] = []
    v = cell_voltage_v[np.isfinite(cell_voltage_v)]
    if v.size:
        v_max = float(v.max())
        if v_max > chemistry.cell_voltage_max_v:
            level = 3 if v_max > chemistry.cell_voltage_max_v + VOLTAGE_ABUSE_MARGIN_V else 2
            findings.append((level, f"over-voltage: cell at {v_max:.3f} V"))
    if np.isfinite(current_a):
        limit_c = chemistry.max_charge_c_rate if current_a > 0 else chemistry.max_discharge_c_rate
        if abs(current_a) > limit_c * capacity_ah:
            findings.append((1, f"over-current: {current_a:.1f} A beyond {limit_c:g}C"))
    t = temperature_c[np.isfinite(temperature_c)]
    if t.size:
        t_hi = temperature_limit_c(chemistry, current_a)[1]
        hottest = float(t.max())
        if hottest >= chemistry.self_heating_onset_c:
            findings.append((3, f"self-heating region: {hottest:.1f} °C"))
        elif hottest >= t_hi:
            findings.append((2, f"over-temperature: {hottest:.1f} °C ≥ {t_hi:g} °C"))
        elif hottest >= t_hi - TEMPERATURE_WARNING_MARGIN_C:
            findings.append((1, f"approaching temperature limit: {hottest:.1f} °C"))
        # Cold is not graded here: it is no runaway precursor (it slows every reaction), and
        # this scale feeds the built-in thermal_runaway_precursor alert. Charging below the
        # limit (lithium plating) is an operating-limit alert: the shipped cell-undertemperature
        # rule, which reads the sensors directly.
    return findings
