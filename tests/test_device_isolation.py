"""One failing device never stalls the others (DESIGN invariant 3)."""

from __future__ import annotations

import itertools
import time

from conftest import read_db, sim_device, wait_until


def test_hanging_erroring_and_garbage_devices_do_not_delay_a_healthy_one(
    make_config, daemon, tmp_path
):
    outage = {"kind": "comms_dropout", "at_s": 0, "duration_s": 3600}
    config = make_config(
        devices=[
            sim_device("healthy", poll_interval_s=0.2),
            sim_device("hangs", timeout_s=1.0, options={"faults": [{**outage, "mode": "hang"}]}),
            sim_device("errors", options={"faults": [{**outage, "mode": "error"}]}),
            sim_device("garbage", options={"faults": [{**outage, "mode": "garbage"}]}),
        ]
    )
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    proc.wait_for_log("first reading")
    time.sleep(5.0)
    rows = read_db(db, "SELECT ts_ms FROM samples WHERE device = 'healthy' ORDER BY seq")
    stamps = [r[0] for r in rows]
    gaps_s = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
    print(
        f"healthy device: {len(stamps)} polls, max gap {max(gaps_s):.3f} s, "
        f"mean {sum(gaps_s) / len(gaps_s):.3f} s (interval 0.2 s)"
    )
    assert len(stamps) >= 20
    # A hanging device blocks for its whole 1 s timeout; the healthy one must not notice.
    assert max(gaps_s) < 0.6
    assert abs(sum(gaps_s) / len(gaps_s) - 0.2) < 0.05

    states = dict(read_db(db, "SELECT device, comms FROM device_state"))
    assert states["hangs"] == "comms_lost"
    assert states["errors"] == "comms_lost"
    assert states["healthy"] == "ok"
    lost = {
        r[0]
        for r in read_db(
            db, "SELECT device FROM alerts WHERE rule = 'comms_lost' AND state = 'active'"
        )
    }
    assert lost == {"hangs", "errors"}
    # Garbage is data, not a crash: it is stored (and flagged by diagnostics), the daemon lives.
    assert read_db(db, "SELECT count(*) FROM samples WHERE device = 'garbage'")[0][0] > 0
    assert proc.alive()
    assert proc.stop() == 0


def test_device_recovers_after_a_drop_out_and_comms_lost_clears(make_config, daemon, tmp_path):
    # Lost from t=0.5 s to t=2.5 s; back-off is capped at 1 s so recovery is seen quickly.
    dropout = {"kind": "comms_dropout", "at_s": 0.5, "duration_s": 2.0, "mode": "error"}
    config = make_config(devices=[sim_device("flaky", options={"faults": [dropout]})])
    db = tmp_path / "bess-edge.db"
    proc = daemon(config)
    wait_until(lambda: read_db(db, "SELECT 1 FROM alerts WHERE rule = 'comms_lost'"), timeout=15)
    wait_until(
        lambda: read_db(db, "SELECT 1 FROM alerts WHERE rule = 'comms_lost' AND state = 'cleared'"),
        timeout=15,
    )
    transitions = [r[0] for r in read_db(db, "SELECT transition FROM alert_events ORDER BY id")]
    assert transitions[:2] == ["raised", "cleared"]
    assert dict(read_db(db, "SELECT device, comms FROM device_state"))["flaky"] == "ok"
    assert '"poll failed"' in proc.log() and '"device answering again"' in proc.log()
    assert proc.stop() == 0
