"""How RocketMQ failures map onto nova's errors: the one table of this adapter.

Through the proxy (gRPC; ``translate``, used at connect, ensure_topics, publish,
subscribe, receive, ack, nack and renew)::

    the client's failure                                          nova
    a nova error (RocketMQAdmin's, or one already translated)     itself
    UnauthorizedException, ForbiddenException, or a code 401xx/403xx;
      gRPC status UNAUTHENTICATED or PERMISSION_DENIED            AuthenticationError
    gRPC status UNAVAILABLE or DEADLINE_EXCEEDED; OSError, TimeoutError
                                                                  ConnectionError
    anything else                                                 BrokerError

``NotFoundException`` (unknown topic or group) becomes a ConfigurationError naming
the ``mqadmin`` command, where the caller knows which one. Through the name server
and brokers (remoting; ``refusal``, used by RocketMQAdmin): an ACL refusal
(NO_PERMISSION: bad signature, unknown user, denied permission) is an
AuthenticationError, any other refusal a BrokerError, and an unreachable or silent
server a ConnectionError (raised by RocketMQAdmin itself).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from nova._errors import (
    AuthenticationError,
    BrokerError,
    ConnectionError,  # noqa: A004 - nova.ConnectionError on purpose
    NovaError,
)
from nova.brokers._common import scrub

__all__ = [
    "is_auth_failure",
    "is_not_found",
    "lost_route",
    "lost_settings",
    "permission_denied",
    "refusal",
    "translate",
]

#: gRPC status names (``grpc.StatusCode``) per nova error.
_GRPC_AUTH = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_GRPC_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
#: RocketMQ status codes (``rocketmq.grpc_protocol.Code``) // 100 that refuse the credentials:
#: UNAUTHORIZED 40100 and FORBIDDEN 40300 (and any later 401xx/403xx).
_CODE_AUTH_CLASSES = frozenset({401, 403})


def _grpc_status(exc: BaseException) -> str | None:
    """The gRPC status name of a failed call (``"UNAVAILABLE"``, ...), or None."""
    grpc: Any = sys.modules.get("grpc")  # a gRPC error exists only once grpc is imported
    if grpc is None or not isinstance(exc, grpc.RpcError) or not callable(getattr(exc, "code", None)):
        return None
    code = exc.code()
    return getattr(code, "name", None)


def _client_exception(exc: BaseException, *names: str) -> bool:
    """``exc`` is one of the client's exception classes ``names`` (from ``rocketmq.v5.exception``)."""
    module = sys.modules.get("rocketmq.v5.exception")  # as above: loaded with the client
    if module is None:
        return False
    classes = tuple(c for c in (getattr(module, name, None) for name in names) if isinstance(c, type))
    return isinstance(exc, classes)


def _status_code(exc: BaseException) -> int | None:
    """The RocketMQ status code the client's exception carries (``ClientException.code``), or None."""
    if not _client_exception(exc, "ClientException"):
        return None
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def is_auth_failure(exc: BaseException) -> bool:
    """The proxy refused the credentials or the permission."""
    if isinstance(exc, AuthenticationError) or _client_exception(exc, "UnauthorizedException", "ForbiddenException"):
        return True
    code = _status_code(exc)
    return (code is not None and code // 100 in _CODE_AUTH_CLASSES) or _grpc_status(exc) in _GRPC_AUTH


def permission_denied(exc: BaseException) -> bool:
    """An authentication failure that signed in but lacks the permission (vs. wrong credentials).

    The proxy answers both with UNAUTHORIZED (40100): "check signature failed" or
    "User:x is not found" for the credentials, "User:x has no permission to access
    ..." for the permission. Only the message tells them apart.
    """
    return "no permission" in str(exc)


def is_not_found(exc: BaseException) -> bool:
    """The proxy knows no such topic or consumer group."""
    return _client_exception(exc, "NotFoundException")


def lost_route(exc: BaseException) -> bool:
    """The client could not get a topic's route.

    The client raises a bare ``Exception("failed to fetch topic:<t> route.")`` that
    hides why (the query's own failure is only logged): no type or code to go by.
    """
    return "route" in str(exc)


def lost_settings(exc: BaseException) -> bool:
    """The client's settings did not reach the proxy (or the proxy lost them, e.g. on a restart).

    Neither the client nor the proxy gives this its own type or code (the proxy's
    receive fails with INTERNAL_ERROR 50001, '"settings" is null'): the message
    text is the only sign.
    """
    return "settings" in str(exc)


def _is_connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, TimeoutError)) or _grpc_status(exc) in _GRPC_UNREACHABLE


def translate(exc: BaseException, what: str, secrets: Iterable[str]) -> NovaError:
    """nova's error for a client failure during ``what`` (the caller raises it ``from exc``)."""
    if isinstance(exc, NovaError):
        return exc
    detail = scrub(f"{type(exc).__name__}: {exc}", secrets)
    if is_auth_failure(exc):
        return AuthenticationError(f"RocketMQ refused the credentials or permission for {what}: {detail}")
    if _is_connection_failure(exc):
        return ConnectionError(f"cannot reach RocketMQ for {what}: {detail}")
    return BrokerError(f"RocketMQ failed during {what}: {detail}")


#: The remoting response code (``ResponseCode.NO_PERMISSION``) of every ACL refusal: a bad
#: signature, an unknown or missing user, a denied permission.
_NO_PERMISSION = 16
_AUTH_REMARKS = ("signature", "authentic", "accesskey", "permission")


def refusal(what: str, code: int, remark: str, secrets: Iterable[str]) -> NovaError:
    """nova's error for a remoting request the name server or a broker answered with ``code``.

    NO_PERMISSION is an AuthenticationError. A server that refuses credentials under
    another code can only say so in its remark, which then decides.
    """
    detail = scrub(f"code {code}: {remark}", secrets)
    if code == _NO_PERMISSION or any(word in remark.lower() for word in _AUTH_REMARKS):
        return AuthenticationError(f"RocketMQ refused to {what}: {detail}")
    return BrokerError(f"RocketMQ refused to {what}: {detail}")
