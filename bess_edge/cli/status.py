"""``bess-edge status``: what the daemon has seen, read from its SQLite file (daemon may run)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from bess_edge.cli._common import EXIT_OK, add_config_argument, load_or_exit, open_store_readonly
from bess_edge.config import Settings
from bess_edge.model import now_ms
from bess_edge.store import Store

# Diagnosis fields shown when present, with their label and unit.
DIAGNOSIS_FIELDS = (
    ("soc_pct", "SOC", "%"),
    ("soh_pct", "SOH", "%"),
    ("r0_ohm", "R0", "Ω"),
    ("equivalent_full_cycles", "cycles", ""),
    ("thermal_risk", "thermal risk", ""),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show each device's last reading, comms state and the buffer",
        description="Per device: last reading time, pack voltage/current/SOC, cell min/max, "
        "comms state, diagnostics; then the local buffer (unsent rows, file size, dropped "
        "telemetry) and the last sync. Reads the daemon's SQLite file, read-only.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def collect(settings: Settings, store: Store) -> dict[str, Any]:
    """The status as plain data (what --json prints)."""
    now = now_ms()
    devices = []
    for device in settings.devices:
        sample = store.latest_sample(device.id)
        state = store.device_status(device.id)
        entry: dict[str, Any] = {
            "id": device.id,
            "driver": device.driver,
            "enabled": device.enabled,
            "comms": state.comms if state else "unknown",
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
        devices.append(entry)
    last_sync = store.meta("last_sync_ts_ms")
    return {
        "site": settings.site.id,
        "devices": devices,
        "buffer": {
            "path": str(store.path),
            "unsent": store.outbox_depth(),
            "file_bytes": store.file_bytes(),
            "telemetry_dropped": store.counter("telemetry_dropped"),
        },
        "alerts_active": len(store.active_alerts()),
        "last_sync_ts_ms": int(last_sync) if last_sync else None,
    }


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    store = open_store_readonly(settings)
    status = collect(settings, store)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return EXIT_OK


def _num(value: Any, fmt: str, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}{unit}"


def render(status: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    lines = [f"site {status['site']}"]
    for d in status["devices"]:
        age = d["last_reading_age_s"]
        head = f"  {d['id']} ({d['driver']}): {d['comms']}, {d['readings']} readings"
        head += f", last {age:.1f} s ago" if age is not None else ", no reading yet"
        lines.append(head)
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
            f"{label} {value:.4g}{unit}" if isinstance(value, float) else f"{label} {value}"
            for key, label, unit in DIAGNOSIS_FIELDS
            if (value := diagnosis.get(key)) is not None
        ]
        if shown:
            lines.append("    diagnosis: " + ", ".join(shown))
        if d["last_error"] and d["comms"] != "ok":
            lines.append(f"    last error: {d['last_error']}")
    b = status["buffer"]
    unsent = ", ".join(f"{k} {v}" for k, v in sorted(b["unsent"].items())) or "none"
    lines.append(
        f"buffer {b['path']}: {b['file_bytes'] / 1e6:.1f} MB, unsent: {unsent}, "
        f"telemetry dropped: {b['telemetry_dropped']}"
    )
    lines.append(f"active alerts: {status['alerts_active']}")
    sync = status["last_sync_ts_ms"]
    lines.append(
        "last sync: never" if sync is None else f"last sync: {(now_ms() - sync) / 1000:.0f} s ago"
    )
    return "\n".join(lines)
