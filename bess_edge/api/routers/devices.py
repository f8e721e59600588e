"""Devices, their downsampled trends and their cells."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security, status

from bess_edge.api import auth
from bess_edge.api.cache import SharedAnswers
from bess_edge.api.routers._deps import storage
from bess_edge.storage.base import Storage
from bess_edge.storage.models import (
    DIAGNOSIS_FIELDS,
    READING_FIELDS,
    CellSnapshot,
    DeviceOverview,
    Series,
    Stream,
)

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], dependencies=[Security(auth.viewer)])
MAX_POINTS_LIMIT = 10_000
Store = Annotated[Storage, Depends(storage)]


def _unknown(device: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"unknown device {device!r}")


@router.get("", response_model=list[DeviceOverview], summary="every device at a glance")
def devices(store: Store) -> list[DeviceOverview]:
    return store.devices()


@router.get("/{device}", response_model=DeviceOverview)
def device(device: str, store: Store) -> DeviceOverview:
    found = store.device(device)
    if found is None:
        raise _unknown(device)
    return found


SinceQ = Annotated[int | None, Query(description="start, ms since epoch (default: 1 h ago)")]
UntilQ = Annotated[int | None, Query(description="end, exclusive (default: now)")]
PointsQ = Annotated[int, Query(ge=1, le=MAX_POINTS_LIMIT, description="at most this many buckets")]
FieldsQ = Annotated[str | None, Query(description="comma-separated subset of the fields")]


def _add_series_route(stream: Stream, known: tuple[str, ...], summary: str) -> None:
    """GET /{device}/{stream}: one stream's trend, downsampled; the same query for both."""

    @router.get(f"/{{device}}/{stream}", response_model=Series, summary=summary, name=stream)
    def series(
        device: str, store: Store, request: Request, since_ms: SinceQ = None,
        until_ms: UntilQ = None, max_points: PointsQ = 1000, fields: FieldsQ = None,
    ) -> Series:  # fmt: skip
        until = until_ms if until_ms is not None else int(time.time() * 1000) + 1
        since = since_ms if since_ms is not None else until - 3_600_000
        if since >= until:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"since_ms ({since}) must be before until_ms ({until})",
            )
        names = [f for f in (fields or "").split(",") if f] or None
        unknown = [f for f in names or [] if f not in known]
        if unknown:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}",
            )
        key = (device, stream, since, until, max_points, tuple(names or ()))
        answers: SharedAnswers = request.app.state.answers
        found = answers.get(
            key, lambda: store.series(device, stream, since, until, max_points, names)
        )
        if found is None:
            raise _unknown(device)
        return found


_add_series_route("readings", READING_FIELDS, "pack trends, downsampled")
_add_series_route("diagnoses", DIAGNOSIS_FIELDS, "estimates, downsampled")


@router.get("/{device}/cells", response_model=CellSnapshot, summary="cell arrays at a time")
def cells(
    device: str, store: Store,
    at_ms: Annotated[int | None, Query(description="the poll at or before (default: last)")] = None,
) -> CellSnapshot:  # fmt: skip
    if store.device(device) is None:
        raise _unknown(device)
    snapshot = store.cells(device, at_ms)
    if snapshot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no reading of {device!r} at that time")
    return snapshot
