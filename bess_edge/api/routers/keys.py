"""API keys (admin): list, create (the key is in the answer, once), revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Security, status
from pydantic import BaseModel, ValidationError

from bess_edge.api import auth
from bess_edge.api.routers._deps import keys
from bess_edge.storage.keys import ApiKeyInfo, KeyRefused, KeyStore, Role

router = APIRouter(prefix="/api/v1", tags=["keys"])
Keys = Annotated[KeyStore, Depends(keys)]


class NewKey(BaseModel):
    name: str
    role: Role = "viewer"


class CreatedKey(BaseModel):
    name: str
    role: Role
    key: str  # shown only in this answer


@router.get("/me", response_model=auth.Principal, tags=["keys"])
def me(who: Annotated[auth.Principal, Security(auth.viewer)]) -> auth.Principal:
    """Who this key is: the dashboard's login check."""
    return who


@router.get("/keys", response_model=list[ApiKeyInfo], dependencies=[Security(auth.admin)])
def list_keys(store: Keys) -> list[ApiKeyInfo]:
    return store.list()


@router.post("/keys", response_model=CreatedKey, status_code=status.HTTP_201_CREATED,
             dependencies=[Security(auth.admin)])  # fmt: skip
def create_key(body: NewKey, store: Keys) -> CreatedKey:
    try:
        key = store.create(body.name, body.role)
    except KeyRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ValidationError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "name: 1 to 64 letters, digits, '_', '.', '@' or '-'",
        ) from None
    return CreatedKey(name=body.name, role=body.role, key=key)


@router.delete("/keys/{name}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[Security(auth.admin)])  # fmt: skip
def revoke_key(name: str, store: Keys) -> None:
    try:
        store.revoke(name)
    except KeyRefused as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
