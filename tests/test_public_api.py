"""The public surface is pinned; broker clients are imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nova
import nova.sim

EXPECTED = {
    "Aggregator", "App", "AuthenticationError", "Backoff", "BlobCodec", "Broker", "BrokerError",
    "ClickHouseTaskRecorder", "Clock", "ClosedError", "ConfigurationError", "ConfigurationTypeError", "ConnectionError",
    "ConstantBackoff", "ConsumerModel", "CountAggregator", "DecodeError", "DelayTiers", "Delivery",
    "EnqueueError", "ExponentialBackoff", "JsonCodec", "KafkaAuth", "KafkaBroker", "KafkaSSL",
    "MemoryTaskRecorder", "Message", "MessageCodec", "MessageFormat", "Middleware", "NovaError",
    "OpenTelemetryTracing", "Outcome", "PayloadTooLarge", "Priority", "PriorityPolicy", "PrometheusMetrics",
    "ProtobufCodec", "QueryableTaskRecorder", "RabbitMQBroker", "Result", "RetryPolicy",
    "RocketMQAdmin", "RocketMQBroker", "SonicCodec", "StateError", "StrictPriority", "Subscription", "SystemClock",
    "SyncTaskQueue", "Task",
    "TaskBody", "TaskEvent", "TaskLogFilter", "TaskQueue", "TaskRecord", "TaskRecorder", "TaskStatus",
    "TaskTimeout", "TimeAggregator",
    "TimeCountAggregator", "ValidationError", "ValidationTypeError", "WeightedPriority", "dead_letter_queue",
}


def test_public_surface_is_pinned() -> None:
    assert set(nova.__all__) == EXPECTED
    assert set(nova.sim.__all__) == {"SimBroker", "SimDelivery", "SimSubscription", "VirtualClock"}


def test_eager_names_exist() -> None:
    lazy = {"KafkaBroker", "KafkaAuth", "KafkaSSL", "RabbitMQBroker", "RocketMQBroker", "RocketMQAdmin",
            "ConsumerModel", "ClickHouseTaskRecorder", "PrometheusMetrics", "OpenTelemetryTracing"}
    for name in EXPECTED - lazy:
        assert getattr(nova, name) is not None


def test_import_nova_imports_no_broker_client() -> None:
    code = (
        "import sys, nova, nova.sim\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('aiokafka', 'aio_pika', 'aiormq', 'rocketmq', 'grpc', 'clickhouse_connect', 'chdb', 'orjson', "
        "'prometheus_client', 'opentelemetry')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['aiokafka'] = None\n"
        "import nova\n"
        "try:\n"
        "    nova.KafkaBroker\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "nova-taskqueue[kafka]" in out.stdout


@pytest.mark.parametrize(("module", "name", "extra"), [
    ("prometheus_client", "PrometheusMetrics", "nova-taskqueue[metrics]"),
    ("opentelemetry", "OpenTelemetryTracing", "nova-taskqueue[otel]"),
])
def test_observability_without_its_extra_names_the_extra(module: str, name: str, extra: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "import nova\n"
        "try:\n"
        f"    nova.{name}()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert extra in out.stdout


def test_error_tree() -> None:
    assert issubclass(nova.PayloadTooLarge, nova.ValidationError)
    assert issubclass(nova.ValidationError, ValueError)
    assert issubclass(nova.ConnectionError, nova.BrokerError)
    assert issubclass(nova.ClosedError, nova.StateError)
    # a value of the wrong type: a TypeError, still caught as the invalid argument it is
    assert issubclass(nova.ValidationTypeError, nova.ValidationError)
    assert issubclass(nova.ValidationTypeError, TypeError)
    assert issubclass(nova.ConfigurationTypeError, nova.ConfigurationError)
    assert issubclass(nova.ConfigurationTypeError, TypeError)
    for name in ("EnqueueError", "DecodeError", "BrokerError", "StateError", "ConfigurationError", "TaskTimeout"):
        assert issubclass(getattr(nova, name), nova.NovaError)
    assert issubclass(nova.TaskTimeout, TimeoutError)


def test_dead_letter_queue_name() -> None:
    assert nova.dead_letter_queue("default") == "default_dlq"
