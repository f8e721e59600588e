"""The storage interface the API talks to: one Protocol, two backends.

The gateway answers from the daemon's SQLite file (:class:`bess_edge.storage.sqlite.SqliteStorage`);
the cloud answers the same questions from PostgreSQL, filled by ``bess-edge ingest``. Routers
only call these methods and never write SQL; backends never know HTTP (STYLE.md, httpx's
transport). A backend is used from several threads at once (the API's worker pool): it keeps
one connection per thread or a pool.

Contract every backend keeps (tests/test_storage.py runs it against a real daemon's file):

- Times are integer ms since the Unix epoch (UTC); ranges are ``since_ms`` inclusive,
  ``until_ms`` exclusive. Units are SI, in the field names; current > 0 charges.
- An unknown device is ``None`` (the API turns it into 404), never an empty answer.
- :meth:`Storage.series` is downsampled **in the database**: the range is cut into
  ``bucket_ms = ceil((until_ms - since_ms) / max_points)`` buckets counted from ``since_ms``;
  each non-empty bucket gives its row count and min / max / mean of each field (NULLs and
  non-finite values ignored; values exact to 15 significant digits at least). A year of a
  1,000-cell rack must stay one fast request, so a backend never ships raw rows to Python to
  bucket them. For ``stream="diagnoses"`` (large JSON
  documents, slowly moving estimates) a backend may aggregate an evenly strided subset of at
  least 4 rows per bucket; ``count`` is then the rows it read.
- Writes are only those the CLI makes too (DESIGN invariant 6): :meth:`request_ack` queues an
  acknowledgement for the daemon that owns alert state; it never touches alert rows.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bess_edge.storage.models import (
    AckRequest,
    Alert,
    AlertQuery,
    CellSnapshot,
    DeviceOverview,
    Event,
    Series,
    StorageHealth,
    Stream,
)


@runtime_checkable
class Storage(Protocol):
    """What the API reads (and the one request it queues). See the module docstring."""

    def devices(self) -> list[DeviceOverview]:
        """Every device that has a poll state or data, sorted by name."""
        ...

    def device(self, device: str) -> DeviceOverview | None:
        """One device, or None when the store has never heard of it."""
        ...

    def series(
        self,
        device: str,
        stream: Stream,
        since_ms: int,
        until_ms: int,
        max_points: int,
        fields: list[str] | None = None,
    ) -> Series | None:
        """Readings (``models.READING_FIELDS``) or diagnoses (``models.DIAGNOSIS_FIELDS``)
        downsampled to at most ``max_points`` buckets; ``fields`` picks a subset (callers
        validate the names); None for an unknown device. Requires since_ms < until_ms and
        max_points >= 1 (the API checks both)."""
        ...

    def cells(self, device: str, at_ms: int | None = None) -> CellSnapshot | None:
        """Cell arrays of the last poll at or before ``at_ms`` (None: the latest), with the
        weak and anomalous cells of the diagnosis of that poll; None if there is none."""
        ...

    def alerts(self, query: AlertQuery) -> list[Alert]:
        """Alert episodes matching ``query``, newest first, each with its transitions."""
        ...

    def alert(self, alert_id: int) -> Alert | None: ...

    def events(self, limit: int = 100, device: str | None = None) -> list[Event]:
        """The daemon's recent events, newest first."""
        ...

    def request_ack(self, alert_id: int, actor: str, note: str | None) -> int:
        """Queue an acknowledgement for the daemon; returns the request id."""
        ...

    def ack_request(self, request_id: int) -> AckRequest | None:
        """A queued acknowledgement and, once the daemon applied it, its result."""
        ...

    def health(self) -> StorageHealth: ...

    def close(self) -> None: ...
