"""State of charge: an extended Kalman filter on a 1-RC equivalent circuit, vectorised.

One filter instance runs many channels at once (the string's average cell, or every cell), each
with the state ``[SOC %, V_RC V]`` and, for the string, the current-sensor offset ``b`` [A]:

    SOC' = SOC + 100 η dt (I - b) / (3600 Q)          coulomb counting, offset-corrected
    V_RC' = a V_RC + R1 (1 - a)(I - b),  a = e^(-dt/τ)  the RC pair (Plett, J. Power Sources
                                                         134 (2004) 262, "EKF for BMS", part 2)
    b' = b                                             a slow random walk
    V = OCV(SOC) + V_RC + R0 (I - b)                   the measurement model

The measurement is applied as the SOC the OCV table gives for ``V - V_RC - R0 (I - b)``, with a
sigma of the model error over the local OCV slope: steep regions correct hard, flat ones barely.
Where the chemistry marks a plateau (LFP 20-90 %) the voltage only says "on the plateau": the
filter coulomb-counts there and its variance grows honestly until a knee is reached.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.model import BoolArray, FloatArray

# Measurement model error [V]: OCV table and 1-RC model mismatch (a few mV at rest for a fitted
# table, Plett 2004 part 3) plus a share of the ohmic drop that the RC pair does not capture.
OCV_MODEL_ERROR_V = 0.004
# The table itself is a *bias*, not noise: a published curve read for a cell nobody measured is
# off by tens of mV (the NMC preset against PyBaMM's LG M50, Mohtat NMC532 and Kim NCA cells:
# 20-90 mV between 20 and 90 % SOC, 150-200 mV below 15 %; the LFP preset against Prada's
# A123: 25-40 mV on the plateau). Averaging voltages cannot beat it, so the SOC variance
# reported after a voltage correction is floored at (table error / OCV slope)², and capacity
# anchors carry it. The filter's own covariance, which weighs the next reading against the
# count, is not raised: raised at every poll, it let N readings of one biased table pull as N
# independent ones, whatever the correlation inflation below (a C/4 charge read through the
# preset held SOC back by points an hour; accuracy benchmark, headline SOC RMSE after 24 h
# nmc 2.55 -> 2.43, nmc-aged-35c 4.14 -> 3.75 %, lfp 5.23 -> 5.75 %: see docs).
# 60 mV as the sigma of a preset: with 30 mV the truth was within 2σ 20-57 % of the time on the
# NMC/NCA cells of the accuracy benchmark, with 60 mV 60-100 %. A commissioning table measured
# on the cell is good to the 4 mV above.
# A learned table carries its own sigma per point (the fit's posterior, ocv_learn.py).
OCV_TABLE_ERROR_V = {"preset": 0.060, "config": 0.010, "file": 0.0, "learned": 0.0}
# A preset is also wrong in *where* its features sit: another cell's electrodes span other
# windows of their hosts (PyBaMM's sets use 59-88 % of each), which moves its knees and plateau
# edges by several points of SOC. So a reading through a preset is never better than this [%]
# in SOC, however steep the curve there. A judgement call from that window spread, not fitted.
PRESET_SOC_POSITION_SIGMA_PCT = 5.0


def ocv_table_error_v(chemistry: Chemistry, soc_pct: FloatArray | float = 50.0) -> FloatArray:
    """Bias [V] of the chemistry's OCV table for this cell at a SOC [%]: a learned table's
    posterior sigma there, else a constant by where the table came from."""
    if chemistry.ocv_sigma_v:
        return np.asarray(np.interp(soc_pct, chemistry.ocv_soc_pct, chemistry.ocv_sigma_v))
    error = OCV_TABLE_ERROR_V.get(chemistry.ocv_source, OCV_TABLE_ERROR_V["preset"])
    return np.full(np.shape(soc_pct), error)


def in_flat_region(regions: tuple[tuple[float, float], ...], soc_pct: FloatArray) -> BoolArray:
    """True where SOC [%] lies inside one of the (lo, hi) flat ``regions`` of an OCV table."""
    flat = np.zeros(np.shape(soc_pct), dtype=bool)
    for lo, hi in regions:
        flat |= (soc_pct > lo) & (soc_pct < hi)
    return flat


LOAD_MODEL_ERROR_FRACTION = 1.0
# Model errors are not white: the same OCV-table error persists for minutes, so N polls within
# this time carry the information of about one (variance inflated by the ratio).
MEASUREMENT_CORRELATION_S = 300.0
# The load-model error lasts longer: under a sustained current the electrodes' solid-diffusion
# overpotential, which a 1-RC model lacks, builds over the particles' diffusion time (R²/D, tens
# of minutes to hours for graphite, NMC and LFP particles) and stays for the whole charge. With
# 5 min, a C/4 charge through LFP's sloped 10-45 % region pulled SOC ~3 points high, which the
# plateau then kept until the next knee (accuracy benchmark: LFP SOC RMSE 2.43 % → 1.90 %).
LOAD_ERROR_CORRELATION_S = 1800.0
# Spread of the current measurement [fraction of 1C]: LEM-class hall sensors, ~0.5 % FS.
CURRENT_NOISE_C = 0.005
# Offset random walk [fraction of 1C per sqrt(s)]: drifts over hours, not seconds.
BIAS_WALK_C_PER_SQRT_S = 2e-6
# Sensors in service reach ±3 % of 1C of offset (hall sensors after years, unzeroed shunts):
# 1.5 % is the sigma before anything is measured, so ±3 % lies within 2 sigma.
INITIAL_BIAS_SIGMA_C = 0.015
# An offset beyond 4 % of 1C is a broken sensor, not something to correct for; the bound keeps
# a large SOC error met at a knee from being explained away as offset. An estimate that sits on
# the bound is reported (``at_bias_limit``), never silently kept.
BIAS_LIMIT_C = 0.04
# Innovations beyond 3 sigma are down-weighted (Huber-style): at a knee the linearised OCV is
# poor, and one big correction would otherwise collapse the covariance on a wrong estimate.
INNOVATION_GATE_SIGMAS = 3.0
# The offset is learned only while SOC is known to within this [%]: with a grossly wrong SOC,
# the first knee's correction would otherwise be taken for an offset (the two are correlated
# through the coulomb count, and the linearised filter cannot tell them apart there).
BIAS_LEARNING_SOC_SIGMA_PCT = 5.0
# Unmodelled SOC drift (efficiency, capacity error) [% per sqrt(s)].
SOC_WALK_PCT_PER_SQRT_S = 0.002
# A poll sees one value of a current that may have changed many times since the last
# (regulation at 10-s setpoints polled every 30 s): up to half the step between two polls goes
# uncounted or is counted twice.
SAMPLED_STEP_FRACTION = 0.5


def sampled_charge_sigma_as(step_a: float, dt_s: float) -> float:
    """Sigma [A·s] of the charge counted over ``dt_s`` from one poll's current, the current
    having moved by ``step_a`` [A] since the poll before."""
    return SAMPLED_STEP_FRACTION * abs(step_a) * dt_s


# Counting with a capacity known to a relative sigma: the error is systematic (the same sign for
# every ampere-hour), so the per-step variance is inflated by the steps within this time, which
# makes an hour of steady current add (ΔSOC·σ)² as a single error would.
CAPACITY_ERROR_CORRELATION_S = 3600.0


class SocFilter:
    """A bank of EKFs, one per channel, advanced together with numpy (no loop over cells)."""

    def __init__(self, chemistry: Chemistry, channels: int, estimate_bias: bool) -> None:
        if estimate_bias and channels != 1:
            raise ValueError("the current offset is the string's: one channel")
        self.states = 3 if estimate_bias else 2
        self.x: FloatArray = np.zeros((channels, self.states))
        self.p: FloatArray = np.zeros((channels, self.states, self.states))
        self.initialised = False
        # What the table's bias adds to the SOC variance reported since the last reading [%²].
        self.floor_var: FloatArray = np.zeros(channels)
        self.use_chemistry(chemistry)

    def use_chemistry(self, chemistry: Chemistry) -> None:
        """Count with another OCV table from now on (a learned one); the state is kept."""
        self.chemistry = chemistry
        soc = np.asarray(chemistry.ocv_soc_pct)
        self._slope_soc = soc
        # The table as arrays: np.interp converts the chemistry's tuples at every call.
        self._table_v = np.asarray(chemistry.ocv_v, dtype=np.float64)
        slopes = np.diff(self._table_v) / np.diff(soc)
        # Padded with the end segments' slopes, so a searchsorted index needs no clip (NaN
        # sorts last: the top segment's slope).
        self._slopes_padded = np.concatenate([slopes[:1], slopes, slopes[-1:]])
        self._flat = chemistry.ocv_flat_regions_pct
        # Each plateau's ends in volts, on this table.
        self._flat_v = [tuple(np.interp(ends, soc, self._table_v)) for ends in self._flat]
        # A learned table's error depends on SOC (interpolated per poll); others' is a constant.
        self._table_sigma = bool(chemistry.ocv_sigma_v)
        self._table_error_v = float(ocv_table_error_v(chemistry))
        preset = chemistry.ocv_source == "preset" and not self._table_sigma
        self._position_sigma_pct = PRESET_SOC_POSITION_SIGMA_PCT if preset else 0.0

    @property
    def channels(self) -> int:
        return int(self.x.shape[0])

    def reset(self, soc_pct: FloatArray, soc_sigma_pct: FloatArray, capacity_ah: float) -> None:
        """Start from a SOC guess [%] with its standard deviation [%]; V_RC and offset zero."""
        self.x[:] = 0.0
        self.x[:, 0] = np.clip(soc_pct, 0.0, 100.0)
        self.p[:] = 0.0
        self.p[:, 0, 0] = np.asarray(soc_sigma_pct) ** 2
        self.p[:, 1, 1] = 0.01**2  # an unknown relaxation voltage of up to ~10 mV
        if self.states == 3:
            self.p[:, 2, 2] = (INITIAL_BIAS_SIGMA_C * capacity_ah) ** 2
        self.floor_var = np.zeros(self.channels)
        self.initialised = True

    @property
    def soc_pct(self) -> FloatArray:
        return self.x[:, 0]

    @property
    def soc_sigma_pct(self) -> FloatArray:
        return np.sqrt(np.maximum(self.p[:, 0, 0] + self.floor_var, 0.0))

    @property
    def bias_a(self) -> float:
        """The estimated current-sensor offset [A] (reads high by this much), 0 if not estimated."""
        return float(self.x[0, 2]) if self.states == 3 and self.channels else 0.0

    def ocv_slope_v_per_pct(self, soc_pct: FloatArray) -> FloatArray:
        """dOCV/dSOC [V/%] of the chemistry's table at each SOC (the observability of SOC)."""
        # The method, not np.searchsorted: its dispatch wrapper was half the cost of this call.
        return self._slopes_padded[self._slope_soc.searchsorted(soc_pct, side="right")]

    def in_flat_region(self, soc_pct: FloatArray) -> BoolArray:
        """True where the chemistry says voltage cannot tell SOC (LFP plateau)."""
        return in_flat_region(self._flat, soc_pct)

    def step(
        self,
        current_a: float,
        dt_s: float,
        voltage_v: FloatArray,
        r0_ohm: FloatArray,
        r1_ohm: FloatArray,
        capacity_ah: FloatArray | float,
        capacity_rel_sigma: float = 0.0,
        ohmic_current_a: float | None = None,
        charge_sigma_as: float = 0.0,
    ) -> None:
        """Predict over ``dt_s`` with the measured current [A], then correct with each channel's
        terminal voltage [V] (NaN: no correction for that channel).

        ``current_a`` is the raw sensor value; the string filter removes its own offset estimate,
        a cell filter is given the already corrected current. ``ohmic_current_a`` is the
        current whose ohmic drop the voltages carry, when ``current_a`` is a mean over a longer
        ``dt_s`` (default: ``current_a``). ``charge_sigma_as`` is what the polls' sampling of
        the current leaves unknown of the charge over ``dt_s`` [A·s]
        (:func:`sampled_charge_sigma_as`).
        """
        chem = self.chemistry
        states = self.states
        x = self.x
        # The string's filter (the only one with the offset state) works in floats.
        bias = float(x[0, 2]) if states == 3 else 0.0
        i_corr = current_a - bias
        eta: FloatArray | float
        if isinstance(i_corr, np.ndarray):
            eta = np.where(i_corr > 0, chem.coulombic_efficiency, 1.0)
        else:  # one current for all channels: np.where's call spared
            eta = chem.coulombic_efficiency if i_corr > 0 else 1.0
        k = 100.0 * eta * dt_s / (3600.0 * capacity_ah)
        a = float(np.exp(-dt_s / chem.tau1_s))
        rc_gain = (float(r1_ohm[0]) if states == 3 else r1_ohm) * (1 - a)
        x[:, 0] += k * i_corr
        x[:, 1] = a * x[:, 1] + rc_gain * i_corr

        # Predict P: J P Jᵀ + Q, J the identity but for the RC decay and the offset's column.
        sigma_i = CURRENT_NOISE_C * capacity_ah
        q_soc = (k * sigma_i) ** 2 + SOC_WALK_PCT_PER_SQRT_S**2 * dt_s
        if charge_sigma_as > 0:
            q_soc = q_soc + (100.0 * eta * charge_sigma_as / (3600.0 * capacity_ah)) ** 2
        if capacity_rel_sigma > 0 and dt_s > 0:
            inflate = max(1.0, CAPACITY_ERROR_CORRELATION_S / dt_s)
            q_soc = q_soc + (k * i_corr * capacity_rel_sigma) ** 2 * inflate
        if states == 3:
            _predict_with_offset(self.p, a, float(k), float(rc_gain))
        else:
            _decay_rc_rows(self.p, a)
        p = self.p
        p[:, 0, 0] += q_soc
        p[:, 1, 1] += (rc_gain * sigma_i) ** 2
        if states == 3:
            p[:, 2, 2] += (BIAS_WALK_C_PER_SQRT_S * capacity_ah) ** 2 * dt_s

        i_ohmic = i_corr if ohmic_current_a is None else ohmic_current_a - bias
        z, sigma_ocv, sigma_load = self._soc_measurement(voltage_v, r0_ohm * i_ohmic)
        use = np.isfinite(z)
        # Without a measurement on any channel (LFP's plateau, most of the time) the correction
        # is the identity: skipped, the same x and P at half the cost of the step.
        if np.count_nonzero(use):
            sigma2 = sigma_ocv**2 * max(1.0, MEASUREMENT_CORRELATION_S / max(dt_s, 1e-3)) + (
                sigma_load**2 * max(1.0, LOAD_ERROR_CORRELATION_S / max(dt_s, 1e-3))
            )
            self._correct(z, use, sigma2)
        x[:, 0] = np.minimum(np.maximum(x[:, 0], 0.0), 100.0)  # np.clip's wrapper costs more
        if states == 3:
            limit = BIAS_LIMIT_C * capacity_ah
            x[:, 2] = np.minimum(np.maximum(x[:, 2], -limit), limit)

    def _correct(self, z: FloatArray, use: BoolArray, sigma2: FloatArray) -> None:
        """The measurement update with the SOC ``z`` [%] read from the voltage (NaN: none) and
        its variance ``sigma2`` [%²]; the table's floor goes to the reported variance only."""
        x, p = self.x, self.p
        prior_var = p[:, 0, 0].copy()
        innovation = np.where(use, z - x[:, 0], 0.0)
        gated = np.maximum(prior_var + sigma2, innovation**2 / INNOVATION_GATE_SIGMAS**2)
        s = np.where(use, gated, 1.0)
        gain = np.where(use[:, None], p[:, :, 0] / s[:, None], 0.0)
        if self.states == 3:
            unsure = prior_var + self.floor_var > BIAS_LEARNING_SOC_SIGMA_PCT**2
            gain[:, 2] = np.where(unsure, 0.0, gain[:, 2])
        x += gain * innovation[:, None]
        _joseph_update(p, gain, s)
        if self._table_sigma or self._table_error_v > 0:
            # Where the voltage just moved SOC, SOC is no better known than the table: the
            # reported variance keeps the shortfall beside P (floor_var), never above its prior.
            read = np.where(use, z, 50.0)
            error_v = (
                ocv_table_error_v(self.chemistry, read)
                if self._table_sigma
                else self._table_error_v
            )
            floor = np.where(use, self._table_soc_spread_pct(read, error_v) ** 2, 0.0)
            reported = prior_var + self.floor_var
            excess = np.maximum(np.minimum(floor, reported) - p[:, 0, 0], 0.0)
            self.floor_var = np.where(use, excess, self.floor_var)

    def _table_soc_spread_pct(self, soc_pct: FloatArray, error_v: FloatArray | float) -> FloatArray:
        """Half the SOC range [%] whose table OCV lies within ``error_v`` of the table's at
        ``soc_pct`` (with a preset's position error): the SOC a reading can be, given the
        table's error. Through the curve, not
        along its local slope: on LFP a preset read in its steep 10 % region is 50-60 mV from a
        cell whose 30 % sits on the plateau, and the local slope there said 4 points where the
        truth was 20 off (accuracy benchmark, lfp-aged-35c, hours 3-12)."""
        ocv = np.interp(soc_pct, self._slope_soc, self._table_v)
        high = np.interp(ocv + error_v, self._table_v, self._slope_soc)
        low = np.interp(ocv - error_v, self._table_v, self._slope_soc)
        return np.asarray(np.hypot(0.5 * (high - low), self._position_sigma_pct))

    @property
    def bias_sigma_a(self) -> float:
        """Sigma of :attr:`bias_a` [A] (NaN if the offset is not estimated)."""
        if self.states != 3 or not self.channels:
            return float("nan")
        return float(np.sqrt(max(self.p[0, 2, 2], 0.0)))

    def at_bias_limit(self, capacity_ah: float) -> bool:
        """The offset estimate sits on its bound: the sensor is out of spec or the filter is
        explaining a model error as offset; either way its value is not to be trusted."""
        return self.states == 3 and abs(self.bias_a) >= 0.999 * BIAS_LIMIT_C * capacity_ah

    def assume_bias(self, offset_a: float, sigma_a: float) -> None:
        """Take the current offset [A] ± sigma from an independent estimate (the capacity fit's
        rest anchors): its correlations with SOC and V_RC are dropped, which keeps P valid."""
        if self.states != 3 or not (np.isfinite(offset_a) and np.isfinite(sigma_a)):
            return
        self.x[:, 2] = offset_a
        self.p[:, 2, :2] = 0.0
        self.p[:, :2, 2] = 0.0
        self.p[:, 2, 2] = sigma_a**2

    def _soc_measurement(
        self, voltage_v: FloatArray, ohmic_drop_v: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """SOC [%] read from each terminal voltage through the OCV table and the sigmas [%] of
        its two errors, the OCV model's and the load model's (the ohmic drop), each over the
        OCV slope there (floored).

        Inverting the OCV at the *measured* voltage rather than linearising it at the estimate
        keeps a grossly wrong estimate from being confidently "corrected" along the wrong
        slope. A voltage on a plateau says only "somewhere on the plateau": an estimate outside
        it is moved to its edge with a variance as wide as the plateau, one inside is left
        alone; neither counts as a measurement (NaN). Under load the move waits until the OCV
        read lies inside the plateau's voltages by more than the load model's error: a C/4
        charge's overpotential beyond R0·I reads an LFP cell at 64 % as on a learned curve's
        40-50 % plateau, and the move took 2.6 points off what the count had right.
        """
        ocv = voltage_v - self.x[:, 1] - ohmic_drop_v
        z = np.interp(ocv, self._table_v, self._slope_soc)  # = chemistry.soc_from_ocv
        slope = np.maximum(self.ocv_slope_v_per_pct(z), 1e-6)
        sigma_ocv = OCV_MODEL_ERROR_V / slope
        load_v = LOAD_MODEL_ERROR_FRACTION * np.abs(ohmic_drop_v)
        sigma_load = load_v / slope
        for (lo, hi), (edge_lo, edge_hi) in zip(self._flat, self._flat_v, strict=True):
            on_plateau = (z > lo) & (z < hi)
            surely = (ocv - load_v > edge_lo) & (ocv + load_v < edge_hi)
            outside = on_plateau & surely & ((self.x[:, 0] < lo) | (self.x[:, 0] > hi))
            if np.count_nonzero(outside):
                self.x[:, 0] = np.where(outside, np.clip(self.x[:, 0], lo, hi), self.x[:, 0])
                wide = ((hi - lo) / 4.0) ** 2
                self.p[:, 0, 0] = np.where(
                    outside, np.maximum(self.p[:, 0, 0], wide), self.p[:, 0, 0]
                )
            z = np.where(on_plateau, np.nan, z)
        return np.where(np.isfinite(voltage_v), z, np.nan), sigma_ocv, sigma_load

    def state(self) -> dict[str, Any]:
        return {"x": self.x, "p": self.p, "floor_var": self.floor_var}

    def load(self, state: dict[str, Any]) -> None:
        x, p = np.asarray(state["x"]), np.asarray(state["p"])
        if x.ndim != 2 or x.shape[1] != self.states or p.shape != (*x.shape, self.states):
            raise ValueError(f"SOC filter state of shape {x.shape} does not fit")
        # Saved before the floor was kept apart: the floor is already in P.
        floor = np.asarray(state.get("floor_var", np.zeros(x.shape[0])), dtype=np.float64)
        if floor.shape != (x.shape[0],):
            raise ValueError(f"SOC filter floor of shape {floor.shape} does not fit")
        self.x, self.p, self.floor_var = x.astype(np.float64), p.astype(np.float64), floor
        self.initialised = bool(x.shape[0])


def _predict_with_offset(p: FloatArray, a: float, k: float, rc_gain: float) -> None:
    """``p`` (one channel, 3 states) becomes J P Jᵀ for J = [[1, 0, -k], [0, a, -rc_gain],
    [0, 0, 1]]: SOC and V_RC take what the offset explains, V_RC decays. In Python floats,
    ~30 operations a microsecond or two, where numpy spent a dozen calls on one-element
    arrays (~1 us each); not numpy's bits, whose matrix product goes through BLAS with fused
    multiply-adds (a few units in the last place)."""
    (m00, m01, m02), (m10, m11, m12), row2 = p[0].tolist()
    m0 = [u - k * w for u, w in zip((m00, m01, m02), row2, strict=True)]
    m1 = [a * v - rc_gain * w for v, w in zip((m10, m11, m12), row2, strict=True)]
    p[0] = [[row[0] - k * row[2], a * row[1] - rc_gain * row[2], row[2]] for row in (m0, m1, row2)]


def _decay_rc_rows(p: FloatArray, a: float) -> None:
    """``p`` becomes J p Jᵀ in place for J = diag(1, a) (no offset state): each term the
    matrix product sums is an exact 0 or a single product, so these are its values bit for
    bit, without its stack of 2x2 products (one BLAS call per channel)."""
    p[:, 0, 1] *= a
    p[:, 1, 0] *= a
    p[:, 1, 1] *= a
    p[:, 1, 1] *= a


def _joseph_update(p: FloatArray, gain: FloatArray, s: FloatArray) -> None:
    """``p`` becomes (I - K H) P (I - K H)ᵀ + K Kᵀ (s - P_00) in place for H = [1, 0, ...]:
    the Joseph form, a valid covariance with the gated or frozen gains. Expanded with P's
    first column c and s the innovation variance, that is P - K cᵀ - c Kᵀ + s K Kᵀ: four
    broadcast products instead of two stacked matrix products and the identities they need."""
    kc = gain[:, :, None] * p[:, None, :, 0]
    p -= kc
    p -= kc.transpose(0, 2, 1)
    p += (s[:, None, None] * gain[:, :, None]) * gain[:, None, :]
