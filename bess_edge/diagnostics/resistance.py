"""Ohmic resistance R0 from the voltage response to current steps, per cell and per string.

Between two polls a second or two apart the open-circuit voltage and the slow RC pairs barely
move, so a change of current ΔI shows up as ΔV ≈ R0·ΔI (the "direct current internal
resistance" of the HPPC test, USABC/INL Battery Test Manual, INL/EXT-15-34184, §3.3). A step
polled ``dt`` apart is seen 0..dt after it changed (on average dt/2): with polls of at most 2 s
that is the 1-s DC pulse resistance of datasheets on average, and nothing slower is taken for
it. Each step that passes the validity gates updates a recursive least-squares fit of
ΔV = R0·ΔI with forgetting (small steps) or the pulse mean (steps near 0.5C and above); the
samples are normalised to 25 °C first with the chemistry's Arrhenius-like factor, so a cold
morning does not read as ageing. The voltage noise of one poll-to-poll difference is measured
on the polls without a step, so a pulse's sigma knows how much of it is noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.numeric import finite_median, finite_or
from bess_edge.model import FloatArray

# Gates: a step must be at least 2 % of 1C (well above the current sensor's noise), the two
# samples at most 2 s apart (see the module docstring: the 1-s pulse, not a slower one).
MIN_STEP_C = 0.02
MAX_STEP_DT_S = 2.0
# A step is a glitch (a stale voltage, a reading torn between polls) when ΔV/ΔI lies outside
# 0.1x..10x of the preset by more than its voltage noise allows. The preset is r0_ohm_ah over
# the label capacity, a large energy cell's; a high-power cell has 5-10x less Ω·Ah (PyBaMM's
# NCA_Kim2011: 0.012 against the NMC preset's 0.08, a ratio of 0.15), and the noise margin
# keeps the gate from cutting one side of the noise off small steps (which biased them high).
PLAUSIBLE_RATIO = (0.1, 10.0)
GATE_NOISE_SIGMAS = 3.0
# Forgetting per accepted step: a memory of about 200 steps (days of normal operation).
FORGETTING = 0.995
# The 1-s DC pulse resistance of datasheets and HPPC tests is measured with steps of 0.5C and
# more: smaller steps read higher on most cells (Butler-Volmer kinetics linearise only at small
# currents, so the charge-transfer share of the 1-s drop falls with the step), which is why the
# small-signal value is a quantity of its own. The gate is 0.4C of the label: 0.5C of a cell at
# end of life (80 % of its label) and what a current sensor 1 % low reads of it; PyBaMM's cells
# read 0-3 % higher at 0.4C than at 0.5C. A memory of ~20 such steps (weeks at one a day).
PULSE_MIN_C = 0.4
PULSE_FORGETTING = 0.95
# Model error of a pulse estimate (relative sigma, never averaged away): the steps come at
# other SOCs, directions and sizes than the datasheet's 0.5C pulse at 50 % SOC from rest. On
# PyBaMM's cells a step at 30 % SOC reads 0-18 % above the 50 % value (LFP most), 0.4C steps up
# to 3 % above 0.5C ones, and the current gain adds 1 %. A scatter between steps larger than
# their noise explains is taken instead when larger.
PULSE_MODEL_REL = 0.05
# Voltage noise of one poll-to-poll difference [V per cell] before polls without a step have
# measured it (1-mV AFE resolution and noise on both readings), and how many such polls that
# guess is worth; the measurement forgets over ~1000 polls.
PRIOR_DV_NOISE_V = 0.002
PRIOR_QUIET_POLLS = 10.0
QUIET_FORGETTING = 0.999


def temperature_factor(chemistry: Chemistry, temperature_c: FloatArray | float) -> FloatArray:
    """R(T)/R(25 °C) from the chemistry's exponential law; 1 where the temperature is unknown."""
    t = finite_or(np.asarray(temperature_c, dtype=np.float64), 25.0)
    return np.exp(chemistry.r_temp_coeff_per_c * (25.0 - t))


