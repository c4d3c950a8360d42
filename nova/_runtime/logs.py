"""Log setup of ``nova worker``: one stream, each line with the process id and, while a
handler runs, its task (``nova.TaskLogFilter``), so ``grep TASK_ID`` tells a task's story."""

from __future__ import annotations

import logging
import sys

from nova._tasklog import TaskLogFilter

__all__ = ["LEVELS", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(task)s: %(message)s"


def setup_logging(level: str) -> None:
    """Replace the root logger's handlers with one to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskLogFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def flush_logs() -> None:
    """Flush every handler of the root logger (before an ``os._exit``)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
