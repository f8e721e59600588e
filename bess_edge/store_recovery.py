"""Opening the store at start: a corrupt SQLite file is moved aside, not a crash loop.

A file SQLite cannot read (``file is not a database``, ``database disk image is malformed``)
would otherwise stop the daemon at every start, and systemd would restart it forever while no
data is collected. Its data cannot be trusted nor sent, so it is kept for a human (renamed with
a UTC timestamp, its WAL with it), a fresh store is started and the daemon raises the
``store_corrupt`` alert. Corruption found later, while running, is reported by /health instead
(see :func:`is_corrupt` and ``Daemon.store_error``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from bess_edge.config import StorageConfig
from bess_edge.store import Store

log = logging.getLogger(__name__)

CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
# Small tables read at start (alert state, device state, estimator state, counters): reading
# them whole finds a damaged page there now, not as an exception in the middle of start-up.
# The large ones (samples, outbox) are not scanned: a damaged page there shows at a commit.
START_TABLES = (
    "meta", "counters", "seqs", "alerts", "device_state", "estimator_state", "pending_acks",
)  # fmt: skip


def is_corrupt(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in CORRUPT_CODES:
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def open_store(cfg: StorageConfig) -> tuple[Store, Path | None]:
    """The store, and where a corrupt file was moved (None when the file was sound)."""
    try:
        return _open_and_read(cfg), None
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        error = str(exc)
    moved_to = _move_aside(cfg.path)
    log.error(
        "store file is corrupt (%s): moved aside to %s, starting a fresh store; its unsent data "
        "is not published",
        error,
        moved_to,
        extra={"path": str(cfg.path), "moved_to": str(moved_to), "error": error},
    )
    return _open_and_read(cfg), moved_to


def _open_and_read(cfg: StorageConfig) -> Store:
    store = Store(
        cfg.path,
        max_size_mb=cfg.max_size_mb,
        retention_days=cfg.retention_days,
        synchronous=cfg.synchronous,
    )
    try:
        for table in START_TABLES:
            store.conn.execute(f"SELECT * FROM {table}").fetchall()
    except BaseException:
        store.close()
        raise
    return store


def _move_aside(path: Path) -> Path:
    """Rename the file and its WAL with one UTC timestamp suffix; drop the shared-memory index."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(target)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        wal.rename(target.with_name(target.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    return target
