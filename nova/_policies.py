"""Retry, backoff and priority policies.

    retry = nova.RetryPolicy(max_retries=5, backoff=nova.ExponentialBackoff(base=timedelta(seconds=1)))
    policy = nova.WeightedPriority(high=6, normal=3, low=1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from nova._errors import ConfigurationError, ConfigurationTypeError
from nova._task import Priority

__all__ = [
    "Backoff",
    "ConstantBackoff",
    "ExponentialBackoff",
    "PriorityPolicy",
    "RetryPolicy",
    "StrictPriority",
    "WeightedPriority",
]


class Backoff(Protocol):
    def delay(self, attempt: int) -> timedelta:
        """Wait before attempt ``attempt + 1``, after attempt ``attempt`` failed (attempt >= 1)."""
        ...


@dataclass(frozen=True, slots=True)
class ConstantBackoff:
    """The same wait before every retry."""

    interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if not isinstance(self.interval, timedelta):
            raise ConfigurationTypeError(f"ConstantBackoff interval must be a timedelta, got {self.interval!r}")
        if self.interval < timedelta(0):
            raise ConfigurationError("ConstantBackoff interval must be >= 0")

    def delay(self, attempt: int) -> timedelta:
        return self.interval


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``base * factor**(attempt-1)``, capped at ``max``. Deterministic (no jitter)
    so retries are reproducible on the virtual clock."""

    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    max: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        for name, value in (("base", self.base), ("max", self.max)):
            if not isinstance(value, timedelta):
                raise ConfigurationTypeError(f"ExponentialBackoff {name} must be a timedelta, got {value!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise ConfigurationTypeError(f"ExponentialBackoff factor must be a number >= 1, got {self.factor!r}")
        if self.base < timedelta(0) or self.factor < 1 or self.max < self.base:
            raise ConfigurationError("ExponentialBackoff needs base >= 0, factor >= 1 and max >= base")

    def delay(self, attempt: int) -> timedelta:
        seconds = self.base.total_seconds() * self.factor ** max(attempt - 1, 0)
        return min(timedelta(seconds=seconds), self.max)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A failing task is retried ``max_retries`` times (so run at most
    ``max_retries + 1`` times), waiting ``backoff.delay(attempt)`` between runs,
    then dead-lettered."""

    max_retries: int = 3
    backoff: Backoff = field(default_factory=ExponentialBackoff)

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigurationTypeError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not callable(getattr(self.backoff, "delay", None)):
            raise ConfigurationTypeError("backoff must be a nova.ConstantBackoff or ExponentialBackoff "
                                         f"(anything with delay(attempt)), got {type(self.backoff).__name__}")


class PriorityPolicy(Protocol):
    def choose(self, ready: list[Priority]) -> Priority:
        """Pick one level among those with work ready (non-empty, highest first)."""
        ...


@dataclass(slots=True)
class StrictPriority:
    """Always the highest level that has work: LOW waits while HIGH or NORMAL is ready."""

    def choose(self, ready: list[Priority]) -> Priority:
        return ready[0]


@dataclass(slots=True)
class WeightedPriority:
    """Backlogged levels are served in proportion to their weights (smooth
    weighted round-robin: deterministic, no starvation)."""

    high: int = 6
    normal: int = 3
    low: int = 1
    _current: dict[Priority, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, w in (("high", self.high), ("normal", self.normal), ("low", self.low)):
            if isinstance(w, bool) or not isinstance(w, int):
                raise ConfigurationTypeError(f"WeightedPriority weight {name} must be an int >= 1, got {w!r}")
            if w < 1:
                raise ConfigurationError(f"WeightedPriority weight {name} must be an int >= 1, got {w!r}")

    def weight(self, level: Priority) -> int:
        return {Priority.HIGH: self.high, Priority.NORMAL: self.normal, Priority.LOW: self.low}[level]

    def choose(self, ready: list[Priority]) -> Priority:
        total = 0
        best: Priority | None = None
        for level in ready:
            w = self.weight(level)
            self._current[level] = self._current.get(level, 0) + w
            total += w
            if best is None or self._current[level] > self._current[best]:
                best = level
        assert best is not None
        self._current[best] -= total
        return best
