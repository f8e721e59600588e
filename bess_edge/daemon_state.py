"""The running daemon's own facts for ``bess-edge status``: pid, start time, MQTT link.

``status`` is another process reading the SQLite file, which says what was polled but not
whether anyone is still polling, nor whether the broker is connected right now. The daemon
rewrites a small JSON file next to the database every few seconds (atomically, by rename), and
removes it on a clean stop; a file that stopped being refreshed, or whose pid is gone, means
the daemon is not running (killed, crashed, power cut).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bess_edge.model import now_ms

REFRESH_S = 5.0
# Three refreshes missed: the daemon is gone or hung (its own watchdog restarts it then).
FRESH_FOR_S = 3 * REFRESH_S


@dataclass(slots=True)
class DaemonState:
    pid: int
    started_ts_ms: int
    updated_ts_ms: int
    mqtt: str  # "disabled" | "connected" | "disconnected"
    mqtt_broker: str  # host:port, for the operator who wonders where it should connect


def state_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".state.json")


def write_state(db_path: Path, state: DaemonState) -> None:
    path = state_path(db_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(path)


def remove_state(db_path: Path) -> None:
    state_path(db_path).unlink(missing_ok=True)


def read_state(db_path: Path) -> DaemonState | None:
    """The last state the daemon wrote, or None when there is none (or it is unreadable)."""
    try:
        return DaemonState(**json.loads(state_path(db_path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by the service user
        return True
    return True


def running(state: DaemonState | None) -> bool:
    """The daemon that wrote ``state`` is alive and still refreshing it."""
    if state is None:
        return False
    fresh = now_ms() - state.updated_ts_ms <= FRESH_FOR_S * 1000
    with contextlib.suppress(OverflowError):
        return fresh and pid_alive(state.pid)
    return False
