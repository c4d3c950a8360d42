"""asyncio's private shape that VirtualClock relies on (nova/sim/_asyncio_internals.py).

If this fails after a Python upgrade, VirtualClock.settle falls back to yielding many
times, which is slower and can move time before a long chain of callbacks finished.
"""

from __future__ import annotations

import asyncio
from collections import deque

from nova.sim._asyncio_internals import runnable_callbacks


async def test_the_running_loop_keeps_its_runnable_callbacks_in_a_deque_named_ready() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(getattr(loop, "_ready", None), deque), (
        f"{type(loop).__name__} has no '_ready' deque: VirtualClock.settle cannot tell when the program is quiet"
    )


async def test_runnable_callbacks_counts_what_the_next_turn_runs() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    before = runnable_callbacks(loop)
    assert before is not None
    loop.call_soon(lambda: None)
    loop.call_soon(lambda: None)
    assert runnable_callbacks(loop) == before + 2


def test_a_loop_without_the_attribute_says_nothing() -> None:
    class Opaque(asyncio.AbstractEventLoop):
        pass

    assert runnable_callbacks(Opaque()) is None
