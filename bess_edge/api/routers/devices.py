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


def _series(
    answers: SharedAnswers, store: Storage, device: str, stream: Stream,
    since_ms: int | None, until_ms: int | None, max_points: int, fields: str | None,
) -> Series:  # fmt: skip
    until = until_ms if until_ms is not None else int(time.time() * 1000) + 1
    since = since_ms if since_ms is not None else until - 3_600_000
    if since >= until:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"since_ms ({since}) must be before until_ms ({until})",
        )
    known = READING_FIELDS if stream == "readings" else DIAGNOSIS_FIELDS
    names = [f for f in (fields or "").split(",") if f] or None
    unknown = [f for f in names or [] if f not in known]
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}",
        )
    key = (device, stream, since, until, max_points, tuple(names or ()))
    series = answers.get(key, lambda: store.series(device, stream, since, until, max_points, names))
    if series is None:
        raise _unknown(device)
    return series


SinceQ = Annotated[int | None, Query(description="start, ms since epoch (default: 1 h ago)")]
UntilQ = Annotated[int | None, Query(description="end, exclusive (default: now)")]
PointsQ = Annotated[int, Query(ge=1, le=MAX_POINTS_LIMIT, description="at most this many buckets")]
FieldsQ = Annotated[str | None, Query(description="comma-separated subset of the fields")]


@router.get("/{device}/readings", response_model=Series, summary="pack trends, downsampled")
def readings(
    device: str, store: Store, request: Request, since_ms: SinceQ = None, until_ms: UntilQ = None,
    max_points: PointsQ = 1000, fields: FieldsQ = None,
) -> Series:  # fmt: skip
    return _series(
        request.app.state.answers, store, device, "readings", since_ms, until_ms, max_points, fields
    )


@router.get("/{device}/diagnoses", response_model=Series, summary="estimates, downsampled")
def diagnoses(
    device: str, store: Store, request: Request, since_ms: SinceQ = None, until_ms: UntilQ = None,
    max_points: PointsQ = 1000, fields: FieldsQ = None,
) -> Series:  # fmt: skip
    return _series(
        request.app.state.answers,
        store,
        device,
        "diagnoses",
        since_ms,
        until_ms,
        max_points,
        fields,
    )


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
