"""nova.PrometheusMetrics on SimBroker and a VirtualClock: exact counts after a scripted run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

import nova
from nova.sim import SimBroker, VirtualClock

RETRY = nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(seconds=5)))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    got: float | None = registry.get_sample_value(name, labels)
    return got


def processed(registry: CollectorRegistry, task_type: str, queue: str = "default") -> dict[str, float | None]:
    return {status: value(registry, "nova_tasks_processed_total", queue=queue, type=task_type, status=status)
            for status in ("completed", "failed", "timed_out", "retried", "dead_lettered")}


async def test_a_scripted_run_gives_exact_counts(broker: SimBroker, clock: VirtualClock,
                                                 registry: CollectorRegistry) -> None:
    metrics = nova.PrometheusMetrics(registry=registry)
    queue = nova.TaskQueue(broker, retry=RETRY, middleware=[metrics])
    flaky_runs = 0

    async def handle(task: nova.Task) -> None:
        nonlocal flaky_runs
        if task.type == "ok":
            await clock.sleep(1)
        elif task.type == "flaky":
            flaky_runs += 1
            if flaky_runs == 1:
                raise RuntimeError("first time")
        elif task.type == "bad":
            raise ValueError("always")
        elif task.type == "slow":
            await clock.sleep(60)

    await queue.enqueue_batch([nova.Task("ok") for _ in range(3)])
    await queue.enqueue(nova.Task("flaky"), priority=nova.Priority.HIGH)
    await queue.enqueue(nova.Task("bad"), priority=nova.Priority.LOW)
    await queue.enqueue(nova.Task("slow"))
    await queue.start(handle, timeout=timedelta(seconds=10))
    await clock.advance(timedelta(minutes=2))

    assert processed(registry, "ok") == {"completed": 3, "failed": 0, "timed_out": 0, "retried": 0,
                                         "dead_lettered": 0}
    assert processed(registry, "flaky") == {"completed": 1, "failed": 1, "timed_out": 0, "retried": 1,
                                            "dead_lettered": 0}
    assert processed(registry, "bad") == {"completed": 0, "failed": 2, "timed_out": 0, "retried": 1,
                                          "dead_lettered": 1}
    assert processed(registry, "slow") == {"completed": 0, "failed": 0, "timed_out": 2, "retried": 1,
                                           "dead_lettered": 1}
    assert value(registry, "nova_tasks_enqueued_total", queue="default", type="ok", priority="normal") == 3
    assert value(registry, "nova_tasks_enqueued_total", queue="default", type="flaky", priority="high") == 1
    assert value(registry, "nova_tasks_enqueued_total", queue="default", type="bad", priority="low") == 1
    # Handler time: the virtual clock's seconds, exactly.
    assert value(registry, "nova_task_duration_seconds_count", queue="default", type="ok") == 3
    assert value(registry, "nova_task_duration_seconds_sum", queue="default", type="ok") == 3.0
    assert value(registry, "nova_task_duration_seconds_bucket", queue="default", type="ok", le="0.5") == 0
    assert value(registry, "nova_task_duration_seconds_bucket", queue="default", type="ok", le="1.0") == 3
    assert value(registry, "nova_task_duration_seconds_count", queue="default", type="slow") == 2
    assert value(registry, "nova_task_duration_seconds_sum", queue="default", type="slow") == 20.0
    assert value(registry, "nova_task_duration_seconds_count", queue="default", type="bad") == 2
    assert value(registry, "nova_tasks_in_progress", queue="default") == 0
    assert value(registry, "nova_enqueue_errors_total", queue="default") is None
    assert value(registry, "nova_recorder_dropped_total") == 0
    await queue.stop()


async def test_wait_is_from_due_to_start(broker: SimBroker, clock: VirtualClock,
                                         registry: CollectorRegistry) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry)])

    async def handle(task: nova.Task) -> None:
        await clock.sleep(2)

    await queue.enqueue_batch([nova.Task("job") for _ in range(3)])
    await queue.enqueue(nova.Task("later"), process_in=timedelta(seconds=30))
    await queue.start(handle, concurrency=1)
    await clock.advance(timedelta(minutes=1))
    # One at a time, 2 s each: the three waited 0, 2 and 4 s; the delayed one started when due.
    assert value(registry, "nova_task_wait_seconds_count", queue="default", type="job") == 3
    assert value(registry, "nova_task_wait_seconds_sum", queue="default", type="job") == 6.0
    assert value(registry, "nova_task_wait_seconds_bucket", queue="default", type="job", le="0.005") == 1
    assert value(registry, "nova_task_wait_seconds_bucket", queue="default", type="job", le="2.5") == 2
    assert value(registry, "nova_task_wait_seconds_bucket", queue="default", type="job", le="5.0") == 3
    assert value(registry, "nova_task_wait_seconds_count", queue="default", type="later") == 1
    assert value(registry, "nova_task_wait_seconds_sum", queue="default", type="later") == 0.0
    await queue.stop()


async def test_backlog_and_in_progress_gauges(broker: SimBroker, clock: VirtualClock,
                                              registry: CollectorRegistry) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry)])
    release = asyncio.Event()

    async def handle(task: nova.Task) -> None:
        await release.wait()

    await queue.enqueue_batch([nova.Task("job") for _ in range(5)])
    await queue.enqueue_batch([nova.Task("job") for _ in range(2)], priority=nova.Priority.HIGH)
    await queue.start(handle, concurrency=2, prefetch=2)
    await clock.settle()
    assert value(registry, "nova_tasks_in_progress", queue="default") == 2
    # Two started (both high first); what waits, fetched or not: 5 normal, 0 high.
    assert value(registry, "nova_queue_backlog", queue="default", priority="normal") == 5
    assert value(registry, "nova_queue_backlog", queue="default", priority="high") == 0
    assert value(registry, "nova_queue_backlog", queue="default", priority="low") == 0
    # A scrape from another thread (prometheus_client's HTTP server) reads them on the loop.
    text = (await asyncio.to_thread(prometheus_client.generate_latest, registry)).decode()
    assert 'nova_queue_backlog{priority="normal",queue="default"} 5.0' in text
    release.set()
    await clock.settle()
    assert value(registry, "nova_queue_backlog", queue="default", priority="normal") == 0
    assert value(registry, "nova_tasks_in_progress", queue="default") == 0
    assert processed(registry, "job")["completed"] == 7
    await queue.stop()


async def test_enqueue_errors_count_broker_failures_not_bad_input(broker: SimBroker,
                                                                  registry: CollectorRegistry) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry)])
    broker.fail_publishes(1)
    with pytest.raises(nova.EnqueueError):
        await queue.enqueue(nova.Task("job"), queue="orders")
    with pytest.raises(nova.ValidationError):
        await queue.enqueue(nova.Task(""), queue="orders")
    await queue.enqueue(nova.Task("job"), queue="orders")
    assert value(registry, "nova_enqueue_errors_total", queue="orders") == 1
    assert value(registry, "nova_tasks_enqueued_total", queue="orders", type="job", priority="normal") == 1
    await queue.stop()


async def test_task_types_beyond_the_limit_are_other(broker: SimBroker, clock: VirtualClock,
                                                     registry: CollectorRegistry) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry, max_types=2)])

    async def handle(task: nova.Task) -> None:
        return None

    await queue.enqueue_batch([nova.Task(f"t{i}") for i in range(5)])
    await queue.start(handle)
    await clock.settle()
    text = prometheus_client.generate_latest(registry).decode()
    types = {line.split('type="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("nova_tasks_processed_total{")}
    assert types == {"t0", "t1", "other"}
    assert processed(registry, "other")["completed"] == 3
    assert value(registry, "nova_tasks_enqueued_total", queue="default", type="other", priority="normal") == 3
    await queue.stop()


async def test_an_app_counts_batches_and_unknown_types(broker: SimBroker, clock: VirtualClock,
                                                       registry: CollectorRegistry) -> None:
    app = nova.App(broker, retry=RETRY, middleware=[nova.PrometheusMetrics(registry=registry)])

    @app.batch("report", nova.CountAggregator(3), queue="reports")
    async def reports(tasks: list[nova.Task]) -> None:
        await clock.sleep(4)

    @app.task("email")
    async def email(task: nova.Task) -> None:
        return None

    await app.enqueue_batch([nova.Task("report") for _ in range(3)])
    await app.enqueue(nova.Task("fax"), queue="reports")  # no handler on that queue
    await app.enqueue(nova.Task("email"))
    await app.start()
    await clock.advance(timedelta(seconds=10))
    assert processed(registry, "report", "reports")["completed"] == 3
    assert value(registry, "nova_task_duration_seconds_count", queue="reports", type="report") == 1  # one batch
    assert value(registry, "nova_task_duration_seconds_sum", queue="reports", type="report") == 4.0
    assert value(registry, "nova_task_wait_seconds_count", queue="reports", type="report") == 3
    assert processed(registry, "fax", "reports") == {"completed": 0, "failed": 1, "timed_out": 0, "retried": 0,
                                                     "dead_lettered": 1}
    assert processed(registry, "email")["completed"] == 1
    assert value(registry, "nova_tasks_in_progress", queue="reports") == 0
    await app.stop()


def test_options_are_checked(registry: CollectorRegistry) -> None:
    with pytest.raises(nova.ConfigurationTypeError, match="CollectorRegistry"):
        nova.PrometheusMetrics(registry="default")  # type: ignore[arg-type]
    with pytest.raises(nova.ConfigurationError, match="max_types"):
        nova.PrometheusMetrics(registry=registry, max_types=0)
    with pytest.raises(nova.ConfigurationError, match="increasing"):
        nova.PrometheusMetrics(registry=registry, buckets=(1.0, 0.5))
    nova.PrometheusMetrics(registry=registry)
    with pytest.raises(nova.ConfigurationError, match="share their buckets"):
        nova.PrometheusMetrics(registry=registry, buckets=(1.0, 2.0))
    with pytest.raises(nova.ConfigurationTypeError, match=r"list of nova\.Middleware"):
        nova.TaskQueue(SimBroker(), middleware=nova.PrometheusMetrics(registry=registry))  # type: ignore[arg-type]


async def test_two_metrics_on_one_registry_add_up(broker: SimBroker, clock: VirtualClock,
                                                  registry: CollectorRegistry) -> None:
    first = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry)])
    second = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(registry=registry)])
    await first.enqueue(nova.Task("job"))
    await second.enqueue(nova.Task("job"))
    assert value(registry, "nova_tasks_enqueued_total", queue="default", type="job", priority="normal") == 2
    await first.stop()
    await second.stop()
