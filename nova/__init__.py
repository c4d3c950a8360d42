"""nova: one asyncio task-queue API over Kafka, RabbitMQ, RocketMQ and a simulated broker.

    import nova
    from nova.sim import SimBroker, VirtualClock

    queue = nova.TaskQueue(SimBroker(clock=VirtualClock()))
    result = await queue.enqueue(nova.Task("email", b"hi"), priority=nova.Priority.HIGH)

Broker adapters are imported lazily, so ``import nova`` needs no broker client:
``nova.KafkaBroker`` needs ``nova-taskqueue[kafka]``, ``nova.RabbitMQBroker``
``[rabbitmq]``, ``nova.RocketMQBroker`` and ``nova.RocketMQAdmin`` ``[rocketmq]``, ``nova.ClickHouseTaskRecorder``
``[clickhouse]``, ``nova.PrometheusMetrics`` ``[metrics]``, ``nova.OpenTelemetryTracing`` ``[otel]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nova._aggregators import Aggregator, CountAggregator, TimeAggregator, TimeCountAggregator
from nova._app import App
from nova._broker import Broker, Delivery, Message, Subscription
from nova._clock import Clock, SystemClock
from nova._codecs import (
    BlobCodec,
    JsonCodec,
    MessageCodec,
    MessageFormat,
    ProtobufCodec,
    SonicCodec,
    TaskBody,
)
from nova._delay import DelayTiers
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConfigurationTypeError,
    ConnectionError,
    DecodeError,
    EnqueueError,
    NovaError,
    PayloadTooLarge,
    StateError,
    TaskTimeout,
    ValidationError,
    ValidationTypeError,
)
from nova._middleware import Middleware, Outcome
from nova._naming import dead_letter_queue
from nova._policies import (
    Backoff,
    ConstantBackoff,
    ExponentialBackoff,
    PriorityPolicy,
    RetryPolicy,
    StrictPriority,
    WeightedPriority,
)
from nova._queue import TaskQueue
from nova._recording import (
    MemoryTaskRecorder,
    QueryableTaskRecorder,
    TaskEvent,
    TaskRecord,
    TaskRecorder,
    TaskStatus,
)
from nova._sync import SyncTaskQueue
from nova._task import Priority, Result, Task
from nova._tasklog import TaskLogFilter
from nova.brokers import PUBLIC_NAMES

if TYPE_CHECKING:
    from nova._clickhouse import ClickHouseTaskRecorder
    from nova._otel import OpenTelemetryTracing
    from nova._prometheus import PrometheusMetrics
    from nova.brokers.kafka import KafkaAuth, KafkaBroker, KafkaSSL
    from nova.brokers.rabbitmq import RabbitMQBroker
    from nova.brokers.rocketmq import ConsumerModel, RocketMQAdmin, RocketMQBroker

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "App",
    "AuthenticationError",
    "Backoff",
    "BlobCodec",
    "Broker",
    "BrokerError",
    "ClickHouseTaskRecorder",
    "Clock",
    "ClosedError",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ConnectionError",
    "ConstantBackoff",
    "ConsumerModel",
    "CountAggregator",
    "DecodeError",
    "DelayTiers",
    "Delivery",
    "EnqueueError",
    "ExponentialBackoff",
    "JsonCodec",
    "KafkaAuth",
    "KafkaBroker",
    "KafkaSSL",
    "MemoryTaskRecorder",
    "Message",
    "MessageCodec",
    "MessageFormat",
    "Middleware",
    "NovaError",
    "OpenTelemetryTracing",
    "Outcome",
    "PayloadTooLarge",
    "Priority",
    "PriorityPolicy",
    "PrometheusMetrics",
    "ProtobufCodec",
    "QueryableTaskRecorder",
    "RabbitMQBroker",
    "Result",
    "RetryPolicy",
    "RocketMQAdmin",
    "RocketMQBroker",
    "SonicCodec",
    "StateError",
    "StrictPriority",
    "Subscription",
    "SyncTaskQueue",
    "SystemClock",
    "Task",
    "TaskBody",
    "TaskEvent",
    "TaskLogFilter",
    "TaskQueue",
    "TaskRecord",
    "TaskRecorder",
    "TaskStatus",
    "TaskTimeout",
    "TimeAggregator",
    "TimeCountAggregator",
    "ValidationError",
    "ValidationTypeError",
    "WeightedPriority",
    "dead_letter_queue",
]

# Names whose modules need an optional client library, imported on first use.
_LAZY = {**PUBLIC_NAMES, "ClickHouseTaskRecorder": "nova._clickhouse", "PrometheusMetrics": "nova._prometheus",
         "OpenTelemetryTracing": "nova._otel"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nova' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
