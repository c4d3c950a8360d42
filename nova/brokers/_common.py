"""Helpers every adapter needs the same way: addresses, URL options, secrets, cleanup, backoff.

They exist so that the three adapters validate and report alike: the same
``host:port`` check, the same booleans in URLs, the same redaction of secrets,
the same rules for ``topic_prefix``/``group_id`` and for durations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from nova._errors import ClosedError, ConfigurationError, EnqueueError
from nova._naming import validate_group, validate_prefix

__all__ = [
    "Backoff",
    "delay_slots",
    "duration",
    "optional_group",
    "optional_prefix",
    "parse_bool",
    "quietly",
    "raise_refusals",
    "redact_url",
    "scrub",
    "split_host_port",
]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def split_host_port(address: str, what: str = "server") -> tuple[str, int]:
    """``"host:port"`` (``[::1]:port`` too) -> ``(host, port)``, or a ConfigurationError naming ``what``."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{what} {address!r} is not host:port (e.g. 127.0.0.1:9092)")
    return host.strip("[]"), int(port)


def parse_bool(name: str, value: str, scheme: str) -> bool:
    """A URL option's boolean (true/false, 1/0, yes/no, on/off)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{scheme} URL option {name} must be true or false, not {value!r}")


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    return parts._replace(netloc=f"{user}:***@{host}" if has_password else f"{user}@{host}").geturl()


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (as given, or percent-encoded as in a URL) replaced by ``***``."""
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
    return text


def optional_prefix(value: str | None) -> str | None:
    """A broker-level ``topic_prefix``: None (use the TaskQueue's) or a valid prefix."""
    return None if value is None else validate_prefix(value)


def optional_group(value: str | None) -> str | None:
    """A broker-level ``group_id``: None (use the TaskQueue's) or a valid group id."""
    return None if value is None else validate_group(value)


def duration(name: str, value: timedelta | float, *, allow_zero: bool = False) -> timedelta:
    """A duration option as a timedelta (numbers are seconds); positive unless ``allow_zero``."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ConfigurationError(f"{name} must be a timedelta, not {value!r}")
    result = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if result < timedelta(0) or (result == timedelta(0) and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {value!r}")
    return result


def delay_slots(value: tuple[int, timedelta | float] | None) -> tuple[int, timedelta] | None:
    """A broker-level ``delay_slots=(count, longest)``, or None (use the TaskQueue's)."""
    if value is None:
        return None
    try:
        count, longest = value
    except (TypeError, ValueError):
        raise ConfigurationError(f"delay_slots must be (count, duration), not {value!r}") from None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"delay_slots must be (count >= 1, duration > 0), not {value!r}")
    return count, duration("delay_slots' duration", longest)


def raise_refusals(outcomes: Sequence[BaseException | None]) -> None:
    """``publish`` in terms of ``publish_each``: raise the first refusal among ``outcomes``
    (when only some messages were refused, an EnqueueError that says how many, caused by it).

        raise_refusals(await self.publish_each(messages))
    """
    failed = [outcome for outcome in outcomes if outcome is not None]
    if not failed:
        return
    first = failed[0]
    if len(failed) == len(outcomes) or isinstance(first, ClosedError):
        raise first
    raise EnqueueError(f"{len(failed)} of {len(outcomes)} message(s) not confirmed: {first}") from first


async def quietly(awaitable: Awaitable[Any], log: logging.Logger, what: str, within: float = 15.0) -> None:
    """Best-effort cleanup: a failure (or a hang past ``within`` s) to stop must not hide the
    error being raised, nor keep a close waiting."""
    try:
        await asyncio.wait_for(awaitable, within)
    except Exception as exc:  # noqa: BLE001 - cleanup; logged, never raised
        log.debug("%s failed: %r", what, exc)


class Backoff:
    """Pauses doubling from ``first`` to ``longest`` seconds, until a deadline ``within`` s from now.

        backoff = Backoff(within=10)
        while not ready():
            if not await backoff.wait():
                raise TimeoutError(...)
    """

    def __init__(self, within: float, *, first: float = 0.005, longest: float = 0.2) -> None:
        self.deadline = time.monotonic() + within
        self.first = first
        self.longest = longest
        self.pause = first

    def restart(self) -> None:
        """The next pause is the first one again (the deadline stays)."""
        self.pause = self.first

    async def wait(self) -> bool:
        """Sleep the next pause; False, without sleeping, if it would end past the deadline."""
        if time.monotonic() + self.pause > self.deadline:
            return False
        await asyncio.sleep(self.pause)
        self.pause = min(2 * self.pause, self.longest)
        return True
