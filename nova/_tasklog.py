"""TaskLogFilter: log records made while a handler of a nova.App runs name its task.

    handler = logging.StreamHandler()
    handler.addFilter(nova.TaskLogFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s%(task)s: %(message)s"))
    # INFO shop.tasks [task=5f0c... type=email queue=default]: sent

``nova worker`` installs it on its log handler. Attach it to a *handler* (not a logger), so
it sees every record, the handler's own and its libraries' too. The task travels in a
context variable: a sync handler's thread and the tasks a handler creates see it as well.
"""

from __future__ import annotations

import logging

from nova._handlers import CURRENT_TASK

__all__ = ["TaskLogFilter"]


class TaskLogFilter(logging.Filter):
    """Sets ``task_id``, ``task_type``, ``task_queue`` (None outside a handler) and ``task``
    (`` [task=ID type=T queue=Q]``, or ``""``) on every record; filters nothing out."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT_TASK.get()
        if current is None:
            record.task_id = record.task_type = record.task_queue = None
            record.task = ""
        elif isinstance(current, list):
            first = current[0] if current else None
            task_type, queue = (first.type, first.queue) if first else (None, None)
            record.task_id, record.task_type, record.task_queue = None, task_type, queue
            record.task = f" [batch of {len(current)} type={task_type} queue={queue}]"
        else:
            record.task_id, record.task_type, record.task_queue = current.id, current.type, current.queue
            record.task = f" [task={current.id} type={current.type} queue={current.queue}]"
        return True
