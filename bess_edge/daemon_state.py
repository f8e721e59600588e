"""The running daemon's own facts for ``bess-edge status``: pid, start time, MQTT link.

``status`` is another process reading the SQLite file, which says what was polled but not
whether anyone is still polling, nor whether the broker is connected right now.

Whether a daemon runs is the store lock (:mod:`bess_edge.storelock`): the kernel holds it
exactly as long as the daemon lives, and ``/proc/locks`` names its holder without touching it
(taking even a shared lock to test it could make a daemon starting at that instant refuse to
start). The rest comes from a small JSON file the daemon rewrites every few seconds (atomically,
by rename) and removes on a clean stop: a holder whose file stopped being refreshed is hung.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bess_edge.model import now_ms
from bess_edge.storelock import lock_path

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


def fresh(state: DaemonState) -> bool:
    """The daemon refreshed its state recently: its loop is turning."""
    return now_ms() - state.updated_ts_ms <= FRESH_FOR_S * 1000


def lock_holder(db_path: Path) -> int | None:
    """The pid holding the store's lock, from /proc/locks; None when nobody holds it.

    Without /proc (not Linux), the pid in the lock file if that process is alive."""
    path = lock_path(db_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        with contextlib.suppress(ValueError, OSError):
            pid = int(path.read_text().strip())
            return pid if pid_alive(pid) else None
        return None
    for line in locks.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4711 fe:00:2154632 0 EOF"; a waiter's line has "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            return int(fields[4])
    return None
