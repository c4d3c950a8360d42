"""nova's errors. Client exceptions are translated at the adapter boundary
(``raise nova.ConnectionError(...) from exc``), so callers catch these only.

    NovaError
    ├── ConfigurationError (also ValueError)   bad option or URL, caught before anything is sent
    │   └── ConfigurationTypeError (also TypeError)  an option of the wrong type
    ├── ValidationError (also ValueError)      a task or enqueue argument is wrong
    │   ├── ValidationTypeError (also TypeError)     a task field or argument of the wrong type
    │   └── PayloadTooLarge

A value of the wrong type raises the ``...TypeError`` flavour, so ``except TypeError``
works as in Python itself, and ``except nova.ValidationError`` (or ``ConfigurationError``)
still catches every invalid argument:

    try:
        await queue.enqueue(nova.Task("email", "not bytes"))
    except TypeError as exc:      # nova.ValidationTypeError: Task.payload must be bytes, ...
        ...
    ├── EnqueueError                           the broker refused or did not confirm a publish
    ├── DecodeError                            bytes no codec can turn into a task (carries them)
    ├── BrokerError                            the broker failed while consuming/acking
    │   ├── ConnectionError                    cannot reach / lost the broker (also builtins.ConnectionError)
    │   └── AuthenticationError                credentials or certificate refused
    ├── StateError (also RuntimeError)         wrong lifecycle call: start twice, start after stop...
    ├── ClosedError (also StateError)          you closed it (distinct from the broker failing)
    └── TaskTimeout (also TimeoutError)        a handler ran past its timeout (the attempt failed)
"""

from __future__ import annotations

import builtins

__all__ = [
    "AuthenticationError",
    "BrokerError",
    "ClosedError",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ConnectionError",
    "DecodeError",
    "EnqueueError",
    "NovaError",
    "PayloadTooLarge",
    "StateError",
    "TaskTimeout",
    "ValidationError",
    "ValidationTypeError",
]


class NovaError(Exception):
    """Base of every error nova raises on purpose."""


class ConfigurationError(NovaError, ValueError):
    """An option, URL or combination of options is invalid."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """An option has the wrong type (e.g. a number where a timedelta goes)."""


class ValidationError(NovaError, ValueError):
    """A task or an enqueue argument is invalid; nothing was published."""


class ValidationTypeError(ValidationError, TypeError):
    """A task field or an argument has the wrong type (e.g. a str payload); nothing was published."""


class PayloadTooLarge(ValidationError):
    """The encoded task is larger than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"task payload is {size} bytes, over the limit of {limit} bytes; "
            "send a reference to the data instead, or raise max_payload_size"
        )
        self.size = size
        self.limit = limit


class EnqueueError(NovaError):
    """The broker refused a task or did not confirm it."""


class DecodeError(NovaError):
    """Bytes that no codec could decode. ``data`` holds them, ``__cause__`` says why."""

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


class BrokerError(NovaError):
    """The broker failed (not something you did)."""


class ConnectionError(BrokerError, builtins.ConnectionError):  # noqa: A001
    """The broker cannot be reached, or the connection was lost."""


class AuthenticationError(BrokerError):
    """The broker refused the credentials or the TLS certificate."""


class StateError(NovaError, RuntimeError):
    """A call that does not fit the object's lifecycle (e.g. start twice)."""


class ClosedError(StateError):
    """The object was closed by you; open a new one."""


class TaskTimeout(NovaError, builtins.TimeoutError):
    """A handler was still running at its ``timeout``: the attempt failed (the retry policy applies).

    An async handler is cancelled at the limit; a sync one cannot be killed, so its thread
    is left to finish and its outcome is ignored.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the handler was still running after its timeout of {timeout:g} s")
        self.timeout = timeout
