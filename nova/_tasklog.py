"""TaskLogFilter: log records made while a handler of a nova.App runs name its task.

    handler = logging.StreamHandler()
    handler.addFilter(nova.TaskLogFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s%(task)s: %(message)s"))
    # INFO shop.tasks [task=5f0c... type=email queue=default attempt=1]: sent

``nova worker`` installs it on its log handler (``--log-format json`` writes the same fields as
keys of one JSON object per line). Attach it to a *handler* (not a logger), so
it sees every record, the handler's own and its libraries' too. The task travels in a
context variable: a sync handler's thread and the tasks a handler creates see it as well.
"""

from __future__ import annotations

import logging

from nova._handlers import CURRENT_TASK

__all__ = ["TaskLogFilter"]


class TaskLogFilter(logging.Filter):
    """Sets ``task_id``, ``task_type``, ``task_queue``, ``task_attempt`` (None outside a handler)
    and ``task`` (`` [task=ID type=T queue=Q attempt=N]``, or ``""``) on every record; filters
    nothing out. In a batch handler: the batch's type and queue, no id or attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT_TASK.get()
        if current is None:
            record.task_id = record.task_type = record.task_queue = record.task_attempt = None
            record.task = ""
        elif isinstance(current, list):
            first = current[0] if current else None
            task_type, queue = (first.type, first.queue) if first else (None, None)
            record.task_id, record.task_type, record.task_queue, record.task_attempt = None, task_type, queue, None
            record.task = f" [batch of {len(current)} type={task_type} queue={queue}]"
        else:
            record.task_id, record.task_type, record.task_queue = current.id, current.type, current.queue
            record.task_attempt = current.attempt
            record.task = f" [task={current.id} type={current.type} queue={current.queue} attempt={current.attempt}]"
        return True
