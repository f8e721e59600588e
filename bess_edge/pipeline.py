"""One device's path from a Reading to a committed cycle: diagnostics → alerts → store.

The daemon's poll task and ``bess-edge replay`` both go through :class:`DevicePipeline`, so a
replayed capture is diagnosed, alerted on and stored exactly as live data would be.
"""

from __future__ import annotations

import logging
import zlib

from bess_edge.alerts import AlertEngine
from bess_edge.config import DeviceConfig
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.diagnosis import Diagnosis
from bess_edge.diagnostics.electrode_tracker import FitRunner, read_reference, run_inline
from bess_edge.model import CommsState, Reading
from bess_edge.store import CommitResult, Cycle, DeviceStatus, Store

log = logging.getLogger(__name__)

# Estimator state is saved this often (and at shutdown): a crash loses at most this many polls
# of learning, while SQLite is not rewritten with a large blob every second.
STATE_SAVE_EVERY_POLLS = 60
# Per-cell diagnosis arrays (cell_zscore, cell_r0_ohm, ...) are kept in one of this many kept
# Diagnoses; the headline values in every one. For a 1,000-cell rack the arrays are ~80 kB of
# JSON a poll: every one would fill the buffer (and the uplink) with numbers that change slowly.
CELL_ARRAYS_EVERY_KEPT = 60


