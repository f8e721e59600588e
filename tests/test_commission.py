"""`bess-edge commission` fits a cell's OCV table from a recording; the table loads from config."""

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import read_db, sim_device, wait_until

from bess_edge import chemistry as chemistry_module
from bess_edge.chemistry import NMC, read_ocv_table, write_ocv_table
from bess_edge.cli import main
from bess_edge.config import DeviceConfig, load_config
from bess_edge.diagnostics import Diagnostician
from bess_edge.diagnostics.electrode import full_cell_ocv
from bess_edge.diagnostics.electrode_ocp import LIBRARY
from bess_edge.diagnostics.electrode_tracker import read_reference
from bess_edge.model import Reading

CAPACITY_AH = 50.0
R0_OHM = 0.0016
R1_OHM, TAU_S = 0.0008, 60.0
# A cell unlike the NMC preset (an NCA-like curve: lower in the middle, steeper at the top).
TRUE_SOC = np.linspace(0.0, 100.0, 21)
TRUE_OCV = 3.0 + 1.2 * (TRUE_SOC / 100.0) ** 0.6 - 0.15 * np.sin(np.pi * TRUE_SOC / 100.0)


def _record(path, rng, soc_pct=TRUE_SOC, ocv_v=TRUE_OCV) -> None:
    """A full charge, a rest, a C/20 discharge to empty and a C/20 charge back, as exported."""
    current = np.concatenate(
        [np.zeros(360), np.full(7200, -CAPACITY_AH / 20.0), np.zeros(360),
         np.full(7200, CAPACITY_AH / 20.0), np.zeros(360)]
    )  # fmt: skip
    dt = 10.0
    soc, v_rc = 100.0, 0.0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "ts_ms",
                "pack_voltage_v",
                "pack_current_a",
                *(f"cell_voltage_v_{k}" for k in range(4)),
            ]
        )
        for k, amps in enumerate(current):
            soc = min(max(soc + 100.0 * amps * dt / 3600.0 / CAPACITY_AH, 0.0), 100.0)
            a = math.exp(-dt / TAU_S)
            v_rc = a * v_rc + R1_OHM * (1 - a) * amps
            v = np.interp(soc, soc_pct, ocv_v) + v_rc + R0_OHM * amps
            cells = np.round(v + 0.001 * rng.standard_normal(4), 3)
            measured = round(amps + 0.02 * rng.standard_normal(), 2)
            writer.writerow([int(1.7e12 + k * dt * 1000), f"{cells.sum():.3f}", measured, *cells])


def test_commission_round_trips_a_table_into_the_config(tmp_path, capsys):
    recording, table = tmp_path / "run.csv", tmp_path / "rack-ocv.csv"
    _record(recording, np.random.default_rng(1))
    code = main(
        ["commission", str(recording), "--chemistry", "nmc", "--capacity-ah", str(CAPACITY_AH),
         "--r0-ohm", str(R0_OHM), "-o", str(table)]
    )  # fmt: skip
    assert code == 0
    soc, ocv = read_ocv_table(table)
    error = np.interp(soc, TRUE_SOC, TRUE_OCV) - ocv
    inner = (soc >= 5) & (soc <= 95)
    print(f"table error: max {1000 * np.abs(error[inner]).max():.1f} mV within 5-95 %")
    assert np.abs(error[inner]).max() < 0.006
    assert np.abs(error).max() < 0.03  # the ends, where a C/20 current still polarises
    # An invented curve, not two electrodes: said so, and its windows are no reference.
    assert "no library pair matches this cell" in capsys.readouterr().err
    assert not read_reference(table).windows.matched

    device = DeviceConfig(id="rack", driver="sim", chemistry="nmc", ocv_table=table)
    chemistry = device.chemistry_preset()
    assert chemistry.ocv_source == "file"
    np.testing.assert_allclose(chemistry.ocv_v, ocv)
    diag = Diagnostician("rack", chemistry, CAPACITY_AH)
    d = diag.update(Reading("rack", 0, pack_voltage_v=3.6, pack_current_a=0.0))
    assert d.ocv_source == "file"


