"""/health (no key: load balancers and systemd checks) and /metrics (Prometheus, viewer key)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, Security
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from bess_edge import __version__
from bess_edge.api import auth
from bess_edge.api.routers._deps import storage
from bess_edge.storage.base import Storage
from bess_edge.storage.models import StorageHealth

router = APIRouter(tags=["system"])
# Data older than this means the daemon is not writing: /health says "stale".
STALE_AFTER_S = 120.0


class Health(BaseModel):
    status: str  # ok | stale (no sample for STALE_AFTER_S) | empty (no sample yet)
    version: str
    newest_sample_age_s: float | None
    storage: StorageHealth


@router.get("/health", response_model=Health)
def health(store: Annotated[Storage, Depends(storage)]) -> Health:
    info = store.health()
    age = None
    if info.newest_sample_ts_ms is not None:
        age = max(0.0, time.time() - info.newest_sample_ts_ms / 1000)
    state = "empty" if age is None else "stale" if age > STALE_AFTER_S else "ok"
    return Health(status=state, version=__version__, newest_sample_age_s=age, storage=info)


@router.get("/metrics", dependencies=[Security(auth.viewer)], response_class=Response)
def metrics(request: Request, store: Annotated[Storage, Depends(storage)]) -> Response:
    request.app.state.metrics.observe_storage(store.health())
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)  # fmt: skip
