"""Ohmic resistance R0 from the voltage response to current steps, per cell and per string.

Between two polls a second apart the open-circuit voltage and the RC pair barely move, so a
change of current ΔI shows up as ΔV ≈ R0·ΔI (the "direct current internal resistance" of the
HPPC test, USABC/INL Battery Test Manual, INL/EXT-15-34184, §3.3). Each step that passes the
validity gates updates a recursive least-squares fit of ΔV = R0·ΔI with forgetting; the samples
are normalised to 25 °C first with the chemistry's Arrhenius-like factor, so a cold morning
does not read as ageing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_or
from bess_edge.model import FloatArray

# Gates: a step must be at least 2 % of 1C (well above the current sensor's noise), the two
# samples at most 2 s apart (over 2 s the RC pair adds < 5 % of R1·ΔI for τ ≥ 40 s).
MIN_STEP_C = 0.02
MAX_STEP_DT_S = 2.0
# A plausible step estimate lies within 0.2x..10x of the preset; outside, it is a glitch.
PLAUSIBLE_RATIO = (0.2, 10.0)
# Forgetting per accepted step: a memory of about 200 steps (days of normal operation).
FORGETTING = 0.995
# The 1-s DC pulse resistance of datasheets and HPPC tests is measured with steps of 0.5C and
# more: smaller steps read higher on most cells (Butler-Volmer kinetics linearise only at small
# currents, so the charge-transfer share of the 1-s drop falls with the step), which is why the
# small-signal value is a quantity of its own. A memory of ~20 such steps (weeks at one a day).
PULSE_MIN_C = 0.5
PULSE_FORGETTING = 0.95
# Model floor of a pulse estimate's relative sigma: SOC and temperature differ between steps.
PULSE_FLOOR = 0.03


def temperature_factor(chemistry: Chemistry, temperature_c: FloatArray | float) -> FloatArray:
    """R(T)/R(25 °C) from the chemistry's exponential law; 1 where the temperature is unknown."""
    t = finite_or(np.asarray(temperature_c, dtype=np.float64), 25.0)
    return np.exp(chemistry.r_temp_coeff_per_c * (25.0 - t))


