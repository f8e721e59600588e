"""``bess-edge status``: is the daemon running, what it has seen, read from its files.

Reads the SQLite file read-only and the daemon's state file (:mod:`bess_edge.daemon_state`), so
it works with the daemon running or not, and says which: a reading of nine minutes ago from a
daemon that is gone must not look like a healthy device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bess_edge.cli._common import EXIT_OK, add_config_argument, load_or_exit, open_store_readonly
from bess_edge.config import DeviceConfig, Settings
from bess_edge.daemon_state import fresh, lock_holder, read_state
from bess_edge.model import now_ms
from bess_edge.store import DeviceStatus, Store

# A device is stale once this many polls are overdue: one late poll is jitter or a slow
# device, three mean nobody is polling it (the daemon is gone, or its poll task is stuck).
STALE_AFTER_POLLS = 3

# Diagnosis fields shown when present: label, factor to the shown unit, format, unit.
DIAGNOSIS_FIELDS = (
    ("soc_pct", "SOC", 1.0, ".1f", " %"),
    ("soh_pct", "SOH", 1.0, ".1f", " %"),
    ("r0_ohm", "R0", 1000.0, ".2f", " mΩ"),
    ("equivalent_full_cycles", "cycles", 1.0, ".2f", " EFC"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="is the daemon running; each device's last reading and diagnosis; MQTT; the buffer",
        description="Whether the daemon is running (pid, uptime) and connected to MQTT (with "
        "the age of the oldest unsent row); per device: comms state, last reading (marked "
        "STALE when polls are overdue), pack values, diagnosis; the local buffer (main file "
        "and WAL, unsent rows, dropped telemetry). Reads the daemon's files, read-only.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="S",
        help="redraw every S seconds (default 2) until Ctrl-C",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    store = open_store_readonly(settings)
    if args.watch is None:
        _show(settings, store, args.json)
        return EXIT_OK
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not args.json else ""
    try:
        while True:
            print(clear, end="")
            _show(settings, store, args.json)
            if not clear:
                print(flush=True)  # a blank line between snapshots in a log or a pipe
            time.sleep(max(args.watch, 0.1))
    except KeyboardInterrupt:
        return EXIT_OK


def _show(settings: Settings, store: Store, as_json: bool) -> None:
    status = collect(settings, store)
    print(json.dumps(status, indent=2) if as_json else render(status), flush=True)


def stale_after_s(device: DeviceConfig, state: DeviceStatus | None) -> float:
    """How old the last poll attempt may be: a failing device is retried up to max_backoff_s
    apart, a healthy one every poll_interval_s; each attempt may take timeout_s."""
    failing = state is not None and state.consecutive_failures > 0
    spacing_s = max(device.poll_interval_s, device.max_backoff_s if failing else 0.0)
    return STALE_AFTER_POLLS * spacing_s + device.timeout_s


def _device(device: DeviceConfig, store: Store, now: int) -> dict[str, Any]:
    sample = store.latest_sample(device.id)
    state = store.device_status(device.id)
    last_poll_ms = state.last_attempt_ts_ms if state and state.last_attempt_ts_ms else None
    poll_age_s = round((now - last_poll_ms) / 1000, 1) if last_poll_ms else None
    entry: dict[str, Any] = {
        "id": device.id,
        "driver": device.driver,
        "enabled": device.enabled,
        "comms": state.comms if state else "unknown",
        "stale": poll_age_s is not None and poll_age_s > stale_after_s(device, state),
        "poll_interval_s": device.poll_interval_s,
        "last_poll_age_s": poll_age_s,
        "readings": store.sample_count(device.id),
        "polls": state.polls if state else 0,
        "poll_errors": state.poll_errors if state else 0,
        "last_error": state.last_error if state else None,
        "last_reading_ts_ms": sample["ts_ms"] if sample else None,
        "last_reading_age_s": round((now - sample["ts_ms"]) / 1000, 1) if sample else None,
    }
    if sample:
        entry.update({
            key: sample[key]
            for key in (
                "pack_voltage_v", "pack_current_a", "pack_power_w", "bms_soc_pct",
                "cell_voltage_min_v", "cell_voltage_max_v",
                "cell_temperature_min_c", "cell_temperature_max_c", "quality",
            )
        })  # fmt: skip
        entry["cells"] = len(sample["cell_voltage_v"])
    entry["diagnosis"] = store.latest_diagnosis(device.id)
    entry["identity"] = store.device_identities().get(device.id, {})
    return entry


def _file_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def collect(settings: Settings, store: Store) -> dict[str, Any]:
    """The status as plain data (what --json prints)."""
    now = now_ms()
    state = read_state(store.path)
    holder = lock_holder(store.path)
    if state is not None and state.pid != holder:
        state = state if holder is None else None  # a state file from an earlier daemon
    alive = holder is not None
    daemon: dict[str, Any] = {
        "running": alive,
        "responding": alive and state is not None and fresh(state),
        "pid": holder if alive else (state.pid if state else None),
        "uptime_s": round((now - state.started_ts_ms) / 1000) if alive and state else None,
        "last_seen_age_s": round((now - state.updated_ts_ms) / 1000, 1) if state else None,
    }
    oldest = store.outbox_oldest_ts_ms()
    mqtt_state = "disabled" if not settings.mqtt.enabled else "unknown"
    if settings.mqtt.enabled and daemon["responding"] and state is not None:
        mqtt_state = state.mqtt
    unsent = store.outbox_depth()
    last_sync = store.meta("last_sync_ts_ms")
    return {
        "site": settings.site.id,
        "daemon": daemon,
        "mqtt": {
            "state": mqtt_state,
            "broker": f"{settings.mqtt.host}:{settings.mqtt.port}",
            "backlog_rows": sum(unsent.values()),
            "backlog_age_s": round((now - oldest) / 1000, 1) if oldest is not None else None,
        },
        "devices": [_device(device, store, now) for device in settings.devices],
        "buffer": {
            "path": str(store.path),
            "unsent": unsent,
            "main_bytes": _file_bytes(store.path),
            "wal_bytes": _file_bytes(store.path.with_name(store.path.name + "-wal")),
            "file_bytes": store.file_bytes(),
            "cap_bytes": int(settings.storage.max_size_mb * 1e6),
            "telemetry_dropped": store.counter("telemetry_dropped"),
        },
        "alerts_active": len(store.active_alerts()),
        "last_sync_ts_ms": int(last_sync) if last_sync else None,
    }


def duration(seconds: float) -> str:
    """A duration for a human: 0.8 s, 42 s, 9 min 5 s, 2 h 5 min, 3 d 4 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    for unit_s, name, sub_s, sub in ((86400, "d", 3600, "h"), (3600, "h", 60, "min")):
        if s >= unit_s:
            return f"{s // unit_s} {name} {s % unit_s // sub_s} {sub}"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def size(n_bytes: int) -> str:
    """Bytes in kB below a megabyte, else MB (SI, as storage.max_size_mb)."""
    if n_bytes < 1e6:
        return f"{n_bytes / 1e3:.0f} kB"
    return f"{n_bytes / 1e6:.1f} MB"


