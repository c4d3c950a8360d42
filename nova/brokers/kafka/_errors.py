"""How aiokafka's exceptions become nova's: one table, used at every boundary of the adapter.

    raise translate(exc, "cannot start the Kafka consumer", broker.error_context) from exc

Rows are tried in order (an ``ssl.SSLCertVerificationError`` is also an ``SSLError`` and
an ``OSError``); an exception no row matches is a ``BrokerError`` with aiokafka's text.
Publishing raises ``EnqueueError`` whatever the row says (the contract's publish error),
with the row's message. Error codes from the broker's answers (a topic the broker could
not create) go through ``for_code``, aiokafka's code -> exception table, and then this one.
Messages say what to fix and never hold a password.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]

from nova._errors import (
    AuthenticationError,
    BrokerError,
    ConnectionError,  # noqa: A004 - nova's, a subclass of the builtin
)
from nova.brokers import _common
from nova.brokers.kafka._config import KafkaAuth, KafkaSSL

__all__ = ["ErrorContext", "for_code", "is_refusal", "translate"]


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What an error message may name: the settings behind a failure (passwords only to scrub
    them), and how long the failed call waited for an answer."""

    security_protocol: str
    auth: KafkaAuth | None
    ssl: KafkaSSL | None
    timeout_s: float


def _untrusted(exc: BaseException, ctx: ErrorContext) -> str:
    assert isinstance(exc, ssl.SSLCertVerificationError)
    ca_file = ctx.ssl.ca_file if ctx.ssl else None
    return (
        f"the broker's TLS certificate is not trusted ({exc.verify_message}); "
        f"check KafkaSSL(ca_file=...) (now {ca_file!r})"
    )


def _refused(exc: BaseException, ctx: ErrorContext) -> str:
    if ctx.auth is None:
        return f"the broker asks for SASL credentials ({exc}); pass auth=KafkaAuth(...)"
    return (
        f"the broker refused user {ctx.auth.username!r} with SASL {ctx.auth.mechanism} over "
        f"{ctx.auth.security_protocol} ({exc}); check the username and password"
    )


def _no_answer(exc: BaseException, ctx: ErrorContext) -> str:
    return (
        f"no answer within {ctx.timeout_s:g} s; is it running, and is it a "
        f"{ctx.security_protocol} listener?"
    )


def _unreachable(exc: BaseException, ctx: ErrorContext) -> str:
    return (
        f"{exc} (this client speaks {ctx.security_protocol}: check the address and that the "
        "listener expects that protocol)"
    )


Message = Callable[[BaseException, ErrorContext], str]
Row = tuple[type[BaseException] | tuple[type[BaseException], ...], type[BrokerError], Message]

#: aiokafka (or ssl / socket) exception -> nova error class, message after "<what failed>: ".
TABLE: tuple[Row, ...] = (
    (ssl.SSLCertVerificationError, AuthenticationError, _untrusted),
    (ssl.SSLError, AuthenticationError, lambda exc, ctx: f"TLS handshake failed ({exc}); check KafkaSSL settings"),
    ((kafka_errors.SaslAuthenticationFailed, kafka_errors.UnsupportedSaslMechanismError), AuthenticationError,
     _refused),
    ((kafka_errors.TopicAuthorizationFailedError, kafka_errors.GroupAuthorizationFailedError,
      kafka_errors.ClusterAuthorizationFailedError), AuthenticationError,
     lambda exc, ctx: f"not authorized ({exc}); grant the user the ACLs it needs"),
    ((TimeoutError, kafka_errors.KafkaTimeoutError), ConnectionError, _no_answer),
    ((OSError, kafka_errors.KafkaConnectionError), ConnectionError, _unreachable),
    (kafka_errors.InvalidReplicationFactorError, BrokerError,
     lambda exc, ctx: f"{exc}; the cluster has fewer brokers than the topic's replicas (replication_factor=..., "
                      "else the cluster's default.replication.factor): give a smaller replication_factor"),
)  # fmt: skip


def translate(exc: BaseException, what: str, ctx: ErrorContext) -> BrokerError:
    """The nova error for ``exc``, its message starting with ``what`` (raise it ``from exc``)."""
    row = _row(exc)
    if row is None:
        error, text = BrokerError, f"{what}: {exc}"
    else:
        error, text = row[1], f"{what}: {row[2](exc, ctx)}"
    return error(_common.scrub(text, _secrets(ctx)))


def is_refusal(exc: BaseException) -> bool:
    """Credentials or certificate refused: every bootstrap server will refuse them alike."""
    row = _row(exc)
    return row is not None and row[1] is AuthenticationError


def _row(exc: BaseException) -> Row | None:
    for row in TABLE:
        if isinstance(exc, row[0]):
            return row
    return None


def for_code(code: int, *details: object) -> BaseException:
    """aiokafka's exception for an error code in a broker's answer."""
    error: BaseException = kafka_errors.for_code(code)(*details)
    return error


def _secrets(ctx: ErrorContext) -> tuple[str | None, ...]:
    return (ctx.auth.password if ctx.auth else None, ctx.ssl.password if ctx.ssl else None)
