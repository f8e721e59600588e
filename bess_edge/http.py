"""The local HTTP endpoint: ``/health`` (JSON) and ``/metrics`` (Prometheus text format).

A few dozen lines of asyncio instead of a web framework: it runs on the daemon's own loop, so a
scrape reads the live state and asks SQLite through the store thread like everything else, and
when the loop is stuck it does not answer at all (the watchdog's business). Off by default and
bound to 127.0.0.1 (``[http]``); read-only, no request body is ever read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import TYPE_CHECKING

from bess_edge import health, metrics

if TYPE_CHECKING:
    from bess_edge.daemon import Daemon

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # a client that does not send its request in time is dropped
MAX_HEADER_BYTES = 8192
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HttpEndpoint:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEADER_BYTES, reuse_address=True
        )
        log.info("http endpoint listening", extra={"url": f"http://{host}:{port}/health"})
        if not _is_loopback(host):
            log.warning(
                "http endpoint reachable from the network: it has no authentication; "
                "bind it to 127.0.0.1 and put a TLS proxy in front",
                extra={"host": host},
            )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        route = path.split("?", 1)[0]
        if route == "/health":
            snapshot = await health.check(self.daemon)
            body = json.dumps(snapshot.to_dict(), indent=1).encode() + b"\n"
            return (200 if snapshot.healthy else 503), "application/json", body
        if route == "/metrics":
            snapshot = await health.check(self.daemon)
            return 200, metrics.CONTENT_TYPE, metrics.exposition(snapshot)
        return 404, "text/plain", b"try /health or /metrics\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request_line = (await reader.readline()).decode("latin-1").split()
                while (await reader.readline()).strip():
                    pass  # headers: nothing here depends on them
            if len(request_line) != 3:
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = await self.respond(request_line[0], request_line[1])
            head = (
                f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if request_line[:1] == ["HEAD"] else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass  # a slow, vanished or oversized client: nothing to answer
        except Exception:
            log.exception("http request failed")
        finally:
            writer.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
