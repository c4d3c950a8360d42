"""Aggregators: when a batch consumer hands its buffer to the batch handler.

    nova.CountAggregator(100)                               # at 100 tasks
    nova.TimeAggregator(timedelta(seconds=10))              # 10 s after the first task arrived
    nova.TimeCountAggregator(100, timedelta(seconds=10))    # whichever comes first

The window starts when the first task enters an empty buffer and is measured
on the queue's clock. Nothing is ever dropped: every buffered task reaches the
handler, and stop() hands over the partial batch. A TimeAggregator also
flushes at ``max_size`` (default 10,000) so the buffer stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from nova._errors import ConfigurationError, ConfigurationTypeError

__all__ = ["Aggregator", "CountAggregator", "TimeAggregator", "TimeCountAggregator"]


@runtime_checkable
class Aggregator(Protocol):
    """Flush at ``max_size`` tasks, or ``window`` after the first one (None: never by time)."""

    @property
    def max_size(self) -> int: ...

    @property
    def window(self) -> timedelta | None: ...


def _check_size(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigurationTypeError(f"aggregator size must be an int >= 1, got {n!r}")
    if n < 1:
        raise ConfigurationError(f"aggregator size must be an int >= 1, got {n!r}")


def _check_window(w: object) -> None:
    if not isinstance(w, timedelta):
        raise ConfigurationTypeError(f"aggregator window must be a positive timedelta, got {w!r}")
    if w <= timedelta(0):
        raise ConfigurationError(f"aggregator window must be a positive timedelta, got {w!r}")


@dataclass(frozen=True, slots=True)
class CountAggregator:
    """Flush when ``size`` tasks are buffered."""

    size: int

    def __post_init__(self) -> None:
        _check_size(self.size)

    @property
    def max_size(self) -> int:
        return self.size

    @property
    def window(self) -> timedelta | None:
        return None


@dataclass(frozen=True, slots=True)
class TimeAggregator:
    """Flush ``interval`` after the first task entered an empty buffer."""

    interval: timedelta
    max_size: int = 10_000

    def __post_init__(self) -> None:
        _check_window(self.interval)
        _check_size(self.max_size)

    @property
    def window(self) -> timedelta | None:
        return self.interval


@dataclass(frozen=True, slots=True)
class TimeCountAggregator:
    """Flush at ``size`` tasks or ``interval`` after the first, whichever comes first."""

    size: int
    interval: timedelta

    def __post_init__(self) -> None:
        _check_size(self.size)
        _check_window(self.interval)

    @property
    def max_size(self) -> int:
        return self.size

    @property
    def window(self) -> timedelta | None:
        return self.interval
