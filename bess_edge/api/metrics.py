"""The API's own Prometheus metrics (a registry per app: tests build many apps)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response

from bess_edge.storage.models import StorageHealth


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bess_api_requests", "API requests by route and status",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "bess_api_request_seconds", "API request latency by route", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry,
        )  # fmt: skip
        self.sample_age = Gauge(
            "bess_api_newest_sample_age_seconds", "age of the newest stored sample",
            registry=self.registry,
        )  # fmt: skip
        self.storage_bytes = Gauge(
            "bess_api_storage_bytes", "size of the store", registry=self.registry
        )

    def observe_storage(self, health: StorageHealth) -> None:
        if health.newest_sample_ts_ms is not None:
            self.sample_age.set(max(0.0, time.time() - health.newest_sample_ts_ms / 1000))
        if health.size_bytes is not None:
            self.storage_bytes.set(health.size_bytes)

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", None) or "static"
        self.latency.labels(name).observe(time.perf_counter() - start)
        self.requests.labels(name, str(response.status_code)).inc()
        return response
