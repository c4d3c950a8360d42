"""Concurrent enqueue calls share one publish (the engine's producer side).

    publisher = Coalescer(broker)
    await publisher.submit(messages)   # returns once the broker confirmed these messages

A call that finds no publish in flight is sent at the end of the current event-loop
turn, together with every other call of that turn (``asyncio.gather`` of many
``enqueue`` calls makes one publish). Calls that arrive while a publish is in flight
wait for it and then go out together in the next one. So a lone call waits for no
timer and no other publish (on a VirtualClock it completes without time moving),
and under load the publishes grow instead of queueing up: one in flight at a time,
as large as the load.

Guarantees:

- each call returns only once every one of its messages is confirmed;
- each call gets its own error: with a broker that reports each message's outcome
  (``PublishEach``) a refused message fails only its own call; with one that does not,
  a failed publish fails every call in it (none, some or all of their messages may
  be stored, as ``Broker.publish`` says);
- one call's messages stay together and in order within the publish;
- cancelling a call cancels no publish: if the call was cancelled before its publish
  began its messages are not sent; once begun, they may be stored even though the
  caller saw ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nova._broker import Broker, Message, PublishEach
from nova._errors import ClosedError, EnqueueError, NovaError

__all__ = ["Coalescer"]

_Call = tuple[Sequence[Message], "asyncio.Future[None]"]


class Coalescer:
    """Sends the messages of concurrent calls in shared publishes (see the module docstring).

    One per TaskQueue; bound to the event loop it is first used on (a later loop
    starts afresh).
    """

    __slots__ = ("_broker", "_each", "_loop", "_pending", "_sender")

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._each: PublishEach | None = broker if isinstance(broker, PublishEach) else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    def submit(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        """A future done once the broker confirmed ``messages`` (or with the call's error)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._pending, self._sender = loop, [], None
        future = loop.create_future()
        self._pending.append((messages, future))
        if self._sender is None:
            # A task, not the caller: cancelling a caller must not cancel a shared publish. Its
            # first step runs after every callback already runnable, so the calls of this loop
            # turn join the first publish.
            self._sender = loop.create_task(self._send())
        return future

    async def _send(self) -> None:
        try:
            while self._pending:
                calls = [call for call in self._pending if not call[1].done()]  # done: cancelled, not sent
                self._pending = []
                if calls:
                    await self._publish(calls)
        except asyncio.CancelledError:  # the loop is shutting down: so are the callers
            for _, future in self._pending:
                future.cancel()
            self._pending = []
            raise
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    async def _publish(self, calls: list[_Call]) -> None:
        messages = calls[0][0] if len(calls) == 1 else [m for batch, _ in calls for m in batch]
        try:
            if self._each is not None:
                outcomes = await self._each.publish_each(messages)
            else:
                await self._broker.publish(messages)
                outcomes = None
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller, which raises it
            _fail(calls, exc)
            return
        if outcomes is None or outcomes.count(None) == len(messages) == len(outcomes):  # all confirmed
            for _, future in calls:
                if not future.done():
                    future.set_result(None)
            return
        if len(outcomes) != len(messages):
            _fail(calls, EnqueueError(f"{type(self._broker).__name__}.publish_each answered {len(outcomes)} "
                                      f"outcome(s) for {len(messages)} message(s)"))
            return
        given: set[int] = set()
        start = 0
        for batch, future in calls:
            end = start + len(batch)
            failed = [e for e in outcomes[start:end] if e is not None]
            start = end
            if future.done():
                continue
            if failed:
                future.set_exception(_call_error(failed, len(batch), given))
            else:
                future.set_result(None)


def _fail(calls: list[_Call], exc: BaseException) -> None:
    """The whole publish failed: every call gets the error (its own instance of it)."""
    given: set[int] = set()
    for batch, future in calls:
        if not future.done():
            future.set_exception(_call_error([exc] * len(batch), len(batch), given))


def _call_error(failed: list[BaseException], count: int, given: set[int]) -> BaseException:
    """The error one call raises for its ``failed`` messages of ``count``.

    Every call gets an instance of its own (raising one instance in several tasks would
    tangle their tracebacks): the first call to need an error gets it as it is; the others
    get a new one of the same kind, caused by it. ``given`` holds the ids of those handed out.
    """
    first = failed[0]
    if isinstance(first, ClosedError):
        kind: type[NovaError] = ClosedError
    elif isinstance(first, EnqueueError):
        kind = EnqueueError
    else:
        return _caused(EnqueueError(f"the broker did not take {count} task(s): {_text(first)}"), first)
    if len(failed) < count:
        return _caused(kind(f"the broker did not take {len(failed)} of {count} task(s): {first}"), first)
    if id(first) in given:
        return _caused(kind(str(first)), first)
    given.add(id(first))
    return first


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, NovaError) else repr(exc)
