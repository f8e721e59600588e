"""The ingest's Prometheus metrics, in a registry of its own (as the gateway's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "bess_ingest_messages", "MQTT data messages committed (acknowledged)", registry=REGISTRY
)
ROWS = Counter("bess_ingest_rows", "New rows written, per stream", ["stream"], registry=REGISTRY)
DUPLICATES = Counter(
    "bess_ingest_duplicate_items", "Items already in the database (redelivery, republish)",
    registry=REGISTRY,
)  # fmt: skip
DEAD_LETTERS = Counter(
    "bess_ingest_dead_letters", "Messages or items refused into dead_letter", registry=REGISTRY
)
DB_ERRORS = Counter(
    "bess_ingest_database_errors", "Batches that failed and were retried", registry=REGISTRY
)
REPUBLISH_REQUESTS = Counter(
    "bess_ingest_republish_requests", "cmd/republish requests sent", registry=REGISTRY
)
GAP_SEQS = Gauge(
    "bess_ingest_gap_seqs_open", "Seqs missing in the database (the gaps view), as of the last "
    "repair round of the worker that runs it; -1 on the others", registry=REGISTRY,
)  # fmt: skip
OLDEST_GAP_AGE = Gauge(
    "bess_ingest_oldest_gap_age_seconds", "Age of the oldest open gap (0: none)", registry=REGISTRY
)
