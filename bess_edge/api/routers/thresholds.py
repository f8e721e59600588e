"""Threshold rules: list (viewer); create, update, delete (operator) through the rule file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Security, status
from pydantic import BaseModel

from bess_edge.api import auth
from bess_edge.api.routers._deps import thresholds
from bess_edge.api.thresholds_file import RuleRefused, RuleView, ThresholdsFile

router = APIRouter(prefix="/api/v1/thresholds", tags=["thresholds"])
Rules = Annotated[ThresholdsFile, Depends(thresholds)]
RuleBody = Annotated[
    Any,
    Body(
        description="one [[thresholds]] rule as in the config file (docs/alerts.md)",
        examples=[{"name": "pack-hot", "metric": "cell_temperature_c", "above": 45.0}],
    ),
]
_STATUS = {"invalid": 422, "conflict": 409, "missing": 404}


class RuleChange(BaseModel):
    rule: dict[str, Any] | None
    reload: str  # what happened to the running daemon


def _refused(exc: RuleRefused) -> HTTPException:
    return HTTPException(_STATUS[exc.kind], exc.lines)


@router.get("", response_model=list[RuleView], dependencies=[Security(auth.viewer)])
def list_rules(rules: Rules) -> list[RuleView]:
    return rules.rules()


@router.post("", response_model=RuleChange, status_code=status.HTTP_201_CREATED,
             dependencies=[Security(auth.operator)])  # fmt: skip
def create_rule(rules: Rules, body: RuleBody) -> RuleChange:
    try:
        rule, reload = rules.create(body)
    except RuleRefused as exc:
        raise _refused(exc) from None
    return RuleChange(rule=rule.model_dump(exclude_none=True), reload=reload)


@router.put("/{name}", response_model=RuleChange, dependencies=[Security(auth.operator)])
def update_rule(name: str, rules: Rules, body: RuleBody) -> RuleChange:
    try:
        rule, reload = rules.update(name, body)
    except RuleRefused as exc:
        raise _refused(exc) from None
    return RuleChange(rule=rule.model_dump(exclude_none=True), reload=reload)


@router.delete("/{name}", response_model=RuleChange, dependencies=[Security(auth.operator)])
def delete_rule(name: str, rules: Rules) -> RuleChange:
    try:
        reload = rules.delete(name)
    except RuleRefused as exc:
        raise _refused(exc) from None
    return RuleChange(rule=None, reload=reload)
