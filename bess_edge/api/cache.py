"""A short-lived cache of answers that many dashboards ask for at once.

Ten dashboards on the same device page refresh a 24 h trend every 2 s; the page aligns its
window to the bucket size, so they all ask the same query. One request computes it, the others
wait for it and share the answer for ``ttl_s`` (live within the page's own 2 s). The daemon's
poll then competes with one trend query per refresh, not one per client.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class SharedAnswers:
    def __init__(self, ttl_s: float = 1.0, max_entries: int = 256) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._answers: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._computing: dict[Hashable, threading.Event] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                hit = self._answers.get(key)
                if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
                    return hit[1]
                running = self._computing.get(key)
                if running is None:
                    done = self._computing[key] = threading.Event()
                    break
            running.wait()  # another request computes this very answer: share it
        try:
            value = compute()
            with self._lock:
                self._answers[key] = (time.monotonic(), value)
                self._answers.move_to_end(key)
                while len(self._answers) > self.max_entries:
                    self._answers.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._computing[key]
            done.set()