def _num(value: Any, fmt: str, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}{unit}"


def _daemon_line(d: dict[str, Any]) -> str:
    if d["running"] and d["responding"]:
        return f"daemon: running, pid {d['pid']}, up {duration(d['uptime_s'])}"
    if d["running"]:
        seen = d["last_seen_age_s"]
        since = f"its state last refreshed {duration(seen)} ago" if seen else "starting?"
        return f"daemon: pid {d['pid']} holds the store but is NOT RESPONDING ({since})"
    if d["pid"] is None:
        return "daemon: NOT RUNNING (values below are what it last stored)"
    return (
        f"daemon: NOT RUNNING (pid {d['pid']} last seen {duration(d['last_seen_age_s'])} ago; "
        "killed or crashed)"
    )


def _mqtt_line(m: dict[str, Any]) -> str:
    backlog = "nothing unsent"
    if m["backlog_rows"]:
        backlog = f"backlog {m['backlog_rows']:,} rows, oldest {duration(m['backlog_age_s'])} old"
    state = {
        "disabled": "disabled in the config",
        "connected": f"connected to {m['broker']}",
        "disconnected": f"DISCONNECTED from {m['broker']} (buffering)",
        "unknown": f"unknown (the daemon is not running; broker {m['broker']})",
    }[m["state"]]
    return f"mqtt: {state}, {backlog}"


