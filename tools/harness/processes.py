"""What the harness modules do with the processes they start: is one alive, does a port
answer, stop some (TERM or KILL, then KILL whatever outlives the timeout)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["alive", "port_open", "stop_pids"]


def alive(pid: int) -> bool:
    try:
        # A zombie (our own child not yet reaped) counts as gone.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_pids(pids: Iterable[int], *, kill: bool, timeout: float) -> None:
    """Signal ``pids`` together (TERM, or KILL with ``kill``), wait for all, KILL whatever outlives ``timeout``."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            while alive(pid):
                time.sleep(0.05)
