"""The fleet API: the gateway's own API app once per site, under ``/sites/<site>/``, plus the
list of sites. No second copy of any route: each site is ``create_app`` over a
:class:`PostgresStorage`, all sharing the keys of the ``users`` table.

Sites registered after start appear after a restart (the mounts are made once).
"""

from __future__ import annotations

from fastapi import FastAPI, Security
from fastapi.responses import FileResponse

from bess_edge.api import auth
from bess_edge.api.app import STATIC_DIR, create_app
from bess_edge.cloud.keys import PgKeyStore
from bess_edge.cloud.storage import Fleet, SiteOverview


def fleet_app(
    database_url: str, *, cors_origins: list[str] | None = None, max_body_bytes: int = 1 << 20
) -> FastAPI:
    fleet = Fleet(database_url)
    keys = PgKeyStore(database_url)
    root = FastAPI(
        title="bess-edge fleet API",
        description="GET /api/v1/sites lists the sites; each site's own API (the gateway's "
        "/api/v1, OpenAPI at /sites/<site>/docs) is under /sites/<site>/.",
    )
    root.state.keys = keys

    @root.get("/api/v1/sites", response_model=list[SiteOverview],
              dependencies=[Security(auth.viewer)])  # fmt: skip
    def sites() -> list[SiteOverview]:
        return fleet.sites()

    # The fleet's page lists the sites; each links to its own dashboard under /sites/<site>/.
    @root.get("/", include_in_schema=False)
    def fleet_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "fleet.html")

    @root.get("/style.css", include_in_schema=False)
    def fleet_style() -> FileResponse:
        return FileResponse(STATIC_DIR / "style.css")

    for overview in fleet.sites():
        storage = fleet.site(overview.site)
        assert storage is not None
        root.mount(
            f"/sites/{overview.site}",
            create_app(
                storage,
                keys,
                cors_origins=cors_origins,
                max_body_bytes=max_body_bytes,
                site=overview.site,
            ),
        )
    return root
