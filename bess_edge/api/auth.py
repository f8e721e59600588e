"""One dependency authenticates a request and yields who it is: ``Security(require("operator"))``.

401 means no key or an unknown/revoked one, 403 a valid key whose role is too low. The key
itself is never logged nor echoed in a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from bess_edge.storage.keys import ROLE_RANK, Role

_bearer = HTTPBearer(auto_error=False, description="an API key from `bess-edge api-key create`")


class Principal(BaseModel):
    """Who is calling: the key's name (recorded as the actor of an ack) and its role."""

    name: str
    role: Role


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    info = request.app.state.keys.verify(credentials.credentials)
    if info is None:
        raise _unauthorized("unknown or revoked API key")
    return Principal(name=info.name, role=info.role)


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency letting through keys of ``role`` or above."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if ROLE_RANK[who.role] < ROLE_RANK[role]:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {role} role; key {who.name!r} is a {who.role}",
            )
        return who

    return check


viewer = require("viewer")
operator = require("operator")
admin = require("admin")
