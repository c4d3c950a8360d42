"""What the cluster tests share: the harness's cluster variables and its node verbs."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 120.0  # a stopped node's leaderships move within seconds; a loaded box needs slack


def require_cluster(broker: str, variables: tuple[str, ...]) -> dict[str, str]:
    """The cluster's ``NOVA_*`` variables; missing ones (or a single node's) FAIL the test."""
    nodes_var = f"NOVA_{broker.upper()}_NODES"
    missing = [v for v in (nodes_var, *variables) if not os.environ.get(v)]
    if missing or int(os.environ[nodes_var]) < 3:
        pytest.fail(
            f"--cluster needs a {broker} cluster's variables ({', '.join(missing) or nodes_var + ' >= 3'}): run "
            f"`python tools/brokers.py up {broker} --nodes 3` and "
            f'`eval "$(python tools/brokers.py env {broker} --nodes 3)"` first',
            pytrace=False,
        )
    return {v: os.environ[v] for v in (nodes_var, *variables)}


async def harness(*args: str) -> str:
    """Run ``python tools/brokers.py ARGS`` (stop-node, start-node, leader); its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tools" / "brokers.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, f"brokers.py {' '.join(args)} failed ({process.returncode}):\n{err.decode()}"
    return out.decode().strip()


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, within: float = PATIENCE
) -> None:
    """Wait until ``predicate()`` (or what it returns, awaited) holds; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.05)