class DevicePipeline:
    """Holds one device's diagnostics state and status; produces :class:`Cycle` objects."""

    def __init__(
        self,
        device: DeviceConfig,
        store: Store,
        alerts: AlertEngine,
        fit_runner: FitRunner = run_inline,
    ) -> None:
        self.device = device
        self.alerts = alerts
        # Only the simulator has a time_scale: its battery ages faster than its timestamps.
        time_scale = float(getattr(device.parsed_options, "time_scale", 1.0))
        self.diagnostician = Diagnostician(
            device.id,
            device.chemistry_preset(),
            device.capacity_ah,
            time_scale=time_scale,
            series_cells=device.series_cells,
            electrode_reference=read_reference(device.ocv_table) if device.ocv_table else None,
            fit_runner=fit_runner,
        )
        saved = store.estimator_state(device.id)
        if saved is not None and device.driver == "sim":
            # The simulated string is built anew at every start (from initial_soc_pct and
            # seed): the saved state describes a battery that no longer exists, and restoring
            # it showed a restarted demo's SOC at 69 % against the fresh battery's 45 %.
            log.info("simulated device starts afresh", extra={"device": device.id})
            saved = None
        if saved is not None:
            try:
                self.diagnostician.restore_state(saved)
            except Exception as exc:  # an old or corrupt blob must not stop the daemon
                log.warning(
                    "estimator state not restored; starting fresh",
                    extra={"device": device.id, "error": repr(exc)},
                )
        self.status = store.device_status(device.id) or DeviceStatus(
            device=device.id,
            comms=CommsState.UNKNOWN,
            last_ok_ts_ms=None,
            last_attempt_ts_ms=0,
            consecutive_failures=0,
            last_error=None,
            polls=0,
            poll_errors=0,
        )
        self._polls_since_save = 0
        self._kept_diagnoses = 0
        self._last_due_ms: int | None = None
        # Half a poll of slack: poll jitter never drops a Diagnosis at the interval's own rate.
        gap_s = device.diagnosis_interval_s - device.poll_interval_s / 2
        self._keep_gap_ms = max(0.0, gap_s) * 1000.0
        # Racks polled on one grid would all refresh their views in the same poll slot, a burst
        # that made polls late: each rack's refreshes are shifted by a share of the interval
        # fixed by its id, which spreads them across it.
        self._due_phase_ms = round(zlib.crc32(device.id.encode()) % 1000 / 1000 * self._keep_gap_ms)

    def on_reading(self, reading: Reading) -> Cycle:
        """A successful poll: diagnose, evaluate rules, and say what to commit."""
        transitions = []
        if self.status.comms == CommsState.LOST:
            transitions += self.alerts.comms_changed(self.device.id, False, reading.ts_ms)
        diagnosis: Diagnosis | None = None
        due = self._diagnosis_due(reading.ts_ms)
        try:
            diagnosis = self.diagnostician.update(reading, cell_views=due)
        except Exception as exc:  # a diagnostics bug must never stop data collection
            self._diagnostics_failed(reading, exc)
        try:
            transitions += self.alerts.evaluate(reading, diagnosis)
        except Exception:
            log.exception("alert evaluation failed", extra={"device": self.device.id})
        diagnosis_dict = None
        if diagnosis is not None and (due or transitions):
            try:
                cell_arrays = self._kept_diagnoses % CELL_ARRAYS_EVERY_KEPT == 0
                diagnosis_dict = diagnosis.to_dict(cell_arrays=cell_arrays)
                self._kept_diagnoses += 1
            except Exception as exc:
                self._diagnostics_failed(reading, exc)
        s = self.status
        s.comms = CommsState.DEGRADED if reading.quality else CommsState.OK
        s.last_ok_ts_ms = s.last_attempt_ts_ms = reading.ts_ms
        s.consecutive_failures = 0
        s.polls += 1
        self._polls_since_save += 1
        state = None
        if self._polls_since_save >= STATE_SAVE_EVERY_POLLS:
            state = self._export_state()
        return Cycle(
            reading=reading,
            diagnosis=diagnosis_dict,
            alerts=transitions,
            status=_copy(s),
            estimator_state=state,
        )

    def _diagnosis_due(self, ts_ms: int) -> bool:
        """Whether this poll's Diagnosis is stored and published, with its per-cell views
        refreshed: at most one per ``diagnosis_interval_s`` of the device's clock. A poll that
        raises or clears an alert keeps its Diagnosis too (the stored record explains it).
        Every poll is still diagnosed and alerted on; at 10 Hz the other nine would be ~1 kB
        each of estimates that move in minutes."""
        last = self._last_due_ms
        if last is None:  # the first poll's, then the rack's own phase
            self._last_due_ms = ts_ms - self._due_phase_ms
            return True
        if ts_ms < last or ts_ms - last >= self._keep_gap_ms:
            self._last_due_ms = ts_ms
            return True
        return False

    def _diagnostics_failed(self, reading: Reading, exc: Exception) -> None:
        log.exception("diagnostics failed", extra={"device": self.device.id})
        reading.quality_notes.append(f"diagnostics failed: {exc!r}")

    def on_failure(self, error: str, ts_ms: int, lost: bool) -> Cycle:
        """A failed poll: update the status and, on the transition to lost, raise the alert."""
        s = self.status
        transitions = []
        if lost and s.comms != CommsState.LOST:
            transitions = self.alerts.comms_changed(self.device.id, True, ts_ms, error)
        s.comms = CommsState.LOST if lost else s.comms
        s.last_attempt_ts_ms = ts_ms
        s.consecutive_failures += 1
        s.last_error = error
        s.polls += 1
        s.poll_errors += 1
        return Cycle(alerts=transitions, status=_copy(s))

    def final_state(self) -> Cycle | None:
        """The estimator state to save at shutdown (None if nothing was learned)."""
        if self._polls_since_save == 0:
            return None
        return Cycle(estimator_state=self._export_state(), status=_copy(self.status))

    def _export_state(self) -> bytes | None:
        self._polls_since_save = 0
        try:
            return self.diagnostician.export_state()
        except Exception:
            log.exception("estimator state export failed", extra={"device": self.device.id})
            return None

    def process(self, store: Store, reading: Reading) -> CommitResult:
        """Diagnose and commit one Reading synchronously (replay, tests, benchmarks)."""
        return store.commit_cycle(self.on_reading(reading))


def _copy(status: DeviceStatus) -> DeviceStatus:
    return DeviceStatus(*(getattr(status, f) for f in DeviceStatus.__slots__))
