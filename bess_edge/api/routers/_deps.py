"""What routers get from the app: its storage backend, key store and rule file."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from bess_edge.api.thresholds_file import ThresholdsFile
from bess_edge.storage.base import Storage
from bess_edge.storage.keys import KeyStore


def storage(request: Request) -> Storage:
    return request.app.state.storage  # type: ignore[no-any-return]


def keys(request: Request) -> KeyStore:
    return request.app.state.keys  # type: ignore[no-any-return]


def thresholds(request: Request) -> ThresholdsFile:
    rules: ThresholdsFile | None = request.app.state.thresholds
    if rules is None:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED, "threshold rules are not managed by this server"
        )
    return rules
