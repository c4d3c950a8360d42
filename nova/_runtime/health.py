"""The endpoints of ``nova worker --health-port`` and ``--metrics-port``: a tiny HTTP/1.1 server on asyncio.

``GET /livez`` and ``GET /readyz`` answer 200 or 503 from state kept in memory (no broker
round trip per probe); ``GET /metrics`` the Prometheus text format; anything else is 404.
One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["Check", "HealthServer", "HttpServer", "Route", "health_routes"]

log = logging.getLogger("nova.health")

#: A probe: (healthy, text for the response body).
Check = Callable[[], tuple[bool, str]]
#: An endpoint: (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]

_TEXT = "text/plain; charset=utf-8"

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _probe(check: Check) -> Route:
    def answer() -> tuple[int, str, bytes]:
        healthy, text = check()
        return (200 if healthy else 503), _TEXT, (text.rstrip("\n") + "\n").encode()

    return answer


def health_routes(*, live: Check, ready: Check) -> dict[str, Route]:
    """``/livez`` and ``/readyz`` from two checks."""
    return {"/livez": _probe(live), "/readyz": _probe(ready)}


class HttpServer:
    """Serves GET on a few paths, each answered by a function.

        server = HttpServer("0.0.0.0", 9464, {"/metrics": lambda: (200, "text/plain", b"...")})
        await server.start()
    """

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host = host
        self.port = port
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None

    @property
    def paths(self) -> list[str]:
        return list(self._routes)

    async def start(self) -> None:
        """Listen (raises OSError if the port is taken)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, payload, method = self._answer(head)
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(payload)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away or never finished its request
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return 400, _TEXT, b"bad request\n", "GET"
        method, target, _ = parts
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return 404, _TEXT, f"not found: use {' or '.join(self._routes)}\n".encode(), method
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"use GET\n", method
        try:
            status, content_type, body = route()
        except Exception:  # the endpoint's failure is the answer, not the server's end
            log.exception("%s failed", target)
            return 500, _TEXT, b"internal error (see the worker's log)\n", method
        return status, content_type, body, method


class HealthServer(HttpServer):
    """Serves ``/livez`` and ``/readyz`` from two checks.

        server = HealthServer("0.0.0.0", 8081, live=lambda: (True, "ok"), ready=lambda: (False, "starting"))
        await server.start()
    """

    def __init__(self, host: str, port: int, *, live: Check, ready: Check) -> None:
        super().__init__(host, port, health_routes(live=live, ready=ready))