def test_commission_writes_the_cells_electrode_windows_beside_its_table(tmp_path, capsys):
    # A cell made of the LG M50's electrodes (Chen et al. 2020) with known windows.
    windows = np.array([0.03, 0.88, 0.9, 0.27])
    soc = np.linspace(0.0, 100.0, 101)
    ocv = full_cell_ocv(
        LIBRARY["nmc811_chen2020"], LIBRARY["graphite_chen2020"], windows, soc / 100.0
    )
    recording, table = tmp_path / "run.csv", tmp_path / "rack-ocv.csv"
    _record(recording, np.random.default_rng(2), soc, ocv)
    code = main(
        ["commission", str(recording), "--chemistry", "nmc", "--capacity-ah", str(CAPACITY_AH),
         "--r0-ohm", str(R0_OHM), "-o", str(table)]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    print(err)
    assert "electrode fit: nmc811_chen2020 / graphite_chen2020, residual" in err
    read_ocv_table(table)  # the comment lines leave the table readable
    ref = read_reference(table)
    assert ref is not None and ref.windows.matched
    assert (ref.windows.positive, ref.windows.negative) == ("nmc811_chen2020", "graphite_chen2020")
    np.testing.assert_allclose(ref.windows.params, windows, atol=0.03)
    np.testing.assert_allclose(ref.windows.covariance, ref.windows.covariance.T)
    assert abs(ref.capacity_ah / CAPACITY_AH - 1.0) < 0.02 and ref.capacity_sigma_ah > 0

    diag = Diagnostician("rack", NMC, CAPACITY_AH, electrode_reference=ref)
    d = diag.update(Reading("rack", 0, pack_voltage_v=3.6, pack_current_a=0.0))
    assert d.electrode_pair == "nmc811_chen2020/graphite_chen2020"
    assert d.electrode_fit_residual_v == ref.windows.residual_v
    assert math.isnan(d.lli_pct)  # no new curve since commissioning


def test_commission_refuses_a_recording_that_does_not_span_the_cell(tmp_path, capsys):
    recording = tmp_path / "short.csv"
    with open(recording, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ts_ms", "pack_current_a", "cell_voltage_v_0"])
        for k in range(100):
            writer.writerow([k * 1000, -1.0, 3.7 - 0.0001 * k])
    code = main(
        ["commission", str(recording), "--chemistry", "nmc", "--capacity-ah", "50",
         "-o", str(tmp_path / "t.csv")]
    )  # fmt: skip
    assert code == 2
    assert "record a charge to the upper limit" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_commission_help_says_what_to_record_and_how_the_table_reaches_the_config(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["commission", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for step in ("C/10 or slower", "bess-edge export --device", "ocv_table =", "bess-edge replay"):
        assert step in text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("soc_pct,ocv_v\n0,3.0\n50,3.6\n", "at least 3 rows"),
        ("soc_pct,ocv_v\n0,3.0\n50,3.9\n100,3.6\n", "must rise strictly"),
        ("soc,v\n0,3.0\n50,3.6\n100,4.1\n", "header"),
        ("soc_pct,ocv_v\n0,3.0\n50,x\n100,4.1\n", "row 3"),
    ],
)
def test_a_bad_ocv_table_is_refused_with_file_and_reason(tmp_path, text, reason):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason) as info:
        DeviceConfig(id="rack", driver="sim", chemistry="nmc", ocv_table=path).chemistry_preset()
    assert str(path) in str(info.value)
    assert NMC.ocv_source == "preset"


def _write_table(path, ocv_v) -> None:
    write_ocv_table(path, np.linspace(0.0, 100.0, len(ocv_v)), np.array(ocv_v), "test table")


def test_a_relative_ocv_table_is_read_beside_the_config_once_per_version(
    tmp_path, make_config, monkeypatch
):
    """ocv_table = "rack-ocv.csv" was looked for in the working directory, and the CSV was read
    again at every load of the config (each reload, each threshold edit in the API)."""
    _write_table(tmp_path / "rack-ocv.csv", [3.0, 3.6, 4.1])
    config = make_config([sim_device("rack", chemistry="nmc", ocv_table="rack-ocv.csv")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reads = []
    real_read = chemistry_module.read_ocv_table
    monkeypatch.setattr(
        chemistry_module, "read_ocv_table", lambda path: reads.append(path) or real_read(path)
    )
    for _ in range(3):
        preset = load_config(config).device("rack").chemistry_preset()
        assert preset.ocv_source == "file"
        assert preset.ocv_v == (3.0, 3.6, 4.1)
    assert reads == [str(tmp_path / "rack-ocv.csv")]
    _write_table(tmp_path / "rack-ocv.csv", [3.0, 3.5, 4.1])
    os.utime(tmp_path / "rack-ocv.csv", ns=(1, 1))  # a new version, even within one clock tick
    assert load_config(config).device("rack").chemistry_preset().ocv_v == (3.0, 3.5, 4.1)
    assert len(reads) == 2


def test_the_daemon_finds_a_relative_ocv_table_from_another_working_directory(
    tmp_path, make_config, daemon
):
    """systemd starts the daemon in its WorkingDirectory (/ by default), not beside the config."""
    _write_table(tmp_path / "rack-ocv.csv", [3.0, 3.6, 4.1])
    config = make_config([sim_device("rack", chemistry="nmc", ocv_table="rack-ocv.csv")])
    assert Path.cwd() != tmp_path
    proc = daemon(config)
    proc.wait_for_log('"msg": "ready"')
    rows = wait_until(lambda: read_db(tmp_path / "bess-edge.db", "SELECT data FROM diagnoses"))
    assert json.loads(rows[0][0])["ocv_source"] == "file"
    assert proc.stop() == 0
