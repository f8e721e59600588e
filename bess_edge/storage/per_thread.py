"""One connection per thread, all closed together.

The API answers from uvicorn's pool of threads, and neither a sqlite3 nor a psycopg connection
may serve two threads at once; opening one per request would cost more than the query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    """``get()`` gives this thread its own ``open_one()``, made on first use (and again when
    ``usable`` says the old one is gone); ``close()`` closes every thread's."""

    def __init__(
        self,
        open_one: Callable[[], T],
        close_one: Callable[[T], None],
        usable: Callable[[T], bool] = lambda _: True,
    ) -> None:
        self._open, self._close, self._usable = open_one, close_one, usable
        self._local = threading.local()
        self._all: list[T] = []
        self._lock = threading.Lock()

    def get(self) -> T:
        item: T | None = getattr(self._local, "item", None)
        if item is None or not self._usable(item):
            item = self._local.item = self._open()
            with self._lock:
                self._all.append(item)
        return item

    def close(self) -> None:
        with self._lock:
            for item in self._all:
                self._close(item)
            self._all.clear()
        self._local = threading.local()
