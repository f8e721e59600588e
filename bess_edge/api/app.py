"""The app factory: routers, auth, body cap, CORS, metrics and the dashboard's static files.

``create_app(storage, keys)`` serves any :class:`Storage` backend: the gateway passes its
SQLite file, the cloud its PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from bess_edge import __version__
from bess_edge.api.cache import SharedAnswers
from bess_edge.api.limits import BodyLimit
from bess_edge.api.metrics import ApiMetrics
from bess_edge.api.routers import alerts, devices, diagnose, keys, system, thresholds
from bess_edge.api.thresholds_file import ThresholdsFile
from bess_edge.storage.base import Storage
from bess_edge.storage.keys import KeyStore

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    storage: Storage,
    keys_store: KeyStore,
    *,
    thresholds_file: ThresholdsFile | None = None,
    cors_origins: list[str] | None = None,
    max_body_bytes: int = 1024 * 1024,
    site: str = "",
) -> FastAPI:
    app = FastAPI(
        title="bess-edge API",
        version=__version__,
        description="Devices, trends, cells, alerts, thresholds and diagnostics of a battery "
        "site. Send an API key as 'Authorization: Bearer <key>' (`bess-edge api-key create`); "
        "/health needs none.",
    )
    app.state.storage = storage
    app.state.keys = keys_store
    app.state.thresholds = thresholds_file
    app.state.site = site
    app.state.metrics = ApiMetrics()
    app.state.answers = SharedAnswers(ttl_s=1.0)
    app.middleware("http")(app.state.metrics.middleware)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    for module in (system, devices, alerts, thresholds, diagnose, keys):
        app.include_router(module.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
    return app