def _device_lines(d: dict[str, Any]) -> list[str]:
    poll_age = d["last_poll_age_s"]
    if not d["enabled"]:
        head = f"  {d['id']} ({d['driver']}): disabled in the config"
    elif poll_age is None:
        head = f"  {d['id']} ({d['driver']}): never polled"
    elif d["stale"]:
        head = (
            f"  {d['id']} ({d['driver']}): STALE, last poll {duration(poll_age)} ago "
            f"(due every {d['poll_interval_s']:g} s; comms was {d['comms']})"
        )
    else:
        head = f"  {d['id']} ({d['driver']}): {d['comms']}, last poll {duration(poll_age)} ago"
    head += f", {d['readings']:,} readings"
    lines = [head]
    if d.get("identity"):
        lines.append("    device: " + ", ".join(f"{k} {v}" for k, v in d["identity"].items()))
    if d.get("pack_voltage_v") is not None or d.get("cells"):
        lines.append(
            f"    pack {_num(d.get('pack_voltage_v'), '.2f', ' V')}  "
            f"{_num(d.get('pack_current_a'), '+.1f', ' A')}  "
            f"BMS SOC {_num(d.get('bms_soc_pct'), '.1f', ' %')}  "
            f"cells {d.get('cells', 0)}: {_num(d.get('cell_voltage_min_v'), '.3f', '')}"
            f"–{_num(d.get('cell_voltage_max_v'), '.3f', ' V')}  "
            f"temp max {_num(d.get('cell_temperature_max_c'), '.1f', ' °C')}"
        )
    diagnosis = d.get("diagnosis") or {}
    shown = [
        f"{label} {_num(value * factor, fmt, unit)}"
        for key, label, factor, fmt, unit in DIAGNOSIS_FIELDS
        if isinstance(value := diagnosis.get(key), int | float) and math.isfinite(value)
    ]
    sigma = diagnosis.get("soc_uncertainty_pct")
    if shown and shown[0].startswith("SOC") and isinstance(sigma, int | float):
        shown[0] = shown[0].removesuffix(" %") + f" ± {sigma:.1f} %"
    if diagnosis.get("thermal_risk"):
        shown.append(f"thermal risk {diagnosis['thermal_risk']}")
    if diagnosis.get("ocv_source"):
        residual = diagnosis.get("ocv_fit_residual_v")
        fit = (
            f" (rests fit to {residual * 1000:.1f} mV)"
            if isinstance(residual, int | float) and math.isfinite(residual)
            else ""
        )
        shown.append(f"OCV {diagnosis['ocv_source']}{fit}")
    if shown:
        lines.append("    diagnosis: " + ", ".join(shown))
    if d["last_error"] and d["comms"] != "ok":
        lines.append(f"    last error: {d['last_error']}")
    return lines


def render(status: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    lines = [f"site {status['site']}", _daemon_line(status["daemon"]), _mqtt_line(status["mqtt"])]
    for d in status["devices"]:
        lines += _device_lines(d)
    b = status["buffer"]
    unsent = ", ".join(f"{k} {v:,}" for k, v in sorted(b["unsent"].items())) or "none"
    lines.append(
        f"buffer {b['path']}: main {size(b['main_bytes'])} + WAL {size(b['wal_bytes'])} "
        f"(cap {size(b['cap_bytes'])}); unsent: {unsent}; "
        f"telemetry dropped: {b['telemetry_dropped']:,}"
    )
    lines.append(f"active alerts: {status['alerts_active']}")
    sync = status["last_sync_ts_ms"]
    lines.append(
        "last sync: never"
        if sync is None
        else f"last sync: {duration((now_ms() - sync) / 1000)} ago"
    )
    return "\n".join(lines)
