"""What the harness modules do with the processes they start: is one alive, what is its
command line, does a port answer, stop some (TERM or KILL, then KILL whatever outlives the timeout)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["alive", "command_line", "owned_pid", "port_open", "stop_pids"]


def alive(pid: int) -> bool:
    try:
        # A zombie (our own child not yet reaped) counts as gone.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> bytes | None:
    """``/proc/<pid>/cmdline``, or None once the process is gone.

    The kernel answers an empty command line for a moment while a process's memory is being
    set up or torn down (a starting JVM reads as b'' now and then), so an empty answer from a
    live process is asked again rather than taken for a stranger's pid.
    """
    for _ in range(40):
        try:
            text = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if text:
            return text
        if not alive(pid):
            return None
        time.sleep(0.05)
    return b""


def owned_pid(pid_file: Path, *markers: bytes) -> int | None:
    """The live pid written in ``pid_file``, if its command line holds every one of ``markers``
    (a recycled pid belongs to someone else); None otherwise."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    cmdline = command_line(pid)
    if cmdline is None or not all(m in cmdline for m in markers) or not alive(pid):
        return None
    return pid


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
