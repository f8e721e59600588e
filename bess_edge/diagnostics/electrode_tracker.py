"""A device's electrode-level view: the reference cell, the latest fit, the modes between them.

The reference is the cell as commissioned (the windows ``bess-edge commission`` writes into
the OCV table file, as ``# electrode reference:`` comment lines) or, without one, the first fit
on the device that matched the library: losses are then counted from that day, not from the
factory. A fit happens only when a new OCV curve exists (a commissioning table, a refit of
the learned curve), never per poll: it costs about a second of CPU. That second would stall
every other device on the daemon's event loop, so the fit is handed to a runner (the daemon's
runs it on a worker thread; the default runs it at once) and adopted at the first poll after it
is done; until then the tracker's state is the one before the fit, whole.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bess_edge.chemistry import Chemistry
from bess_edge.diagnostics.diagnosis import Diagnosis
from bess_edge.diagnostics.electrode import (
    DegradationModes,
    ElectrodeWindows,
    degradation_modes,
    fit_cell,
)
from bess_edge.model import FloatArray

# A learned curve is refitted at most this often [s of battery time]: LLI and LAM move over
# months, and each fit costs about a second of CPU.
ELECTRODE_REFIT_S = 86_400.0
REFERENCE_PREFIX = "electrode reference:"
COVARIANCE_PREFIX = "electrode covariance:"


@dataclass(frozen=True)
class ElectrodeReference:
    """The fresh (or first-seen) cell: its windows and its capacity [Ah] then."""

    windows: ElectrodeWindows
    capacity_ah: float
    capacity_sigma_ah: float


@dataclass(frozen=True)
class ElectrodeFit:
    """One fit's outcome: the windows, the reference after it and the modes against it."""

    windows: ElectrodeWindows
    reference: ElectrodeReference | None
    modes: DegradationModes


# Runs a fit (a call without arguments) and returns its Future: at once, or on another thread.
FitRunner = Callable[[Callable[[], ElectrodeFit | None]], "Future[ElectrodeFit | None]"]


def run_inline(fn: Callable[[], ElectrodeFit | None]) -> Future[ElectrodeFit | None]:
    """The default runner: the fit runs now, so results come at the same poll (tests, replay)."""
    future: Future[ElectrodeFit | None] = Future()
    try:
        future.set_result(fn())
    except Exception as exc:
        future.set_exception(exc)
    return future


def fit_electrodes(
    chemistry: Chemistry,
    reference: ElectrodeReference | None,
    soc_pct: FloatArray,
    ocv_v: FloatArray,
    sigma_v: FloatArray | None,
    capacity_ah: float,
    capacity_sigma_ah: float,
) -> ElectrodeFit | None:
    """Fit a cell's OCV curve, whose capacity is ``capacity_ah`` (NaN if not known: then the
    windows are fitted and no modes are given). Reads only its arguments: safe on any thread."""
    fit = fit_cell(chemistry, soc_pct, ocv_v, sigma_v)
    if fit is None:
        return None
    known = math.isfinite(capacity_ah) and math.isfinite(capacity_sigma_ah)
    if reference is None and fit.matched and known:
        reference = ElectrodeReference(fit, capacity_ah, capacity_sigma_ah)
    modes = DegradationModes()
    if reference is not None:
        modes = degradation_modes(
            fit, capacity_ah, capacity_sigma_ah,
            reference.windows, reference.capacity_ah, reference.capacity_sigma_ah,
        )  # fmt: skip
    return ElectrodeFit(fit, reference, modes)


def reference_lines(ref: ElectrodeReference) -> list[str]:
    """Comment lines for an OCV table file (``read_reference`` reads them back)."""
    w = ref.windows
    return [
        f"{REFERENCE_PREFIX} positive={w.positive} negative={w.negative} x0={w.x0:.6f} "
        f"x100={w.x100:.6f} y0={w.y0:.6f} y100={w.y100:.6f} residual_v={w.residual_v:.6g} "
        f"points={w.points} capacity_ah={ref.capacity_ah:.6g} "
        f"capacity_sigma_ah={ref.capacity_sigma_ah:.6g}",
        COVARIANCE_PREFIX + " " + " ".join(f"{v:.6g}" for v in w.covariance.ravel()),
    ]


def read_reference(path: str | Path) -> ElectrodeReference | None:
    """The reference in an OCV table file's comments; None if it has none. ValueError names
    the file and what is wrong."""
    fields: dict[str, str] = {}
    covariance: list[float] = []
    try:
        with open(path) as f:
            for line in f:
                text = line.lstrip("# ").strip()
                if text.startswith(REFERENCE_PREFIX):
                    pairs = text.removeprefix(REFERENCE_PREFIX).split()
                    fields = dict(p.split("=", 1) for p in pairs if "=" in p)
                elif text.startswith(COVARIANCE_PREFIX):
                    covariance = [float(v) for v in text.removeprefix(COVARIANCE_PREFIX).split()]
        if not fields:
            return None
        windows = ElectrodeWindows.of(
            fields["positive"],
            fields["negative"],
            np.array([float(fields[k]) for k in ("x0", "x100", "y0", "y100")]),
            np.array(covariance),
            float(fields["residual_v"]),
            int(fields["points"]),
        )
        return ElectrodeReference(
            windows, float(fields["capacity_ah"]), float(fields["capacity_sigma_ah"])
        )
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the OCV table: {exc.strerror}") from None
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: bad '{REFERENCE_PREFIX}' comment lines: {exc}") from None


