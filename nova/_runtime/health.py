"""The health endpoints of ``nova worker --health-port``: a tiny HTTP/1.1 server on asyncio.

``GET /livez`` and ``GET /readyz`` answer 200 or 503 from state kept in memory (no broker
round trip per probe); anything else is 404. One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["Check", "HealthServer"]

log = logging.getLogger("nova.health")

#: A probe: (healthy, text for the response body).
Check = Callable[[], tuple[bool, str]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` from two checks.

        server = HealthServer("0.0.0.0", 8081, live=lambda: (True, "ok"), ready=lambda: (False, "starting"))
        await server.start()
    """

    def __init__(self, host: str, port: int, *, live: Check, ready: Check) -> None:
        self.host = host
        self.port = port
        self._checks = {"/livez": live, "/readyz": ready}
        self._server: asyncio.Server | None = None

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
            status, body, method = self._answer(head)
            payload = body.encode()
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
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

    def _answer(self, head: bytes) -> tuple[int, str, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return 400, "bad request\n", "GET"
        method, target, _ = parts
        check = self._checks.get(target.split("?", 1)[0])
        if check is None:
            return 404, "not found: use /livez or /readyz\n", method
        if method not in ("GET", "HEAD"):
            return 405, "use GET\n", method
        healthy, text = check()
        return (200 if healthy else 503), text.rstrip("\n") + "\n", method
