"""Acknowledgements requested by another process (``bess-edge ack``), applied by the daemon.

The daemon owns the alert state and the per-stream sequence numbers in memory, so the CLI never
writes alert rows: it queues a ``pending_acks`` row, and the daemon drains the queue every
second through its store worker. A request and its outcome are committed in the same
transaction as the ``acknowledged`` transition, so a crash can neither lose nor repeat one.
"""

from __future__ import annotations

from typing import Any

from bess_edge.alerts.engine import AckError, AlertEngine
from bess_edge.store import Cycle

ACK_POLL_INTERVAL_S = 1.0
ACKNOWLEDGED = "acknowledged"


def apply_ack_requests(engine: AlertEngine, requests: list[dict[str, Any]], ts_ms: int) -> Cycle:
    """The cycle to commit for ``requests`` (rows of ``pending_acks``): transitions + outcomes."""
    cycle = Cycle()
    for request in requests:
        try:
            cycle.alerts += engine.acknowledge(
                request["alert_id"], request["actor"], request["note"], ts_ms
            )
            result = ACKNOWLEDGED
        except KeyError:
            result = f"refused: no alert {request['alert_id']}"
        except AckError as exc:
            result = f"refused: {exc}"
        cycle.acks_done.append((request["id"], result))
    return cycle
