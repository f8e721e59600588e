"""The per-device diagnostics pipeline the daemon calls once per poll.

Order matters: data quality first (whatever it masks, no estimator sees), then the string SOC
filter (it owns the current-offset estimate every other integral uses), the cells' filters and
resistance, then the slower views (capacity, cycles, balance, thermal, anomalies), which read
the estimates of this same poll.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics import persist
from bess_edge.diagnostics.anomaly import AnomalyDetector
from bess_edge.diagnostics.balance import BalanceTracker
from bess_edge.diagnostics.capacity import CapacityEstimator, fade_projection
from bess_edge.diagnostics.cell_capacity import CellCapacity, CellCapacityResult
from bess_edge.diagnostics.cycles import CycleLife
from bess_edge.diagnostics.diagnosis import Diagnosis
from bess_edge.diagnostics.electrode import ElectrodeWindows
from bess_edge.diagnostics.electrode_tracker import (
    ElectrodeReference,
    ElectrodeTracker,
    FitRunner,
    run_inline,
)
from bess_edge.diagnostics.numeric import finite_max, finite_mean, finite_median
from bess_edge.diagnostics.ocv_learn import LearnedOcv, OcvLearner
from bess_edge.diagnostics.quality import CleanInputs, QualityMonitor, check_soc_agreement
from bess_edge.diagnostics.resistance import (
    ResistanceEstimator,
    resistance_soh_pct,
    temperature_factor,
)
from bess_edge.diagnostics.rest import RestTracker
from bess_edge.diagnostics.safety import RISK_LEVELS, check_limits
from bess_edge.diagnostics.soc import (
    BIAS_LIMIT_C,
    INITIAL_BIAS_SIGMA_C,
    SocFilter,
    sampled_charge_sigma_as,
)
from bess_edge.diagnostics.string_limits import LimitTracker
from bess_edge.diagnostics.thermal import ThermalMonitor, ThermalResult, sensor_of_cell
from bess_edge.diagnostics.usable import soh_forecast, string_capacity
from bess_edge.model import FloatArray, Reading

__all__ = ["Diagnosis", "Diagnostician"]

Forecast = tuple[list[float], list[float], list[float]]  # SOH in 1/5/10 years: mid, low, high
# What _outlook read (history, capacity, its sigma), the fade projection and the forecast.
_Outlook = tuple[tuple[FloatArray, float, float], dict[str, float], Forecast]

log = logging.getLogger(__name__)

# Settled: the RC relaxation has died down so the terminal voltage is the OCV within a few mV;
# 30 min is the shortest rest of the usual OCV-SOC test procedures (USABC manual, §3.3).
REST_SETTLE_S = 1800.0
# A gap longer than this between polls is not integrated (the current during it is unknown);
# the SOC variance grows by GAP_SOC_SIGMA_PCT_PER_H instead (self-discharge and unknown use).
MAX_GAP_S = 600.0
GAP_SOC_SIGMA_PCT_PER_H = 2.0
# Initial SOC uncertainty [%]: read from a voltage that may not be relaxed, or given unverified.
INITIAL_SOC_SIGMA_PCT = 10.0
# The SOC filters count with the estimated capacity once it is known to 2 % (1 sigma).
TRUSTED_CAPACITY_SIGMA = 0.02
# A label capacity is the new cell's, typically within 10 % of an unknown cell's real one.
LABEL_CAPACITY_REL_SIGMA = 0.10
UNVERIFIED_SOC_SIGMA_PCT = 30.0


@dataclass
class _Cells:
    """Everything sized by the number of cells, rebuilt if the string changes shape."""

    count: int
    sensors: int
    soc: SocFilter
    resistance: ResistanceEstimator
    anomaly: AnomalyDetector
    balance: BalanceTracker
    capacity: CellCapacity
    limits: LimitTracker
    thermal: ThermalMonitor
    sensor_index: np.ndarray  # the temperature sensor of each cell


class Diagnostician:
    """Holds one device's estimator state between polls and turns Readings into Diagnoses."""

    def __init__(
        self,
        device_id: str,
        chemistry: Chemistry,
        capacity_ah: float,
        *,
        initial_soc_pct: float | None = None,
        time_scale: float = 1.0,
        series_cells: int | None = None,
        electrode_reference: ElectrodeReference | None = None,
        fit_runner: FitRunner = run_inline,
    ) -> None:
        self.device_id = device_id
        # Where the electrode fit (about a second of CPU) runs: at once by default; the daemon
        # gives a worker thread's, so the fit never stalls the other devices' polls.
        self.fit_runner = fit_runner
        # Cells in series, from config, for a device that reports no cell voltages.
        self.configured_series_cells = series_cells
        # Seconds of battery life per second of Reading timestamps: 1 for every real device;
        # a simulator run faster than the wall clock (the demo's 60) moves 60 s of charge
        # between Readings stamped 1 s apart, and the estimators must count battery time.
        self.time_scale = time_scale
        self._clock_origin_ms: int | None = None
        self.chemistry = chemistry
        self.nominal_capacity_ah = float(capacity_ah)
        self.initial_soc_pct = initial_soc_pct
        self.quality = QualityMonitor(chemistry, capacity_ah)
        self.string_soc = SocFilter(chemistry, 1, estimate_bias=True)
        self.capacity = CapacityEstimator(chemistry, capacity_ah)
        self.cycles = CycleLife(chemistry, capacity_ah)
        self.cells = self._build_cells(0, 0)
        self.series_cells = 0  # learned from the first reading
        self.rest = RestTracker(capacity_ah)
        self.electrode = ElectrodeTracker(chemistry, electrode_reference)
        # The cell's own OCV is learned unless a measured table (file, config) was given.
        self.ocv_learner = OcvLearner(chemistry) if chemistry.ocv_source == "preset" else None
        # Estimator warnings by topic (offset on its bound, offset of the wrong sign, ...).
        self.warnings: dict[str, str] = {}
        self._last_ts_ms: int | None = None
        self._last: CleanInputs | None = None
        self._last_current_a = 0.0
        self._forget_views()
        self._outlook_cache: _Outlook | None = None
        self._counting_cache: tuple[CellCapacityResult, float, FloatArray] | None = None

    def _build_cells(self, count: int, sensors: int, chem: Chemistry | None = None) -> _Cells:
        chem, cap = chem or self.chemistry, self.nominal_capacity_ah
        return _Cells(
            count=count,
            sensors=sensors,
            soc=SocFilter(chem, count, estimate_bias=False),
            resistance=ResistanceEstimator(chem, cap, count),
            anomaly=AnomalyDetector(chem, cap, count),
            balance=BalanceTracker(count),
            capacity=CellCapacity(count),
            limits=LimitTracker(count, cap),
            thermal=ThermalMonitor(chem, cap, sensors),
            sensor_index=sensor_of_cell(count, sensors),
        )

    @property
    def capacity_ah(self) -> float:
        """The capacity the filters count with [Ah]: estimated once known well, rated before."""
        q, sigma = self.capacity.capacity_ah, self.capacity.capacity_sigma_ah
        if math.isfinite(q) and sigma < TRUSTED_CAPACITY_SIGMA * self.nominal_capacity_ah:
            return q
        return self.nominal_capacity_ah

    @property
    def capacity_rel_sigma(self) -> float:
        """Relative sigma of :attr:`capacity_ah`: the estimate's, or a label's before it is
        trusted (labels of the validation cells were 0-13 % off the real capacity: the NCA
        label, the aged cells' unknown SOH)."""
        q, sigma = self.capacity.capacity_ah, self.capacity.capacity_sigma_ah
        if math.isfinite(q) and sigma < TRUSTED_CAPACITY_SIGMA * self.nominal_capacity_ah:
            return sigma / q
        return LABEL_CAPACITY_REL_SIGMA

    def update(self, reading: Reading, cell_views: bool = True) -> Diagnosis:
        """Diagnose one poll. Never raises: bad data is flagged, a failure is logged and
        reported in ``diagnostics_error`` so one broken estimator cannot stop the daemon.

        With ``cell_views`` False the per-cell views (the cells' SOC filter, anomaly, balance,
        cell capacity, limits, the string's usable capacity: estimates with time constants of
        minutes) and the thermal view (two-minute temperature rates, runaway precursors, a hot
        cell held 30 s) are not refreshed: the Diagnosis carries the last ones, and the next
        refresh is given the time and the charge in between. The string's SOC filter,
        resistance, rests, cycles and the safety limits (voltage, temperature, current) run at
        every poll. The daemon refreshes the views once per ``diagnosis_interval_s``, so a
        10 Hz rack's views see what a 1 Hz rack's do."""
        try:
            return self._update(reading, cell_views)
        except Exception as exc:
            log.exception("diagnostics failed for %s", self.device_id)
            ts_ms = reading.ts_ms if isinstance(reading.ts_ms, int) else 0
            return Diagnosis(self.device_id, ts_ms, diagnostics_error=repr(exc))

    def _forget_views(self) -> None:
        """Drop the views (a new or rebuilt string, a restored state): the next poll refreshes
        them from scratch."""
        # The per-cell and thermal views as last refreshed (None: refresh at the next poll),
        # the battery time since [s] and the corrected charge since [A·s] (and what sampling
        # left unknown of it, a variance [A²s²]) that the next refresh is given; polls between
        # refreshes carry the views (update's cell_views).
        self._views: dict[str, Any] | None = None
        self._thermal: ThermalResult | None = None
        self._views_dt_s = 0.0
        self._cells_charge_as = 0.0
        self._cells_charge_var_as2 = 0.0

    def _update(self, reading: Reading, cell_views: bool) -> Diagnosis:
        inputs = self.quality.clean(reading)
        battery_ms = self._battery_ms(reading.ts_ms)
        dt_s = self._advance_clock(battery_ms)
        cells = inputs.cell_voltage_v
        if cells.size != self.cells.count or inputs.temperature_c.size != self.cells.sensors:
            if self.cells.count or self.cells.sensors:
                log.warning(
                    "%s: string changed from %d cells/%d sensors to %d/%d; cell state reset",
                    self.device_id, self.cells.count, self.cells.sensors,
                    cells.size, inputs.temperature_c.size,
                )  # fmt: skip
            self.cells = self._build_cells(cells.size, inputs.temperature_c.size)
            self._last = None
            self._forget_views()
        current = inputs.current_a if math.isfinite(inputs.current_a) else self._last_current_a
        charge_sigma_as = sampled_charge_sigma_as(current - self._last_current_a, dt_s)
        self._last_current_a = current

        string_v = self._string_cell_voltage(inputs, reading)
        cell_temps = (
            inputs.temperature_c[self.cells.sensor_index]
            if inputs.temperature_c.size
            else np.full(cells.size, np.nan)
        )
        mean_temp = finite_mean(inputs.temperature_c)
        mean_temp = mean_temp if math.isfinite(mean_temp) else 25.0
        r0_25 = self.cells.resistance.r0_or_preset_ohm()
        # R(T)/R(25 °C) at the string's mean temperature (column 0) and at each cell's: the SOC
        # filters, the resistance fit and the current limits all read it, computed once.
        tf = temperature_factor(self.chemistry, np.concatenate(([mean_temp], cell_temps)))
        # Whether the cells' views (their SOC filter, anomaly, balance, thermal, ...) run now.
        refresh = cell_views or self._views is None or not self.string_soc.initialised
        self._views_dt_s += dt_s
        self._step_soc(dt_s, current, charge_sigma_as, string_v, inputs, r0_25, tf, refresh)
        bias = self.string_soc.bias_a
        corrected = current - bias
        self._step_resistance(dt_s, inputs, tf)

        diagnosis = Diagnosis(self.device_id, reading.ts_ms, ocv_source=self.chemistry.ocv_source)
        if self.chemistry.ocv_source == "learned" and self.learned_ocv is not None:
            diagnosis.ocv_fit_residual_v = self.learned_ocv.residual_v
        self._track_rest(dt_s, current, battery_ms)
        self._capacity_and_cycles(
            dt_s, current, charge_sigma_as, corrected, string_v, battery_ms, diagnosis
        )
        # Each cell against its string's median [V]: the anomaly and the thermal views' input.
        deviation = cells - finite_median(cells)
        if refresh:
            views_dt_s, self._views_dt_s = self._views_dt_s, 0.0
            self._views = self._cell_views(views_dt_s, inputs, deviation, corrected, tf[1:])
            self._thermal = self._thermal_view(views_dt_s, inputs, deviation, current)
        assert self._views is not None  # refreshed whenever there are none
        for name, value in self._views.items():
            setattr(diagnosis, name, value)
        diagnosis.cell_deviation_v = deviation
        self._safety(inputs, current, diagnosis)
        soc, sigma = float(self.string_soc.soc_pct[0]), float(self.string_soc.soc_sigma_pct[0])
        if self.string_soc.initialised:
            diagnosis.soc_pct, diagnosis.soc_uncertainty_pct = soc, sigma
            diagnosis.current_offset_a = bias
            diagnosis.current_offset_uncertainty_a = self.string_soc.bias_sigma_a
            diagnosis.soc_disputed = check_soc_agreement(reading, soc, sigma)
        diagnosis.rest_s = self.rest.rest_s
        self.electrode.adopt_done()
        self.electrode.fill(diagnosis)
        diagnosis.estimator_warnings = list(self.warnings.values())
        diagnosis.quality_flags = reading.quality.names()
        self._last = inputs
        return diagnosis

    def refit_electrodes(
        self,
        soc_pct: FloatArray,
        ocv_v: FloatArray,
        sigma_v: FloatArray | None = None,
        capacity: tuple[float, float] | None = None,
    ) -> ElectrodeWindows | None:
        """Fit the electrode windows to a new OCV curve of this cell (a learned table's refit)
        whose capacity and sigma [Ah] are ``capacity`` (default: as now estimated, NaN before
        the rests pin it); the Diagnoses from the first poll after the fit is done carry the
        modes. About a second of CPU, on :attr:`fit_runner`: call it when the curve changes,
        never per poll. The windows if the fit is already done (the inline runner's)."""
        q, sigma = capacity or (self.capacity.capacity_ah, self.capacity.capacity_sigma_ah)
        return self.electrode.refit(soc_pct, ocv_v, sigma_v, q, sigma, runner=self.fit_runner)

    def _battery_ms(self, ts_ms: int) -> int:
        """The battery's own clock for a timestamp: the timestamp itself at time_scale 1, else
        stretched from the first timestamp this process saw (trends and EOL dates of a sped-up
        simulator are then in simulated time)."""
        if self.time_scale == 1.0:
            return ts_ms
        if self._clock_origin_ms is None:
            self._clock_origin_ms = ts_ms
        return self._clock_origin_ms + round((ts_ms - self._clock_origin_ms) * self.time_scale)

    def _advance_clock(self, ts_ms: int) -> float:
        last, self._last_ts_ms = self._last_ts_ms, ts_ms
        if last is None:
            return 0.0
        dt_s = (ts_ms - last) / 1000.0
        if dt_s > MAX_GAP_S:
            self.capacity.break_chain()
            if self.string_soc.initialised:
                grow = (GAP_SOC_SIGMA_PCT_PER_H * dt_s / 3600.0) ** 2
                self.string_soc.p[:, 0, 0] += grow
                self.cells.soc.p[:, 0, 0] += grow
        return dt_s if 0.0 < dt_s <= MAX_GAP_S else 0.0

    def _string_cell_voltage(self, inputs: CleanInputs, reading: Reading) -> float:
        """The string's average cell voltage [V]: mean of the cells, or pack / series count.

        Without cell voltages the series count comes from config or from the device (SunSpec
        802's V / CellVAvg), never from the chemistry's nominal voltage: 53.18 V of a 16S LFP
        pack near empty looks like 17 cells, and the SOC read from 3.13 V per cell was 5 %
        against the BMS's 63.75 %. With neither, the SOC is not estimated from voltage.
        """
        cells = inputs.cell_voltage_v
        mean = finite_mean(cells)
        if math.isfinite(mean):
            self.series_cells = cells.size
            return mean
        device_count = reading.extra.get("series_cells", math.nan)
        if self.configured_series_cells:
            self.series_cells = self.configured_series_cells
        elif math.isfinite(device_count) and device_count >= 1:
            self.series_cells = int(device_count)
        pack = inputs.pack_voltage_v
        if not math.isfinite(pack) or self.series_cells == 0:
            return math.nan
        return pack / self.series_cells

    def _step_soc(
        self,
        dt_s: float,
        current: float,
        charge_sigma_as: float,
        string_v: float,
        inputs: CleanInputs,
        r0_25: FloatArray,
        tf: FloatArray,
        refresh: bool,
    ) -> None:
        """The string's SOC filter's step, and the cells' when the views ``refresh``, with
        the charge since their last; ``tf`` is R(T)/R(25 °C) of the string (column 0) and
        cells, ``charge_sigma_as`` what sampling leaves unknown of this poll's charge."""
        chem = self.chemistry
        if not self.string_soc.initialised:
            if not math.isfinite(string_v):
                return
            self._initialise_soc(string_v, current, inputs, r0_25)
        r0_now, r1_now = r0_25 * tf, chem.r1_ohm_ah / self.nominal_capacity_ah * tf
        self.string_soc.step(
            current, dt_s, np.array([string_v]), r0_now[:1], r1_now[:1],
            self.capacity_ah, self.capacity_rel_sigma, charge_sigma_as=charge_sigma_as,
        )  # fmt: skip
        if self.cells.count:
            corrected = current - self.string_soc.bias_a
            self._cells_charge_as += corrected * dt_s
            self._cells_charge_var_as2 += charge_sigma_as**2
            if not refresh:
                return
            # The charge since the last refresh as its mean current; the voltages' ohmic drop
            # is this poll's current. A refresh every poll counts exactly as it always did.
            since_s = self._views_dt_s
            mean = corrected if since_s == dt_s else self._cells_charge_as / since_s
            charge_sigma_as = math.sqrt(self._cells_charge_var_as2)
            self._cells_charge_as, self._cells_charge_var_as2 = 0.0, 0.0
            self.cells.soc.step(
                mean, since_s, inputs.cell_voltage_v, r0_now[1:], r1_now[1:],
                self._cell_counting_capacity_ah(), self.capacity_rel_sigma,
                ohmic_current_a=corrected, charge_sigma_as=charge_sigma_as,
            )  # fmt: skip

    def _cell_counting_capacity_ah(self) -> FloatArray:
        """What each cell's filter counts with [Ah]: the string's capacity times the cell's
        measured ratio to it, once that ratio is known to 2 %. Computed again only when the
        cells' ratios (a new result object) or the string's capacity changed: between rests,
        never. Read-only, as the filters only read it."""
        cap = self.cells.capacity.result(self.capacity.capacity_ah, self.capacity.capacity_sigma_ah)
        q = self.capacity_ah
        cached = self._counting_cache
        if cached is None or cached[0] is not cap or cached[1] != q:
            with np.errstate(invalid="ignore"):
                trusted = cap.ratio_sigma < TRUSTED_CAPACITY_SIGMA * cap.ratio  # False where NaN
            counting = q * np.where(trusted, cap.ratio, 1.0)
            counting.flags.writeable = False
            cached = self._counting_cache = (cap, q, counting)
        return cached[2]

    def _initialise_soc(
        self, string_v: float, current: float, inputs: CleanInputs, r0_25: FloatArray
    ) -> None:
        chem = self.chemistry
        if self.initial_soc_pct is not None:
            soc = np.array([float(self.initial_soc_pct)])
            sigma = np.array([UNVERIFIED_SOC_SIGMA_PCT])
            cell_soc = np.full(self.cells.count, float(self.initial_soc_pct))
        else:
            soc = chem.soc_from_ocv(np.array([string_v - r0_25[0] * current]))
            cell_ocv = (
                np.where(np.isfinite(inputs.cell_voltage_v), inputs.cell_voltage_v, string_v)
                - r0_25[1:] * current
            )
            cell_soc = chem.soc_from_ocv(cell_ocv)
            flat = self.string_soc.in_flat_region(soc)
            sigma = np.where(flat, UNVERIFIED_SOC_SIGMA_PCT, INITIAL_SOC_SIGMA_PCT)
        self.string_soc.reset(soc, sigma, self.nominal_capacity_ah)
        self.cells.soc.reset(
            cell_soc, np.full(self.cells.count, sigma[0]), self.nominal_capacity_ah
        )

    def _step_resistance(self, dt_s: float, inputs: CleanInputs, tf: FloatArray) -> None:
        last = self._last
        if last is None or not math.isfinite(inputs.current_a) or self.series_cells == 0:
            return
        d_pack = inputs.pack_voltage_v - last.pack_voltage_v
        d_cells = inputs.cell_voltage_v - last.cell_voltage_v
        if not math.isfinite(d_pack) and self.cells.count:
            d_pack = float(np.sum(d_cells)) if np.isfinite(d_cells).all() else math.nan
        self.cells.resistance.update(
            inputs.current_a - last.current_a,
            dt_s,
            np.concatenate([[d_pack], d_cells]),
            np.concatenate([[self.series_cells], np.ones(self.cells.count)]),
            tf,
        )

    def _track_rest(self, dt_s: float, current: float, ts_ms: int) -> None:
        """Rests against the offset as known (rest.py); at each rest's end the offset the rests
        measured is checked against the filter's, then handed to it and to the capacity fit."""
        soc = self.string_soc
        was_resting = self.rest.rest_s > 0.0
        _, ended = self.rest.update(current, dt_s, soc.bias_a, soc.bias_sigma_a)
        if self.rest.rest_s > 0.0 and not was_resting:
            self.cells.anomaly.start_rest()
        if ended:
            self.cells.capacity.end_rest(self.chemistry)
        self._check_offset_bound()
        if not ended:
            return
        offset, offset_sigma = self.rest.offset_a, self.rest.offset_sigma_a
        if soc.initialised and math.isfinite(offset):
            self._check_offset_sign(offset, offset_sigma)
            soc.assume_bias(offset, offset_sigma)
        elif soc.initialised:
            offset, offset_sigma = soc.bias_a, soc.bias_sigma_a
        else:
            offset, offset_sigma = 0.0, INITIAL_BIAS_SIGMA_C * self.nominal_capacity_ah
        settled = self.capacity.settled_rest
        if self.capacity.end_rest(
            ts_ms / 1000.0, self.cycles.equivalent_full_cycles, offset, offset_sigma
        ):
            log.info("%s: capacity refitted to %.2f Ah", self.device_id, self.capacity_ah)
            if self.capacity.offset_learned and soc.initialised:
                soc.assume_bias(self.capacity.offset_a, self.capacity.offset_sigma_a)
        self._learn_ocv(settled, offset, offset_sigma, ts_ms / 1000.0)

    def _learn_ocv(
        self,
        settled: tuple[float, float, float, float, float] | None,
        offset_a: float,
        offset_sigma_a: float,
        ts_s: float,
    ) -> None:
        """Refit the learned OCV with this rest; once it stands, every estimator counts with
        it and the capacity is the joint fit's."""
        learner = self.ocv_learner
        if learner is None:
            return
        label = (self.nominal_capacity_ah, LABEL_CAPACITY_REL_SIGMA * self.nominal_capacity_ah)
        if learner.end_rest(settled, label, (offset_a, offset_sigma_a)):
            chemistry = learner.chemistry()
            if chemistry is not None:
                self._use_chemistry(chemistry)
                self._refit_electrodes_to_learned(ts_s)
        if learner.fit is not None and self.chemistry.ocv_source == "learned":
            self.capacity.adopt(learner.fit, ts_s, self.cycles.equivalent_full_cycles)

    def _refit_electrodes_to_learned(self, ts_s: float) -> None:
        """The electrode model follows the learned curve with the joint fit's capacity (on
        the same SOC axis), at most once per ELECTRODE_REFIT_S: a fit costs about a second
        of CPU and the learner refits at every rest, while the modes move over months."""
        fit = self.learned_ocv
        if fit is None or not self.electrode.due(ts_s):
            return
        self.electrode.refit(
            fit.soc_pct, fit.ocv_v, fit.sigma_v, fit.capacity_ah, fit.capacity_sigma_ah, ts_s,
            self.fit_runner,
        )  # fmt: skip

    def _use_chemistry(self, chemistry: Chemistry) -> None:
        """Count with another OCV table from now on; the estimators keep their state."""
        self.chemistry = chemistry
        self.string_soc.use_chemistry(chemistry)
        self.cells.soc.use_chemistry(chemistry)
        self.capacity.chemistry = chemistry

    @property
    def learned_ocv(self) -> LearnedOcv | None:
        """The cell's learned OCV curve with its posterior sigma per knot (None before one)."""
        return self.ocv_learner.fit if self.ocv_learner is not None else None

    def _check_offset_bound(self) -> None:
        """An offset on its bound is reported and the SOC it integrates is trusted less."""
        soc = self.string_soc
        if not (soc.initialised and soc.at_bias_limit(self.nominal_capacity_ah)):
            self.warnings.pop("offset_limit", None)
            return
        if "offset_limit" not in self.warnings:
            log.warning("%s: current offset estimate at its bound", self.device_id)
        self.warnings["offset_limit"] = (
            f"current offset estimate {soc.bias_a:+.3g} A is at its bound: sensor out of spec "
            "or a model error taken for offset; SOC uncertainty widened"
        )
        # What the bound cuts off is integrated unseen: the SOC variance grows with it.
        soc.p[:, 2, 2] = max(float(soc.p[0, 2, 2]), (BIAS_LIMIT_C * self.nominal_capacity_ah) ** 2)

    def _check_offset_sign(self, measured_a: float, measured_sigma_a: float) -> None:
        """The filter's offset against the one a rest measured: a disagreement beyond 3 sigma
        (worst: the opposite sign) is reported; the measured one replaces it either way."""
        soc = self.string_soc
        estimate, sigma = soc.bias_a, soc.bias_sigma_a
        gap = abs(estimate - measured_a)
        # Beyond 3 sigma, and large enough to matter (0.5 % of 1C is ~12 % SOC a day).
        if gap <= max(3.0 * math.hypot(sigma, measured_sigma_a), 0.005 * self.capacity_ah):
            self.warnings.pop("offset_sign", None)
            return
        wrong_sign = estimate * measured_a < 0 and abs(measured_a) > 2.0 * measured_sigma_a
        what = "had the wrong sign" if wrong_sign else "disagreed with the rests"
        self.warnings["offset_sign"] = (
            f"current offset estimate {estimate:+.3g} A {what}: rests measured "
            f"{measured_a:+.3g} ± {measured_sigma_a:.2g} A; SOC uncertainty widened"
        )
        log.warning("%s: %s", self.device_id, self.warnings["offset_sign"])
        # The charge counted with the wrong offset since the last correction is unknown to
        # about the gap times the time since: widen SOC by the gap over one rest cycle (a day).
        grow = (100.0 * gap * 24.0 / self.capacity_ah) ** 2
        soc.p[:, 0, 0] += grow
        self.cells.soc.p[:, 0, 0] += grow

    @property
    def settled(self) -> bool:
        """Rested long enough for the terminal voltage to be the OCV, and resting this poll."""
        return self.rest.rest_s >= REST_SETTLE_S and self.rest.busy_polls == 0

    def _capacity_and_cycles(
        self,
        dt_s: float,
        current: float,
        charge_sigma_as: float,
        corrected: float,
        string_v: float,
        ts_ms: int,
        d: Diagnosis,
    ) -> None:
        # The capacity fit learns the offset from its anchors: it counts the measured current.
        self.capacity.integrate(current, dt_s, charge_sigma_as)
        if self.ocv_learner is not None:
            self.ocv_learner.observe(
                corrected, string_v, self.capacity.ah_counter, ts_ms / 1000.0,
                self.capacity.chain, self.nominal_capacity_ah,
            )  # fmt: skip
        soc = float(self.string_soc.soc_pct[0]) if self.string_soc.initialised else math.nan
        if self.settled:
            self.capacity.observe_rest(string_v, dt_s, ts_ms / 1000.0)
        self.cycles.update(soc, corrected, dt_s)
        cap = self.capacity
        d.capacity_ah, d.capacity_uncertainty_ah = cap.capacity_ah, cap.capacity_sigma_ah
        d.soh_pct = 100.0 * cap.capacity_ah / self.nominal_capacity_ah
        fade, forecast = self._outlook()
        d.capacity_fade_pct_per_year = fade["fade_pct_per_year"]
        d.eol_projected_ts_ms, d.eol_projected_efc = fade["eol_ts_ms"], fade["eol_efc"]
        d.soh_forecast_pct, d.soh_forecast_low_pct, d.soh_forecast_high_pct = (
            list(values) for values in forecast
        )
        life = self.cycles.summary()
        d.equivalent_full_cycles = self.cycles.equivalent_full_cycles
        d.life_used_pct, d.remaining_cycles = life["life_used_pct"], life["remaining_cycles"]
        d.dod_histogram = life["dod_histogram"]
        res = self.cells.resistance
        r0 = res.r0_25c_ohm
        n = self.series_cells if self.series_cells else math.nan
        d.r0_ohm = float(r0[0]) * n
        d.r0_small_signal_ohm = float(res.small_signal_25c_ohm[0]) * n
        d.r0_pulse_1s_ohm = float(res.pulse_1s_ohm[0]) * n
        d.r0_pulse_1s_uncertainty_ohm = float(res.pulse_1s_sigma_ohm[0]) * n
        d.soh_resistance_pct = resistance_soh_pct(
            float(r0[0]), self.chemistry.r0_ohm(self.nominal_capacity_ah)
        )

    def _outlook(self) -> tuple[dict[str, float], Forecast]:
        """Fade projection and SOH forecast, recomputed only when what they read changed: the
        capacity estimate and its history, which a refit or a restore replace (the history
        array is replaced, never edited in place). With a year of history each is a
        least-squares fit, not to be redone every poll for the same answer."""
        cap = self.capacity
        key = (cap.history, cap.capacity_ah, cap.capacity_sigma_ah)
        cached = self._outlook_cache
        if cached is None or not _same_inputs(cached[0], key):
            fade = fade_projection(
                cap.history, self.nominal_capacity_ah, self.chemistry.end_of_life_soh_pct
            )
            cached = self._outlook_cache = (key, fade, self._forecast(fade["fade_pct_per_year"]))
        return cached[1], cached[2]

    def _forecast(self, fade_pct_per_year: float) -> Forecast:
        """SOH in 1/5/10 years: the measured fade (its sigma from the latest capacity's over
        the span of the history) weighed against the prior."""
        history = self.capacity.history
        span_years = float(np.ptp(history[:, 0])) / (365.25 * 86_400.0) if history.size else 0.0
        soh = 100.0 * self.capacity.capacity_ah / self.nominal_capacity_ah
        soh_sigma = 100.0 * self.capacity.capacity_sigma_ah / self.nominal_capacity_ah
        fade_sigma = math.sqrt(2.0) * soh_sigma / span_years if span_years > 0 else math.nan
        return soh_forecast(soh, soh_sigma, fade_pct_per_year, fade_sigma)

    def _cell_views(
        self,
        dt_s: float,
        inputs: CleanInputs,
        deviation: FloatArray,
        corrected: float,
        cell_tf: FloatArray,
    ) -> dict[str, Any]:
        """Per-cell views, as Diagnosis fields; ``dt_s`` is the battery time since the last
        refresh, ``cell_tf`` each cell's R(T)/R(25 °C)."""
        c = self.cells
        if c.count == 0:
            return {}
        v = inputs.cell_voltage_v
        r0, r0_ratio = c.resistance.r0_25c_ohm[1:], c.resistance.cell_r0_ratio
        soc = float(self.string_soc.soc_pct[0]) if self.string_soc.initialised else 50.0
        slope = float(self.string_soc.ocv_slope_v_per_pct(np.array([soc]))[0])
        anomaly = c.anomaly.update(
            dt_s, deviation, corrected, self.settled, slope, r0_ratio,
            c.resistance.steps[1:],
        )  # fmt: skip
        cell_soc = c.soc.soc_pct if c.soc.initialised else np.full(c.count, np.nan)
        if self.settled:
            c.capacity.observe_rest(v, dt_s)
        cap = c.capacity.result(self.capacity.capacity_ah, self.capacity.capacity_sigma_ah)
        c.limits.update(self.chemistry, v, corrected, r0 * cell_tf)
        low_capacity = cap.weak | c.limits.limiting()
        balance = c.balance.update(dt_s, v, anomaly.zscore, cell_soc, r0_ratio, low_capacity)
        views: dict[str, Any] = {
            "cell_capacity_ratio": cap.ratio,
            "cell_capacity_ratio_uncertainty": cap.ratio_sigma,
            "cell_capacity_ah": cap.capacity_ah,
            "cell_capacity_uncertainty_ah": cap.capacity_sigma_ah,
            "cell_spread_v": balance.spread_v,
            "cell_soc_spread_pct": balance.soc_spread_pct,
            "imbalance_trend_pct_per_day": balance.trend_pct_per_day,
            "weak_cells": balance.weak_cells,
            "balancing_recommendation": balance.recommendation,
            "anomalous_cells": anomaly.cells,
            "anomaly_reasons": anomaly.reasons,
            "cell_soc_pct": cell_soc.copy(),
            "cell_zscore": anomaly.zscore,
            "cell_r0_ohm": r0,
            "cell_self_discharge_a": anomaly.leak_a,
            "cell_r0_mean_ohm": finite_mean(r0),
        }
        if c.soc.initialised:
            # The 1-s pulse value's sigma where it was measured; a small-signal R0 (or none)
            # stands for the loss at 0.5C only roughly: all of it counts as uncertain.
            pulse = float(c.resistance.pulse_1s_ohm[0])
            r0_rel_sigma = float(c.resistance.pulse_1s_sigma_ohm[0]) / pulse if pulse > 0 else 1.0
            string = string_capacity(
                self.chemistry,
                self.capacity.capacity_ah,
                self.capacity.capacity_sigma_ah,
                self.nominal_capacity_ah,
                c.soc.soc_pct,
                c.soc.soc_sigma_pct,
                float(self.string_soc.soc_sigma_pct[0]),
                cap.ratio,
                cap.ratio_sigma,
                self.series_cells,
                float(c.resistance.r0_25c_ohm[0]),
                r0_rel_sigma,
            )
            views.update(vars(string))
        return views

    def _thermal_view(
        self, dt_s: float, inputs: CleanInputs, deviation: FloatArray, current: float
    ) -> ThermalResult | None:
        """The sensors' temperature rates and runaway precursors (two-minute trends, a 30-s
        hold for a hot cell), ``dt_s`` after the last; None without sensors."""
        c = self.cells
        if not c.sensors:
            return None
        # One sensor per cell (sensor_of_cell is then the identity): each block is its cell.
        same = c.sensors == c.count
        block_dev = deviation if same else _block_mean(deviation, c.sensor_index, c.sensors)
        return c.thermal.update(dt_s, inputs.temperature_c, block_dev, current)

    def _safety(self, inputs: CleanInputs, current: float, d: Diagnosis) -> None:
        """The limits at this poll, with the thermal view as last refreshed."""
        temps = inputs.temperature_c
        findings = check_limits(
            self.chemistry, self.nominal_capacity_ah, inputs.cell_voltage_v, temps, current
        )
        thermal = self._thermal
        if thermal is not None:
            findings = findings + thermal.findings
            d.thermal_runaway_score = float(thermal.precursor_score.max())
            d.temperature_rate_max_k_per_min = finite_max(thermal.rate_k_per_min)
        finite_temps = temps[np.isfinite(temps)]
        if finite_temps.size:
            d.temperature_max_c = float(finite_temps.max())
            d.temperature_min_c = float(finite_temps.min())
            d.temperature_spread_c = d.temperature_max_c - d.temperature_min_c
        level = max((lvl for lvl, _ in findings), default=0)
        d.thermal_risk_level, d.thermal_risk = level, RISK_LEVELS[level]
        d.thermal_risk_reasons = [why for lvl, why in sorted(findings, reverse=True) if lvl]

    def export_state(self) -> bytes:
        """Everything learned so far (SOC filters, offset, capacity, cycles, baselines)."""
        c = self.cells
        header = {
            "device_id": self.device_id,
            "chemistry": self.chemistry.name,
            "capacity_ah": self.nominal_capacity_ah,
            "cells": c.count,
            "sensors": c.sensors,
        }
        parts: dict[str, dict[str, Any]] = {
            "engine": {
                "scalars": np.array([self.series_cells, self.rest.rest_s]),
                "initialised": np.array([self.string_soc.initialised, c.soc.initialised]),
            },
            "string_soc": self.string_soc.state(),
            "rest": self.rest.state(),
            "capacity": self.capacity.state(),
            "cycles": self.cycles.state(),
            "cell_soc": c.soc.state(),
            "resistance": c.resistance.state(),
            "anomaly": c.anomaly.state(),
            "balance": c.balance.state(),
            "cell_capacity": c.capacity.state(),
            "limits": c.limits.state(),
            "thermal": c.thermal.state(),
            "electrode": self.electrode.state(),
        }
        if self.ocv_learner is not None:
            parts["ocv_learn"] = self.ocv_learner.state()
        return persist.pack(header, parts)

    def restore_state(self, data: bytes) -> None:
        """Resume from :meth:`export_state`; a blob that does not fit is ignored with a warning."""
        try:
            header, parts = persist.unpack(data)
            if header.get("chemistry") != self.chemistry.name:
                raise ValueError(f"state is for chemistry {header.get('chemistry')!r}")
            learner, chem = self._restored_learner(parts)
            cells = self._build_cells(int(header["cells"]), int(header["sensors"]), chem)
            string_soc = SocFilter(chem, 1, estimate_bias=True)
            capacity = CapacityEstimator(chem, self.nominal_capacity_ah)
            cycles = CycleLife(self.chemistry, self.nominal_capacity_ah)
            string_soc.load(parts["string_soc"])
            capacity.load(parts["capacity"])
            cycles.load(parts["cycles"])
            cells.soc.load(parts["cell_soc"])
            cells.resistance.load(parts["resistance"])
            cells.anomaly.load(parts["anomaly"])
            cells.balance.load(parts["balance"])
            cells.thermal.load(parts["thermal"])
            if "cell_capacity" in parts:  # blobs from before per-cell capacity have none
                cells.capacity.load(parts["cell_capacity"])
            if "limits" in parts:
                cells.limits.load(parts["limits"])
            electrode = ElectrodeTracker(self.chemistry, self.electrode.reference)
            if "electrode" in parts:  # blobs from before the electrode model have none
                electrode.load(parts["electrode"])
            series, rest_s = (float(v) for v in parts["engine"]["scalars"])
            string_init, cells_init = (bool(v) for v in parts["engine"]["initialised"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("%s: ignoring saved diagnostics state: %s", self.device_id, exc)
            return
        string_soc.initialised, cells.soc.initialised = string_init, cells_init
        self.chemistry, self.ocv_learner = chem, learner
        self.string_soc, self.capacity, self.cycles, self.cells = (
            string_soc,
            capacity,
            cycles,
            cells,
        )
        self.series_cells = int(series)
        self.electrode = electrode
        self.rest = RestTracker(self.nominal_capacity_ah)
        if "rest" in parts:  # blobs from before rests measured the offset have none
            self.rest.load(parts["rest"])
        self.rest.rest_s = rest_s
        self._last = None
        self._forget_views()
        self._last_ts_ms = None
        # The charge between the saved state and now was not counted.
        self.capacity.break_chain()

    def _restored_learner(self, parts: dict[str, dict[str, Any]]) -> tuple[Any, Chemistry]:
        """The OCV learner of a saved state and the chemistry to count with: its learned curve,
        or the one this Diagnostician was made with (blobs from before learning have none; a
        measured table from config wins over a learned one)."""
        if self.ocv_learner is None:
            return None, self.chemistry
        learner = OcvLearner(self.ocv_learner.preset)
        if "ocv_learn" in parts:
            learner.load(parts["ocv_learn"])
        return learner, learner.chemistry() or self.ocv_learner.preset


def _same_inputs(a: tuple[FloatArray, float, float], b: tuple[FloatArray, float, float]) -> bool:
    """Same array object and the same floats (NaN equal to NaN)."""
    same = zip(a[1:], b[1:], strict=True)
    return a[0] is b[0] and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in same)


def _block_mean(values: FloatArray, block: np.ndarray, blocks: int) -> FloatArray:
    """Mean of ``values`` per block index, ignoring NaN (NaN for an all-NaN block)."""
    ok = np.isfinite(values)
    total = np.bincount(block[ok], weights=values[ok], minlength=blocks)
    count = np.bincount(block[ok], minlength=blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)
