"""The one place nova reads a private attribute of asyncio (tested in tests/test_asyncio_internals.py).

asyncio offers no public way to ask "is any callback runnable now?", and a VirtualClock
must know it before it moves time (see ``VirtualClock.settle``). CPython's event loops
(``BaseEventLoop``, which uvloop is not) keep the runnable callbacks in ``_ready``, a deque.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["runnable_callbacks"]


def runnable_callbacks(loop: asyncio.AbstractEventLoop) -> int | None:
    """How many callbacks ``loop`` will run in its next turn, or None when the loop does not say."""
    ready = getattr(loop, "_ready", None)
    return len(ready) if isinstance(ready, deque) else None
