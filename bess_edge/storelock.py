"""One daemon per store: an exclusive ``flock`` on a file beside the SQLite file.

Two daemons on one store both write (``UNIQUE constraint failed`` every second, lost cycles) and
knock each other off the broker with the same client id. The lock is taken before the store is
opened, so a second daemon touches nothing (no migration, no corrupt-file recovery), and it is
held for the life of the process: the kernel drops it when the process dies, ``kill -9``
included, so a file left behind never blocks a start. The holder's pid is written in the file
for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StoreLocked(Exception):
    """Another process holds the store's lock."""


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


class StoreLock:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLocked` naming the pid that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"{self.db_path} is in use by another bess-edge daemon (pid {holder}, lock "
                f"{self.path}): stop that one first, or give this one another storage.path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
