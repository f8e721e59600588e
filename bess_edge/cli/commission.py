"""``bess-edge commission``: fit a device's OCV table from a recorded slow charge/discharge.

Record a charge to the upper voltage limit and a slow (≤ C/10) discharge to the lower one, or
rests spread between them, export it (``bess-edge export --device X -o run.csv``) and fit:

    bess-edge commission run.csv --chemistry nmc --capacity-ah 280 -o rack1-ocv.csv

The table is per cell (the mean of the cell voltages, or pack voltage / ``--series-cells``);
set ``ocv_table = "rack1-ocv.csv"`` in the device's config (a relative path is taken from the
config file's folder) and it wins over the preset.
The file also carries the fitted electrode windows (``# electrode reference:``): the fresh
cell the degradation modes are counted against.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from bess_edge.chemistry import Chemistry, get_chemistry, write_ocv_table
from bess_edge.cli._common import EXIT_OK, EXIT_USAGE
from bess_edge.diagnostics.electrode import ElectrodeWindows, fit_cell
from bess_edge.diagnostics.electrode_tracker import ElectrodeReference, reference_lines
from bess_edge.diagnostics.ocv_fit import OcvFit, fit_ocv_table

# The table's ends carry the polarisation a C/10-C/20 current leaves (tens of mV): the
# electrode windows are fitted inside them.
ELECTRODE_FIT_SOC_PCT = (5.0, 95.0)
# The charge counter's error over a commissioning run: a current sensor's gain error in spec.
CAPACITY_REL_SIGMA = 0.01


EPILOG = """\
what to record (the device polled by the daemon, or a capture replayed into the store):
  a charge to the upper voltage limit, then a discharge at C/10 or slower to the lower limit;
  or rests of an hour or more spread from full to empty (the fit uses what was settled)

steps:
  bess-edge export --device rack-1 --since 2026-11-22T06:00Z --until 2026-11-23T06:00Z -o run.csv
  bess-edge commission run.csv --chemistry nmc --capacity-ah 280 -o rack1-ocv.csv
  then, in the device's config: ocv_table = "rack1-ocv.csv" (restart the daemon)

a CAN capture taken on site (candump, .trc) goes through the store first:
  bess-edge replay capture.log --config site.toml --fast, then export and commission as above

The table wins over the chemistry preset and stops the on-device learning; its header records
the capacity the run measured and the electrode windows the degradation modes count from.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "commission",
        help="fit an OCV table from a recorded slow charge/discharge (export CSV)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recording", type=Path, help="a `bess-edge export` CSV of the segment")
    parser.add_argument("--chemistry", required=True, help="preset, for its R0 (nmc, lfp, ...)")
    parser.add_argument(
        "--capacity-ah", type=float, required=True, help="label capacity of the string [Ah]"
    )
    parser.add_argument(
        "--series-cells", type=int, help="cells in series, when the CSV has no cell voltages"
    )
    parser.add_argument("--r0-ohm", type=float, help="cell R0 [Ω] (default: the preset's)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="table CSV to write")
    parser.set_defaults(func=run)


def read_recording(path: Path, series_cells: int | None) -> tuple[np.ndarray, ...]:
    """Times [s], mean cell voltage [V] and pack current [A] of an export CSV."""
    t, v, i = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        cells = [name for name in fields if name.startswith("cell_voltage_v_")]
        missing = {"ts_ms", "pack_current_a"} - set(fields)
        if missing or not (cells or ("pack_voltage_v" in fields and series_cells)):
            raise ValueError(
                f"{path}: needs ts_ms, pack_current_a and cell_voltage_v_* columns (or "
                "pack_voltage_v with --series-cells), as `bess-edge export` writes them"
            )
        for row in reader:
            t.append(_number(row["ts_ms"]) / 1000.0)
            i.append(_number(row["pack_current_a"]))
            if cells:
                values = [_number(row[c]) for c in cells]
                finite = [x for x in values if math.isfinite(x)]
                v.append(sum(finite) / len(finite) if finite else math.nan)
            else:
                v.append(_number(row["pack_voltage_v"]) / float(series_cells or 1))
    return np.array(t), np.array(v), np.array(i)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def run(args: argparse.Namespace) -> int:
    try:
        chemistry = get_chemistry(args.chemistry)
        t, v, i = read_recording(args.recording, args.series_cells)
        r0 = args.r0_ohm if args.r0_ohm is not None else chemistry.r0_ohm(args.capacity_ah)
        fit = fit_ocv_table(t, v, i, args.capacity_ah, r0)
        note = (
            f"OCV table fitted by bess-edge commission from {args.recording.name}: "
            f"{fit.points} samples, capacity {fit.capacity_ah:.4g} Ah, "
            f"residual {1000 * fit.residual_v:.1f} mV RMS, R0 {r0:.4g} ohm"
        )
        windows = _electrode_windows(chemistry, fit)
        lines = [note]
        if windows is not None:
            lines += reference_lines(
                ElectrodeReference(windows, fit.capacity_ah, CAPACITY_REL_SIGMA * fit.capacity_ah)
            )
        write_ocv_table(args.output, fit.soc_pct, fit.ocv_v, "\n".join(lines))
    except (OSError, ValueError) as exc:
        print(f"commission: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(note, file=sys.stderr)
    if windows is not None:
        print(_describe(windows), file=sys.stderr)
    # Absolute: a relative ocv_table is read from the config file's folder, not from here.
    print(
        f'wrote {args.output}; set ocv_table = "{args.output.absolute()}" in the device\'s config'
    )
    return EXIT_OK


def _electrode_windows(chemistry: Chemistry, fit: OcvFit) -> ElectrodeWindows | None:
    lo, hi = ELECTRODE_FIT_SOC_PCT
    inner = (fit.soc_pct >= lo) & (fit.soc_pct <= hi)
    return fit_cell(chemistry, fit.soc_pct[inner], fit.ocv_v[inner])


def _describe(w: ElectrodeWindows) -> str:
    fitted = (
        f"electrode fit: {w.positive} / {w.negative}, residual {1000 * w.residual_v:.1f} mV RMS "
        f"(x0 {w.x0:.3f}, x100 {w.x100:.3f}, y0 {w.y0:.3f}, y100 {w.y100:.3f})"
    )
    if w.matched:
        return fitted
    return (
        f"{fitted}: {w.mismatch}, so no library pair matches this cell; degradation modes "
        "will not be reported against it"
    )
