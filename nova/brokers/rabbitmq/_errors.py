"""What each aio-pika/aiormq exception means to nova: the adapter's one translation table.

Every boundary translates through it: ``connect`` with ``connecting=True`` (the
handshake's rows), and ``ensure_topics``, ``publish``, ``subscribe``, ack/nack
(a delivery's channel gone) and the settler with the rows for an open connection;
``close`` only logs (``_common.quietly``). The first row whose types match wins.
aiormq turns a channel's close reply code into its exception type (406:
``ChannelPreconditionFailed``, ...), so no row reads a message's text (only the
406's hint does, ``mismatch_fix``: every refused declare has that one code).

``recovers``: aio-pika's robust connection reopens what failed by itself, so a
settle that failed is not an error (RabbitMQ redelivers). ``resend``: ``publish``
sends the message again, until ``publish_timeout``: after a lost connection or
channel, and after a nack (RabbitMQ nacks what it could not store, e.g. a quorum
queue's publish while its leader changes).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from nova._errors import (
    AuthenticationError,
    BrokerError,
    ConfigurationError,
    ConnectionError,  # noqa: A004
    EnqueueError,
    NovaError,
)
from nova.brokers._common import scrub

__all__ = ["Row", "failure", "mismatch_fix", "translate"]


@dataclass(frozen=True, slots=True)
class Row:
    """Client exceptions of ``types`` become ``error(message)``.

    ``message`` is a ``str.format`` template; its fields: ``text`` (the exception's
    text) and ``detail`` (its type and text), both without secrets, and what the
    boundary gives (``translate``'s keywords). ``in_chain``: the types are looked for
    in the whole ``__cause__``/``__context__`` chain (aiormq wraps socket and TLS
    errors in AMQPConnectionError).
    """

    types: tuple[type[BaseException], ...]
    error: type[NovaError]
    message: str
    recovers: bool = False
    in_chain: bool = False
    resend: bool = False


@functools.cache
def _handshake_rows() -> tuple[Row, ...]:
    import aiormq.exceptions as amqp

    return (
        Row((ssl.SSLCertVerificationError,), AuthenticationError,
            "TLS certificate of {where} is not trusted ({text}); pass "
            "tls=ssl.create_default_context(cafile=<the broker's CA file>)", in_chain=True),
        Row((ssl.SSLError,), AuthenticationError, "TLS handshake with {where} failed: {text}", in_chain=True),
        # aiormq: a 403 reply to the handshake, or no login mechanism in common
        Row((amqp.ProbableAuthenticationError, amqp.AuthenticationError), AuthenticationError,
            "RabbitMQ at {where} refused the credentials of user {user!r} "
            "(wrong user or password, or no access to the vhost)"),
        Row((TimeoutError,), ConnectionError, "cannot connect to RabbitMQ at {where}: timed out after {timeout} s"),
        Row((BaseException,), ConnectionError, "cannot connect to RabbitMQ at {where}: {detail}"),
    )


@functools.cache
def _rows() -> tuple[Row, ...]:
    import aiormq.exceptions as amqp

    return (
        # basic.return of a mandatory publish (PublishError is a DeliveryError: first)
        Row((amqp.PublishError,), EnqueueError,
            "RabbitMQ returned a message for topic {topic!r} as unroutable "
            "(exchange {exchange!r} has no queue bound with that routing key)"),
        # basic.nack of a confirmed publish
        Row((amqp.DeliveryError,), EnqueueError, "RabbitMQ refused (nacked) a message for topic {topic!r}",
            resend=True),
        # 406 on a declare: the queue exists with other arguments (x-queue-type, x-message-ttl, ...)
        Row((amqp.ChannelPreconditionFailed,), ConfigurationError,
            "{doing} failed: queue {queue!r} already exists in RabbitMQ with other arguments ({text}); "
            "{fix}", recovers=True),
        # 403 on an open connection: the user lacks a permission on the vhost (configure to
        # declare, write to publish, read to consume). Sending again cannot help, so a publish
        # fails at once rather than after publish_timeout as if the connection were lost.
        Row((amqp.ChannelAccessRefused,), AuthenticationError,
            "RabbitMQ refused {doing} to user {user!r} ({text}): it needs configure, write and read "
            "permissions on the vhost for nova's exchange and queues, e.g. "
            "rabbitmqctl set_permissions -p <vhost> {user} '.*' '.*' '.*'"),
        # the socket, the connection or the channel is gone (the broker closed it, or a
        # call timed out waiting for it)
        Row((OSError, TimeoutError, amqp.AMQPConnectionError, amqp.ChannelInvalidStateError, amqp.ChannelClosed),
            ConnectionError, "RabbitMQ connection lost while {doing}: {detail}", recovers=True, resend=True),
        Row((BaseException,), BrokerError, "RabbitMQ failed while {doing}: {detail}"),
    )


def failure(exc: BaseException, *, connecting: bool = False) -> Row:
    """The row ``exc`` matches (``connecting``: among the handshake's rows)."""
    chain: list[BaseException] | None = None
    for row in _handshake_rows() if connecting else _rows():
        if row.in_chain:
            chain = chain or _exception_chain(exc)
            if any(isinstance(e, row.types) for e in chain):
                return row
        elif isinstance(exc, row.types):
            return row
    raise AssertionError("the last row matches every exception")  # pragma: no cover


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return f"<{key}?>"  # a boundary that gives no such field still gets its error


def translate(
    exc: BaseException, *, secrets: Iterable[str | None], connecting: bool = False, **fields: object
) -> NovaError:
    """The nova error for ``exc`` (raise it ``from exc``); no secret in any form appears in it.

        raise translate(exc, secrets=[password], doing="declaring queues ['t']") from exc
    """
    row = failure(exc, connecting=connecting)
    secrets = tuple(secrets)
    text = scrub(str(exc), secrets)
    detail = scrub(f"{type(exc).__name__}: {exc}", secrets)
    return row.error(row.message.format_map(_Fields(fields, text=text, detail=detail)))


def mismatch_fix(exc: BaseException, queue: str, queue_type: str) -> str:
    """What to do when RabbitMQ refused to declare ``queue`` (406: it exists with other arguments).

    RabbitMQ answers every refused declare with the same code (406 PRECONDITION_FAILED);
    only its text says which argument differs (``inequivalent arg 'x-queue-type' ...``),
    so this reads it to say what to fix. A queue's type cannot change in place.
    """
    if "'x-queue-type'" in str(exc):
        other = "classic" if queue_type == "quorum" else "quorum"
        return (
            f"it is a {other} queue and this broker declares {queue_type} queues (queue_type={queue_type!r}), "
            f"and a queue's type cannot change: drain it and delete it (rabbitmqctl delete_queue {queue}) so "
            f"that it is declared again as a {queue_type} queue, or use queue_type={other!r}"
        )
    if "'x-message-ttl'" in str(exc) and queue_type == "classic":
        return (
            f"it is a delay tier an earlier nova declared as a TTL queue; classic tiers are now plain queues "
            f"(a classic queue dead-letters at most once and loses what expires while RabbitMQ stops): wait "
            f"until it and {queue}_due are empty, then delete both (rabbitmqctl delete_queue {queue})"
        )
    return "delete it, or keep the delay tiers it was declared with"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
