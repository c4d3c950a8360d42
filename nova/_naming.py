"""Topic and group names the engine gives the broker.

All names use only ``[A-Za-z0-9_-]`` (valid on Kafka, RabbitMQ and RocketMQ),
and no two kinds can collide: a topic prefix has no ``_``, a queue name is
never empty, and each kind ends in a suffix the others cannot end in.

    ready topic      {prefix}_{queue}_{high|normal|low}     e.g. myapp_default_high
    delay tier       {prefix}__delay{NN}                     e.g. myapp__delay03 (tier 3)
    forwarder group  {prefix}__forwarder                     one per prefix, shared by every worker
    worker group     {prefix}_{group_id}
"""

from __future__ import annotations

import re

from nova._errors import ConfigurationError, ConfigurationTypeError, ValidationError, ValidationTypeError
from nova._task import Priority

__all__ = [
    "dead_letter_queue",
    "delay_topic",
    "forwarder_group",
    "ready_topic",
    "validate_prefix",
    "validate_queue",
    "worker_group",
]

QUEUE_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")
PREFIX_RE = re.compile(r"[A-Za-z0-9-]{1,40}")
GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")

_LEVEL_NAMES = {Priority.HIGH: "high", Priority.NORMAL: "normal", Priority.LOW: "low"}


def validate_queue(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_RE.fullmatch(name):
        raise (ValidationError if isinstance(name, str) else ValidationTypeError)(
            f"queue name {name!r} is invalid: use 1-100 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return name


def validate_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise (ConfigurationError if isinstance(prefix, str) else ConfigurationTypeError)(
            f"topic_prefix {prefix!r} is invalid: use 1-40 characters from A-Z, a-z, 0-9 and '-' "
            "(no '_', which separates the parts of topic names)"
        )
    return prefix


def validate_group(group_id: object) -> str:
    if not isinstance(group_id, str) or not GROUP_RE.fullmatch(group_id):
        raise (ConfigurationError if isinstance(group_id, str) else ConfigurationTypeError)(
            f"group_id {group_id!r} is invalid: use 1-80 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return group_id


def dead_letter_queue(queue: str) -> str:
    """Name of the queue that receives ``queue``'s dead tasks.

    >>> dead_letter_queue("default")
    'default_dlq'
    """
    return f"{validate_queue(queue)}_dlq"


def ready_topic(prefix: str, queue: str, priority: Priority) -> str:
    return f"{prefix}_{queue}_{_LEVEL_NAMES[priority]}"


def delay_topic(prefix: str, tier: int) -> str:
    return f"{prefix}__delay{tier:02d}"


def forwarder_group(prefix: str) -> str:
    return f"{prefix}__forwarder"


def worker_group(prefix: str, group_id: str) -> str:
    return f"{prefix}_{group_id}"
