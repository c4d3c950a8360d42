"""How a worker calls a handler: awaited, or in a thread if it is sync; within a time limit
on the queue's clock; with the task in a context variable, so that log records made while
it runs (the handler's own too) can name it (see ``nova.TaskLogFilter``).

    spec = HandlerSpec.of(send_email, timeout=30.0)
    await call_handler(clock, spec, task)     # raises nova.TaskTimeout after 30 s
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

from nova._clock import Clock, SystemClock
from nova._errors import TaskTimeout

if TYPE_CHECKING:
    from nova._task import Task

__all__ = ["CURRENT_TASK", "HandlerSpec", "call_handler", "is_async_callable"]

#: The task (or the batch) whose handler the current coroutine or thread runs.
CURRENT_TASK: ContextVar[Task | list[Task] | None] = ContextVar("nova_current_task", default=None)


def is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class HandlerSpec(NamedTuple):
    """A handler as a worker calls it (a tuple: the worker unpacks it once per task)."""

    fn: Callable[[Any], Awaitable[None] | None]
    is_async: bool
    #: Seconds of the queue's clock an attempt may take; None: no limit.
    timeout: float | None

    @classmethod
    def of(cls, fn: Callable[[Any], Awaitable[None] | None], timeout: float | None = None) -> HandlerSpec:
        return cls(fn, is_async_callable(fn), timeout)


async def call_handler(clock: Clock, spec: HandlerSpec, arg: Any) -> None:
    """Run the handler on ``arg`` (a task, or a batch's list); TaskTimeout past its limit.

    An async handler is cancelled at the limit. A sync one runs in a thread, which
    cannot be killed: the attempt fails the same way and the thread is left to finish.
    """
    fn, is_async, limit = spec
    if is_async:
        work: Awaitable[Any] = fn(arg)  # type: ignore[assignment]
    else:
        work = clock.run_sync(functools.partial(fn, arg))
    if limit is None:
        await work
    elif type(clock) is SystemClock:
        # asyncio's own timer: one timer handle per call, no extra task.
        try:
            async with asyncio.timeout(limit) as scope:
                await work
        except TimeoutError as exc:
            if scope.expired():
                raise TaskTimeout(limit) from exc
            raise  # the handler's own TimeoutError
    else:
        await _race(clock, work, limit)


async def _race(clock: Clock, awaitable: Awaitable[Any], limit: float) -> None:
    """The limit on any other clock (a VirtualClock: virtual seconds)."""
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(limit))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        timer.cancel()
        raise
    timer.cancel()
    if not work.done():
        work.cancel()
        await asyncio.wait((work,))
        if work.cancelled():
            raise TaskTimeout(limit)
    work.result()  # the handler's own error, if it raised one
