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

from nova._runtime.options import WorkerOptions

__all__ = ["Check", "HttpServer", "Route", "start_endpoints"]

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


def _listen_address(opts: WorkerOptions) -> tuple[str, int]:
    """Where /metrics is served: with the health endpoints if it is their port."""
    assert opts.metrics_port is not None
    if opts.metrics_port == opts.health_port:
        return opts.health_host, opts.metrics_port
    return opts.metrics_host, opts.metrics_port


async def start_endpoints(opts: WorkerOptions, *, live: Check, ready: Check, metrics: Route) -> list[HttpServer] | None:
    """Serve ``--health-port``'s /livez and /readyz and ``--metrics-port``'s /metrics (one server
    when they share a port); None, after logging why and closing the others, if a port cannot be had."""
    routes: dict[tuple[str, int], dict[str, Route]] = {}
    if opts.health_port is not None:
        routes.setdefault((opts.health_host, opts.health_port), {}).update(
            {"/livez": _probe(live), "/readyz": _probe(ready)})
    if opts.metrics_port is not None:
        routes.setdefault(_listen_address(opts), {})["/metrics"] = metrics
    servers = [HttpServer(host, port, paths) for (host, port), paths in routes.items()]
    for server in servers:
        try:
            await server.start()
        except OSError as exc:
            log.error("cannot serve %s on %s:%s: %s", " and ".join(server.paths), server.host, server.port, exc)
            for other in servers:
                await other.close()
            return None
    return servers
