"""The fleet API: the gateway's own API app once per site, under ``/sites/<site>/``, plus the
list of sites. No second copy of any route: each site is ``create_app`` over a
:class:`PostgresStorage`, all sharing the keys of the ``users`` table.

A site's app is made on its first request, so a site registered while the API runs is served
without a restart.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
from fastapi import FastAPI, Security
from fastapi.responses import FileResponse
from starlette.routing import Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send

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

    def site_app(site: str) -> ASGIApp | None:
        storage = fleet.site(site)
        if storage is None:
            return None
        return create_app(
            storage, keys, cors_origins=cors_origins, max_body_bytes=max_body_bytes, site=site
        )

    root.mount("/sites", SiteApps(site_app))
    return root


class SiteApps(Router):
    """``/sites/<site>/...``: a mount per site, added when a registered site is first asked for.
    The lookup runs in a worker thread (it asks the database); an unknown site is a 404 and
    asked again next time, since it may be registered by then."""

    def __init__(self, site_app: Callable[[str], ASGIApp | None]) -> None:
        super().__init__()
        self.site_app = site_app
        self.known: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path, root = scope["path"], scope.get("root_path", "")
            site = path.removeprefix(root).lstrip("/").split("/", 1)[0]
            if site and site not in self.known:
                app = await anyio.to_thread.run_sync(self.site_app, site)
                if app is not None and site not in self.known:
                    self.known.add(site)
                    self.routes.append(Mount(f"/{site}", app=app))
        await super().__call__(scope, receive, send)
