"""POST /api/v1/diagnose/{kind}: the Diagnostician over a posted series (JSON or CSV)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Security, status
from pydantic import ValidationError

from bess_edge.api import auth
from bess_edge.api.diagnose import DiagnoseInput, DiagnoseResult, Kind, run, samples_from_csv

router = APIRouter(prefix="/api/v1/diagnose", tags=["diagnose"])


@router.post(
    "/{kind}",
    response_model=DiagnoseResult,
    dependencies=[Security(auth.viewer)],
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": DiagnoseInput.model_json_schema()},
                "text/csv": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def diagnose(
    kind: Kind,
    request: Request,
    chemistry: Annotated[str, Query(description="CSV only: the cells' chemistry")] = "lfp",
    capacity_ah: Annotated[float | None, Query(gt=0, description="CSV only: rated Ah")] = None,
) -> DiagnoseResult:
    """JSON: a DiagnoseInput. CSV (Content-Type text/csv): the columns of `bess-edge export`,
    with chemistry and capacity_ah as query parameters."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    try:
        if content_type == "text/csv":
            if capacity_ah is None:
                raise _bad("capacity_ah: required as a query parameter with a CSV body")
            body = {"chemistry": chemistry, "capacity_ah": capacity_ah,
                    "samples": samples_from_csv(raw.decode("utf-8"))}  # fmt: skip
        elif content_type in ("application/json", ""):
            body = json.loads(raw)
        else:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"send application/json or text/csv, not {content_type!r}",
            )
        data = DiagnoseInput.model_validate(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"body is not valid JSON/UTF-8: {exc}") from None
    except ValidationError as exc:
        raise _bad(
            [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:20]]
        ) from None
    except ValueError as exc:  # CSV rows
        raise _bad(str(exc)) from None
    from starlette.concurrency import run_in_threadpool  # the estimators are CPU work

    return await run_in_threadpool(run, kind, data)


def _bad(detail: str | list[str]) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
