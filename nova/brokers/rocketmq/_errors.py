"""Client exceptions -> nova's error tree."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nova._errors import (
    AuthenticationError,
    BrokerError,
    ConnectionError,  # noqa: A004 - nova.ConnectionError on purpose
    NovaError,
)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _is_auth_failure(exc: BaseException) -> bool:
    name = type(exc).__name__
    if name in ("UnauthorizedException", "ForbiddenException"):
        return True
    code = str(getattr(exc, "code", "") or "")
    return code.startswith(("401", "403")) or "UNAUTHENTICATED" in str(exc) or "PERMISSION_DENIED" in str(exc)


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    text = str(exc)
    return any(s in text for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "failed to connect", "Connection refused"))


def _translate(exc: BaseException, what: str, secrets: Sequence[str]) -> NovaError:
    """Turn a client exception into nova's error tree (the caller raises it ``from exc``)."""
    if isinstance(exc, NovaError):
        return exc
    detail = _scrub(f"{type(exc).__name__}: {exc}", secrets)
    if _is_auth_failure(exc):
        return AuthenticationError(f"RocketMQ refused the credentials or permission for {what}: {detail}")
    if _is_connection_failure(exc):
        return ConnectionError(f"cannot reach RocketMQ for {what}: {detail}")
    return BrokerError(f"RocketMQ failed during {what}: {detail}")
