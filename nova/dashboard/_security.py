"""The dashboard's safety rules: where it may listen, who may use it, which POSTs count.

- It listens on a loopback address unless given ``--auth``: the pages show every task's
  payload, headers and errors, and (unless read-only) can run tasks again and delete
  records. :func:`check_bind` refuses anything else with a message that says why.
- ``--auth user:password``: HTTP Basic on every request, static files included.
- On a loopback address, the ``Host`` header must name a loopback host too, so a web
  page elsewhere cannot reach the dashboard through a DNS name it rebinds to 127.0.0.1.
- Every action is a POST carrying a CSRF token: an HMAC of a random per-browser cookie
  (``SameSite=Strict``, ``HttpOnly``) under a per-process secret. A POST without the
  cookie, without the token, with a token of another cookie, or from another origin is
  refused.
- Every response forbids framing and inline or foreign scripts (Content-Security-Policy).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nova._errors import ConfigurationError

__all__ = ["BasicAuth", "Csrf", "SafetyMiddleware", "check_bind", "is_loopback", "safe_back"]

CSRF_COOKIE = "nova_dashboard_csrf"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: form POSTs would send "Origin: null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (brackets allowed)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, auth: BasicAuth | None) -> None:
    """Refuse to listen on a non-loopback address without ``--auth`` (ConfigurationError says why)."""
    if auth is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host}:{port} without --auth: the dashboard shows every recorded task's "
            "payload, headers and errors, and can run tasks again and delete records, so anyone who can reach "
            f"{host}:{port} could. Pass --auth USER:PASSWORD (or set NOVA_DASHBOARD_AUTH) and put a TLS proxy "
            "in front of it, or keep the default --host 127.0.0.1 (e.g. behind an SSH tunnel).")


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """One user and password for HTTP Basic; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> BasicAuth:
        """``user:password`` (the password may contain ':')."""
        user, sep, password = text.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError("--auth takes USER:PASSWORD, both non-empty")
        return cls(user, password)

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries this user and password."""
        if not header:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # both compared whatever the first gives, so the time taken says nothing
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and same_user and same_password


class Csrf:
    """Tokens bound to a random per-browser cookie by an HMAC under a per-process secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def token(self, cookie: str) -> str:
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token:
            return False
        return hmac.compare_digest(self.token(cookie), token)


def safe_back(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site (no scheme, no host), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in target):
        return default
    return target


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class SafetyMiddleware:
    """Basic auth, the Host check, the CSRF cookie and the security headers, for every request.

    The CSRF cookie is read (or made) here and left in ``scope["state"]["csrf_cookie"]``
    for the pages; checking the token of a POST is the action's job (:meth:`Csrf.valid`).
    """

    def __init__(self, app: ASGIApp, *, auth: BasicAuth | None, loopback_only_hosts: bool) -> None:
        self.app = app
        self.auth = auth
        self.loopback_only_hosts = loopback_only_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host") or ""
        if self.loopback_only_hosts and not is_loopback(_host_name(host)):
            await _plain(send, 421, "This dashboard answers only to a loopback host name (127.0.0.1, localhost, "
                                    "[::1]).\n")
            return
        if self.auth is not None and not self.auth.allows(_header(scope, b"authorization")):
            await _plain(send, 401, "Authentication required.\n",
                         [(b"www-authenticate", b'Basic realm="nova dashboard", charset="UTF-8"')])
            return
        cookie = _cookie(scope)
        fresh = cookie is None
        if cookie is None:
            cookie = Csrf.new_cookie()
        scope.setdefault("state", {})["csrf_cookie"] = cookie

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_HEADERS]
                if fresh:
                    headers.append((b"set-cookie", f"{CSRF_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict"
                                    .encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cookie(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed cookie header is no cookie
        return None
    morsel = jar.get(CSRF_COOKIE)
    value = morsel.value if morsel is not None else None
    # only what new_cookie() makes; anything else is replaced by a fresh one
    return value if value and len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value) else None


def same_origin(scope: Scope) -> bool:
    """False if the request names an Origin (or, lacking one, a Referer) of another host."""
    host = _header(scope, b"host") or ""
    source = _header(scope, b"origin") or _header(scope, b"referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc == host


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    headers: list[Any] = [(b"content-type", b"text/plain; charset=utf-8"),
                          (b"content-length", str(len(body)).encode()), *_HEADERS, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