class ElectrodeTracker:
    """Fits new OCV curves and keeps the modes against the reference for every Diagnosis."""

    def __init__(self, chemistry: Chemistry, reference: ElectrodeReference | None) -> None:
        self.chemistry = chemistry
        self.reference = reference
        self.fit: ElectrodeWindows | None = reference.windows if reference else None
        self.modes = DegradationModes()
        self.refit_ts_s = -math.inf  # when a curve was last fitted (battery clock)
        # A fit handed to the runner and not yet adopted, with its battery time.
        self._pending: tuple[float, Future[ElectrodeFit | None]] | None = None

    def due(self, ts_s: float) -> bool:
        """A learned curve may be refitted now (ELECTRODE_REFIT_S since the last fit, and no
        fit still running)."""
        return self._pending is None and ts_s - self.refit_ts_s >= ELECTRODE_REFIT_S

    def refit(
        self,
        soc_pct: FloatArray,
        ocv_v: FloatArray,
        sigma_v: FloatArray | None,
        capacity_ah: float,
        capacity_sigma_ah: float,
        ts_s: float = -math.inf,
        runner: FitRunner = run_inline,
    ) -> ElectrodeWindows | None:
        """Fit a new OCV curve of the cell, whose capacity is ``capacity_ah`` (NaN if not
        known: then the windows are fitted and no modes are given) at battery time ``ts_s``,
        on ``runner``. The windows if the fit is done and adopted now, else None."""
        # The fit may run on another thread: it gets copies, never this tracker's attributes.
        sigma = None if sigma_v is None else np.array(sigma_v, dtype=np.float64)
        job = functools.partial(
            fit_electrodes, self.chemistry, self.reference, np.array(soc_pct, dtype=np.float64),
            np.array(ocv_v, dtype=np.float64), sigma, capacity_ah, capacity_sigma_ah,
        )  # fmt: skip
        self._pending = (ts_s, runner(job))
        return self.adopt_done()

    def adopt_done(self) -> ElectrodeWindows | None:
        """Take a finished fit's result (at a poll, on the loop's thread): the windows, or None
        if none is done or it found none. A fit that raised raises here, once."""
        if self._pending is None or not self._pending[1].done():
            return None
        (self.refit_ts_s, future), self._pending = self._pending, None
        result = future.result()
        if result is None:
            return None
        self.fit, self.reference, self.modes = result.windows, result.reference, result.modes
        return result.windows

    def fill(self, d: Diagnosis) -> None:
        m, fit = self.modes, self.fit
        d.lli_pct, d.lli_uncertainty_pct = m.lli_pct, m.lli_sigma_pct
        d.lam_pe_pct, d.lam_pe_uncertainty_pct = m.lam_pe_pct, m.lam_pe_sigma_pct
        d.lam_ne_pct, d.lam_ne_uncertainty_pct = m.lam_ne_pct, m.lam_ne_sigma_pct
        if fit is not None:
            d.electrode_pair = f"{fit.positive}/{fit.negative}"
            d.electrode_fit_residual_v = fit.residual_v

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "modes": np.array(_modes_tuple(self.modes)),
            "refit_ts_s": np.array(self.refit_ts_s),
        }
        for key, windows, capacity in (
            ("fit", self.fit, (math.nan, math.nan)),
            (
                "reference",
                self.reference.windows if self.reference else None,
                (self.reference.capacity_ah, self.reference.capacity_sigma_ah)
                if self.reference
                else (math.nan, math.nan),
            ),
        ):
            if windows is not None:
                out[f"{key}_names"] = np.array([windows.positive, windows.negative])
                out[f"{key}_values"] = np.concatenate(
                    [windows.params, [windows.residual_v, windows.points], capacity,
                     windows.covariance.ravel()]
                )  # fmt: skip
        return out

    def load(self, state: dict[str, Any]) -> None:
        """Resume; a reference given at construction (commissioning) wins over a saved one."""
        modes = [float(v) for v in state["modes"]]
        if len(modes) != 6:
            raise ValueError(f"electrode modes have {len(modes)} values, expected 6")
        self.modes = DegradationModes(*modes)
        self.refit_ts_s = float(state.get("refit_ts_s", -math.inf))
        if "fit_names" in state:
            self.fit, _ = _windows_from(state["fit_names"], state["fit_values"])
        if "reference_names" in state and self.reference is None:
            windows, (cap, sigma) = _windows_from(
                state["reference_names"], state["reference_values"]
            )
            self.reference = ElectrodeReference(windows, cap, sigma)


def _modes_tuple(m: DegradationModes) -> tuple[float, ...]:
    return (
        m.lli_pct, m.lli_sigma_pct, m.lam_pe_pct, m.lam_pe_sigma_pct, m.lam_ne_pct,
        m.lam_ne_sigma_pct,
    )  # fmt: skip


def _windows_from(names: Any, values: Any) -> tuple[ElectrodeWindows, tuple[float, float]]:
    v = np.asarray(values, dtype=np.float64)
    if v.size != 24 or len(names) != 2:
        raise ValueError("electrode windows state has the wrong shape")
    windows = ElectrodeWindows.of(str(names[0]), str(names[1]), v[:4], v[8:], v[4], int(v[5]))
    return windows, (float(v[6]), float(v[7]))