# The derived arrays that read the pulse sums alone: a small step leaves them as they were.
_PULSE_VIEWS = frozenset({"pulse", "pulse_sigma"})


class ResistanceEstimator:
    """Recursive least squares of ΔV = R0·ΔI for the string (column 0) and each cell."""

    def __init__(self, chemistry: Chemistry, capacity_ah: float, cells: int) -> None:
        self.chemistry = chemistry
        self.capacity_ah = capacity_ah
        self.nominal_cell_r0_ohm = chemistry.r0_ohm(capacity_ah)
        self.sxx = np.zeros(cells + 1)
        self.sxy = np.zeros(cells + 1)
        self.steps = np.zeros(cells + 1)
        # 1-s pulses: weight, weighted sums of the ratios ΔV/ΔI, of their squares and of the
        # variance the voltage noise alone gives each ratio.
        self.pulse_w = np.zeros(cells + 1)
        self.pulse_r = np.zeros(cells + 1)
        self.pulse_rr = np.zeros(cells + 1)
        self.pulse_nn = np.zeros(cells + 1)
        # Polls without a step: weight and weighted sum of ΔV² (25 °C-normalised, per cell).
        self.quiet_w = np.zeros(cells + 1)
        self.quiet_vv = np.zeros(cells + 1)
        # The derived arrays below, read several times a poll but changed only by a step.
        self._views: dict[str, FloatArray] = {}

    def update(
        self,
        delta_current_a: float,
        dt_s: float,
        delta_voltage_v: FloatArray,
        series_cells: FloatArray,
        temp_factor: FloatArray,
    ) -> None:
        """Use one poll-to-poll step: ΔI [A] and ΔV [V] of the string (index 0) and each cell.

        ``series_cells`` is how many cells each column spans (the string: all of them), so the
        string value is per cell and comparable with the preset; NaN ΔV columns are skipped.
        ``temp_factor`` is each column's R(T)/R(25 °C) (:func:`temperature_factor`), which
        the caller has for its SOC filters already.
        """
        if not (np.isfinite(delta_current_a) and 0 < dt_s <= MAX_STEP_DT_S):
            return
        dv25 = delta_voltage_v / series_cells / temp_factor
        step = abs(delta_current_a)
        if step < MIN_STEP_C * self.capacity_ah:
            seen = np.isfinite(dv25)
            keep = np.where(seen, QUIET_FORGETTING, 1.0)
            self.quiet_w = keep * self.quiet_w + seen
            self.quiet_vv = keep * self.quiet_vv + np.where(seen, dv25, 0.0) ** 2
            return
        pulse = step >= PULSE_MIN_C * self.capacity_ah
        # The pulse views stay through a small step: a regulation duty at 0.3-0.5C steps on
        # half its polls or more, all small (1 pulse step in 2,000 polls).
        self._views = {} if pulse else {k: v for k, v in self._views.items() if k in _PULSE_VIEWS}
        ratio = dv25 / delta_current_a / self.nominal_cell_r0_ohm
        margin = GATE_NOISE_SIGMAS * np.sqrt(self.dv_noise_var) / step / self.nominal_cell_r0_ohm
        ok = (
            np.isfinite(ratio)
            & (ratio > PLAUSIBLE_RATIO[0] - margin)
            & (ratio < PLAUSIBLE_RATIO[1] + margin)
        )
        self.steps = self.steps + ok
        if pulse:
            r = np.where(ok, dv25 / delta_current_a, 0.0)
            keep = np.where(ok, PULSE_FORGETTING, 1.0)
            self.pulse_w = keep * self.pulse_w + ok
            self.pulse_r = keep * self.pulse_r + r
            self.pulse_rr = keep * self.pulse_rr + r**2
            self.pulse_nn = keep * self.pulse_nn + np.where(ok, self.dv_noise_var / step**2, 0.0)
            return
        forget = np.where(ok, FORGETTING, 1.0)
        self.sxx = forget * self.sxx + np.where(ok, delta_current_a**2, 0.0)
        self.sxy = forget * self.sxy + np.where(ok, dv25 * delta_current_a, 0.0)

    @property
    def dv_noise_var(self) -> FloatArray:
        """Variance of one poll-to-poll ΔV without a step [V² per cell, 25 °C]: measured on
        quiet polls (noise, quantisation and the drift of one poll), the prior until then."""
        prior = PRIOR_QUIET_POLLS * PRIOR_DV_NOISE_V**2
        return (self.quiet_vv + prior) / (self.quiet_w + PRIOR_QUIET_POLLS)

    @property
    def small_signal_25c_ohm(self) -> FloatArray:
        """Per-cell small-signal R0 at 25 °C [Ω] (steps below 0.4C): string average (index 0)
        then each cell; NaN before a step."""
        return self._view("small_signal", self._small_signal)

    def _small_signal(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sxx > 0, self.sxy / self.sxx, np.nan)

    @property
    def r0_25c_ohm(self) -> FloatArray:
        """Per-cell R0 at 25 °C [Ω] as reported (``r0_ohm``, ``cell_r0_ohm``): the 1-s pulse
        value where pulse steps were seen, the small-signal one otherwise."""
        return self._view("r0", self._r0)

    def _r0(self) -> FloatArray:
        pulse = self.pulse_1s_ohm
        return np.where(np.isfinite(pulse), pulse, self.small_signal_25c_ohm)

    @property
    def pulse_1s_ohm(self) -> FloatArray:
        """Per-cell 1-s DC pulse resistance at 25 °C [Ω] from steps ≥ 0.4C of the label (index
        0: the string's average cell); NaN before the first such step."""
        return self._view("pulse", self._pulse)

    def _pulse(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pulse_w > 0, self.pulse_r / self.pulse_w, np.nan)

    @property
    def pulse_1s_sigma_ohm(self) -> FloatArray:
        """Sigma of :attr:`pulse_1s_ohm`: the steps' voltage noise over their number, plus the
        model error, which more steps do not average away (:data:`PULSE_MODEL_REL`, or the
        scatter between steps beyond their noise where that is larger)."""
        return self._view("pulse_sigma", self._pulse_sigma)

    def _pulse_sigma(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            w = self.pulse_w
            mean = self.pulse_r / w
            noise = self.pulse_nn / w
            # The steps' sample variance (one step has none), less what their noise explains.
            scatter = np.maximum(self.pulse_rr / w - mean**2, 0.0) * w / np.maximum(w - 1.0, 1.0)
            excess = np.where(w > 1.0, np.maximum(scatter - noise, 0.0), 0.0)
            model = np.maximum(excess, (PULSE_MODEL_REL * mean) ** 2)
            sigma = np.sqrt(noise / np.maximum(w, 1.0) + model)
            return np.where(w > 0, sigma, np.nan)

    @property
    def cell_r0_ratio(self) -> FloatArray:
        """Each cell's R0 over the cells' median (the string's column 0 left out): what the
        anomaly and balance views compare, the same every poll until a step."""
        return self._view("cell_ratio", self._cell_ratio)

    def _cell_ratio(self) -> FloatArray:
        r0 = self.r0_25c_ohm[1:]
        return r0 / finite_median(r0)

    def r0_or_preset_ohm(self) -> FloatArray:
        """R0 at 25 °C [Ω] per column for the models: as reported, the preset before a step."""
        return self._view("r0_or_preset", self._r0_or_preset)

    def _r0_or_preset(self) -> FloatArray:
        r0 = self.r0_25c_ohm
        return np.where(np.isfinite(r0), r0, self.nominal_cell_r0_ohm)

    def _view(self, name: str, compute: Callable[[], FloatArray]) -> FloatArray:
        """A derived array, computed once per change of the pulse and step sums (polls without
        a step change only the noise sums); read-only, since every reader until the next step
        shares it."""
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
            "pulse_nn": self.pulse_nn,
            "quiet_w": self.quiet_w,
            "quiet_vv": self.quiet_vv,
        }

    def load(self, state: dict[str, Any]) -> None:
        # Older blobs lack the pulse and noise sums (added later): those start at 0.
        for name in self.state():
            if name not in state and name.startswith(("pulse", "quiet")):
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