class ResistanceEstimator:
    """Recursive least squares of ΔV = R0·ΔI for the string (column 0) and each cell."""

    def __init__(self, chemistry: Chemistry, capacity_ah: float, cells: int) -> None:
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        self.nominal_cell_r0_ohm = chemistry.r0_ohm(capacity_ah)
        self.sxx = np.zeros(cells + 1)
        self.sxy = np.zeros(cells + 1)
        self.steps = np.zeros(cells + 1)
        # 1-s pulses: weight, weighted sums of the ratios ΔV/ΔI and of their squares.
        self.pulse_w = np.zeros(cells + 1)
        self.pulse_r = np.zeros(cells + 1)
        self.pulse_rr = np.zeros(cells + 1)
        # The derived arrays below, read several times a poll but changed only by a step.
        self._views: dict[str, FloatArray] = {}

    def update(
        self,
        delta_current_a: float,
        dt_s: float,
        delta_voltage_v: FloatArray,
        series_cells: FloatArray,
        temperature_c: FloatArray,
    ) -> None:
        """Use one poll-to-poll step: ΔI [A] and ΔV [V] of the string (index 0) and each cell.

        ``series_cells`` is how many cells each column spans (the string: all of them), so the
        string value is per cell and comparable with the preset; NaN ΔV columns are skipped.
        """
        if not (np.isfinite(delta_current_a) and 0 < dt_s <= MAX_STEP_DT_S):
            return
        if abs(delta_current_a) < MIN_STEP_C * self.capacity_ah:
            return
        self._views.clear()
        dv25 = delta_voltage_v / series_cells / temperature_factor(self.chemistry, temperature_c)
        ratio = dv25 / delta_current_a / self.nominal_cell_r0_ohm
        ok = np.isfinite(ratio) & (ratio > PLAUSIBLE_RATIO[0]) & (ratio < PLAUSIBLE_RATIO[1])
        self.steps = self.steps + ok
        if abs(delta_current_a) >= PULSE_MIN_C * self.capacity_ah:
            r = np.where(ok, dv25 / delta_current_a, 0.0)
            keep = np.where(ok, PULSE_FORGETTING, 1.0)
            self.pulse_w = keep * self.pulse_w + ok
            self.pulse_r = keep * self.pulse_r + r
            self.pulse_rr = keep * self.pulse_rr + r**2
            return
        forget = np.where(ok, FORGETTING, 1.0)
        self.sxx = forget * self.sxx + np.where(ok, delta_current_a**2, 0.0)
        self.sxy = forget * self.sxy + np.where(ok, dv25 * delta_current_a, 0.0)

    @property
    def small_signal_25c_ohm(self) -> FloatArray:
        """Per-cell small-signal R0 at 25 °C [Ω] (steps below 0.5C): string average (index 0)
        then each cell; NaN before a step."""
        return self._view("small_signal", self._small_signal)

    def _small_signal(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sxx > 0, self.sxy / self.sxx, np.nan)

    @property
    def r0_25c_ohm(self) -> FloatArray:
        """Per-cell R0 at 25 °C [Ω] as reported (``r0_ohm``, ``cell_r0_ohm``): the 1-s pulse
        value where steps >= 0.5C were seen, the small-signal one otherwise."""
        return self._view("r0", self._r0)

    def _r0(self) -> FloatArray:
        pulse = self.pulse_1s_ohm
        return np.where(np.isfinite(pulse), pulse, self.small_signal_25c_ohm)

    @property
    def pulse_1s_ohm(self) -> FloatArray:
        """Per-cell 1-s DC pulse resistance at 25 °C [Ω] from steps ≥ 0.5C (index 0: the
        string's average cell); NaN before the first such step."""
        return self._view("pulse", self._pulse)

    def _pulse(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pulse_w > 0, self.pulse_r / self.pulse_w, np.nan)

    @property
    def pulse_1s_sigma_ohm(self) -> FloatArray:
        """Sigma of :attr:`pulse_1s_ohm`: the steps' scatter over their number, and a floor
        for what differs between steps (SOC, temperature, relaxation state)."""
        return self._view("pulse_sigma", self._pulse_sigma)

    def _pulse_sigma(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.pulse_r / self.pulse_w
            var = np.maximum(self.pulse_rr / self.pulse_w - mean**2, 0.0)
            # One step says nothing of the scatter: assume 10 % until a second one comes.
            var = np.where(self.pulse_w > 1.0, var, (0.1 * mean) ** 2)
            sigma = np.sqrt(var / np.maximum(self.pulse_w, 1.0) + (PULSE_FLOOR * mean) ** 2)
            return np.where(self.pulse_w > 0, sigma, np.nan)

    def r0_or_preset_ohm(self) -> FloatArray:
        """R0 at 25 °C [Ω] per column for the models: as reported, the preset before a step."""
        return self._view("r0_or_preset", self._r0_or_preset)

    def _r0_or_preset(self) -> FloatArray:
        r0 = self.r0_25c_ohm
        return np.where(np.isfinite(r0), r0, self.nominal_cell_r0_ohm)

    def _view(self, name: str, compute: Callable[[], FloatArray]) -> FloatArray:
        """A derived array, computed once per change of the sums; read-only, since every
        reader until the next step shares it."""
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = compute()
            view.flags.writeable = False
        return view

    def state(self) -> dict[str, Any]:
        return {
            "sxx": self.sxx,
            "sxy": self.sxy,
            "steps": self.steps,
            "pulse_w": self.pulse_w,
            "pulse_r": self.pulse_r,
            "pulse_rr": self.pulse_rr,
        }

    def load(self, state: dict[str, Any]) -> None:
        # Blobs from before the pulse resistance was kept have no pulse sums: they start at 0.
        for name in ("sxx", "sxy", "steps", "pulse_w", "pulse_r", "pulse_rr"):
            if name not in state and name.startswith("pulse"):
                continue
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != self.sxx.shape:
                raise ValueError(f"resistance field {name} has shape {value.shape}")
            setattr(self, name, value)
        self._views.clear()


def resistance_soh_pct(r0_ohm: float, nominal_r0_ohm: float) -> float:
    """Resistance-based SOH [%]: 100 at the preset's R0, 80 (end of life) at double it.

    Doubling of the DC resistance is the usual power-fade end-of-life criterion (e.g. IEC
    62660-1 and the USABC manual); mapping it onto the capacity scale makes both SOHs read
    alike: a falling number with end of life at 80 %.
    """
    if not (np.isfinite(r0_ohm) and nominal_r0_ohm > 0):
        return float("nan")
    return float(100.0 - 20.0 * (r0_ohm / nominal_r0_ohm - 1.0))
