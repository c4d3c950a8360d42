"""How client exceptions are classified."""

from __future__ import annotations

import asyncio


def _is_connection_problem(exc: BaseException) -> bool:
    import aiormq.exceptions

    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncio.TimeoutError
        | aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.ChannelClosed,
    ) and not isinstance(exc, aiormq.exceptions.DeliveryError)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
