"""Alerts: active and history with filters, and acknowledgement through the daemon."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Security, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bess_edge.api import auth
from bess_edge.api.routers._deps import storage
from bess_edge.storage.base import Storage
from bess_edge.storage.models import AckRequest, Alert, AlertQuery, Event

router = APIRouter(prefix="/api/v1", tags=["alerts"])
Store = Annotated[Storage, Depends(storage)]
# How long an ack waits for the daemon (it drains requests every second) before answering 202.
ACK_WAIT_S = 5.0


@router.get("/alerts", response_model=list[Alert], dependencies=[Security(auth.viewer)])
def alerts(
    store: Store,
    state: Literal["active", "cleared"] | None = None,
    device: str | None = None,
    rule: str | None = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[Alert]:
    query = AlertQuery(state=state, device=device, rule=rule, severity=severity,
                       since_ms=since_ms, until_ms=until_ms, limit=limit)  # fmt: skip
    return store.alerts(query)


@router.get("/alerts/{alert_id}", response_model=Alert, dependencies=[Security(auth.viewer)])
def alert(alert_id: int, store: Store) -> Alert:
    found = store.alert(alert_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
    return found


class AckBody(BaseModel):
    note: str | None = Field(None, max_length=500)


class AckResult(BaseModel):
    request: AckRequest
    alert: Alert | None


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AckResult,
    responses={202: {"description": "queued; the daemon has not applied it yet"}},
)
def ack(
    alert_id: int,
    store: Store,
    who: Annotated[auth.Principal, Security(auth.operator)],
    body: AckBody | None = None,
) -> AckResult | JSONResponse:
    """Queued for the daemon like `bess-edge ack`; the actor is ``api:<key name>``."""
    found = store.alert(alert_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
    if found.state != "active":
        raise HTTPException(status.HTTP_409_CONFLICT, f"alert {alert_id} is already cleared")
    if found.acked_ts_ms is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"alert {alert_id} is already acknowledged by {found.acked_by}",
        )
    request_id = store.request_ack(alert_id, f"api:{who.name}", body.note if body else None)
    deadline = time.monotonic() + ACK_WAIT_S
    while True:
        request = store.ack_request(request_id)
        assert request is not None
        if request.done_ts_ms is not None:
            if request.result != "acknowledged":
                raise HTTPException(status.HTTP_409_CONFLICT, f"alert {alert_id}: {request.result}")
            return AckResult(request=request, alert=store.alert(alert_id))
        if time.monotonic() > deadline:
            result = AckResult(request=request, alert=found)
            return JSONResponse(result.model_dump(), status_code=status.HTTP_202_ACCEPTED)
        time.sleep(0.1)


@router.get("/events", response_model=list[Event], dependencies=[Security(auth.viewer)])
def events(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    device: str | None = None,
) -> list[Event]:
    """The daemon's recent events, newest first (alert transitions it committed)."""
    return store.events(limit, device)
