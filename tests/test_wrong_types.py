"""A value of the wrong type raises a TypeError that is also nova's usual error (ValidationError
for tasks and call arguments, ConfigurationError for options), before anything is sent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

import nova
from nova.sim import SimBroker, VirtualClock


class Unsendable(SimBroker):
    async def publish(self, messages: Any) -> None:
        raise AssertionError("nothing may be sent for a wrong-type argument")


def queue(**options: Any) -> nova.TaskQueue:
    return nova.TaskQueue(Unsendable(clock=VirtualClock()), **options)


async def handle(task: nova.Task) -> None:
    return None


TASKS = {
    "payload str": nova.Task("email", "not bytes"),  # type: ignore[arg-type]
    "payload dict": nova.Task("email", {"to": "bob"}),  # type: ignore[arg-type]
    "type int": nova.Task(5, b""),  # type: ignore[arg-type]
    "headers list": nova.Task("email", b"", headers=[("a", "b")]),  # type: ignore[arg-type]
    "header value int": nova.Task("email", b"", headers={"n": 1}),  # type: ignore[dict-item]
    "header name int": nova.Task("email", b"", headers={1: "x"}),  # type: ignore[dict-item]
    "id int": nova.Task("email", b"", id=42),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("task", TASKS.values(), ids=TASKS.keys())
async def test_a_task_with_a_field_of_the_wrong_type(task: nova.Task) -> None:
    with pytest.raises(TypeError) as info:
        await queue().enqueue(task)
    assert isinstance(info.value, nova.ValidationTypeError)
    assert isinstance(info.value, nova.ValidationError)  # the one base to catch, as before


async def test_the_payload_message_says_what_to_fix() -> None:
    with pytest.raises(nova.ValidationTypeError, match=r"Task.payload must be bytes, got str; encode it first"):
        await queue().enqueue(nova.Task("email", "not bytes"))  # type: ignore[arg-type]


ENQUEUE_OPTIONS: dict[str, dict[str, Any]] = {
    "priority str": {"priority": "high"},
    "priority float": {"priority": 2.0},
    "process_in str": {"process_in": "5m"},
    "process_in bool": {"process_in": True},
    "process_at str": {"process_at": "2030-01-01T00:00:00Z"},
    "process_at date-like number": {"process_at": 1_900_000_000},
    "queue int": {"queue": 5},
}


@pytest.mark.parametrize("options", ENQUEUE_OPTIONS.values(), ids=ENQUEUE_OPTIONS.keys())
async def test_an_enqueue_option_of_the_wrong_type(options: dict[str, Any]) -> None:
    with pytest.raises(nova.ValidationTypeError):
        await queue().enqueue(nova.Task("email", b""), **options)


async def test_enqueue_batch_of_a_single_task() -> None:
    with pytest.raises(nova.ValidationTypeError, match=r"a list of nova\.Task"):
        await queue().enqueue_batch(nova.Task("email", b""))  # type: ignore[arg-type]


@pytest.mark.parametrize(("start", "options"), [
    ("start", {"handler": "handle"}),
    ("start", {"concurrency": "8"}),
    ("start", {"concurrency": 1.5}),
    ("start", {"prefetch": None}),
    ("start", {"queues": 5}),
    ("start", {"queues": "default"}),
    ("start_batch", {"aggregator": 100}),
])
async def test_a_start_argument_of_the_wrong_type(start: str, options: dict[str, Any]) -> None:
    q = queue()
    if start == "start":
        arguments = {"handler": handle, **options}
        with pytest.raises(nova.ValidationTypeError):
            await q.start(arguments.pop("handler"), **arguments)
    else:
        with pytest.raises(nova.ValidationTypeError):
            await q.start_batch(handle, **options)  # type: ignore[arg-type]


async def test_stop_timeout_of_the_wrong_type() -> None:
    with pytest.raises(nova.ValidationTypeError, match="timeout must be a timedelta"):
        await queue().stop(timeout=5)  # type: ignore[arg-type]


QUEUE_OPTIONS: dict[str, dict[str, Any]] = {
    "group_id int": {"group_id": 7},
    "topic_prefix None": {"topic_prefix": None},
    "delay_slots list": {"delay_slots": [24, timedelta(hours=1)]},
    "delay_slots count str": {"delay_slots": ("24", timedelta(hours=1))},
    "delay_slots duration int": {"delay_slots": (24, 3600)},
    "message_format str": {"message_format": "json"},
    "codec str": {"codec": "orjson"},
    "recorder dict": {"recorder": {}},
    "retry int": {"retry": 3},
    "priority_policy str": {"priority_policy": "strict"},
    "max_payload_size str": {"max_payload_size": "1MB"},
    "stop_timeout int": {"stop_timeout": 30},
    "recorder_stop_timeout float": {"recorder_stop_timeout": 5.0},
}


@pytest.mark.parametrize("options", QUEUE_OPTIONS.values(), ids=QUEUE_OPTIONS.keys())
def test_a_task_queue_option_of_the_wrong_type(options: dict[str, Any]) -> None:
    with pytest.raises(TypeError) as info:
        queue(**options)
    assert isinstance(info.value, nova.ConfigurationTypeError)
    assert isinstance(info.value, nova.ConfigurationError)


MAKERS: dict[str, Callable[[], object]] = {
    "RetryPolicy max_retries str": lambda: nova.RetryPolicy(max_retries="3"),  # type: ignore[arg-type]
    "RetryPolicy backoff int": lambda: nova.RetryPolicy(backoff=5),  # type: ignore[arg-type]
    "ConstantBackoff int": lambda: nova.ConstantBackoff(5),  # type: ignore[arg-type]
    "ExponentialBackoff base float": lambda: nova.ExponentialBackoff(base=1.0),  # type: ignore[arg-type]
    "ExponentialBackoff factor str": lambda: nova.ExponentialBackoff(factor="2"),  # type: ignore[arg-type]
    "WeightedPriority str": lambda: nova.WeightedPriority(high="6"),  # type: ignore[arg-type]
    "CountAggregator str": lambda: nova.CountAggregator("100"),  # type: ignore[arg-type]
    "TimeAggregator int": lambda: nova.TimeAggregator(10),  # type: ignore[arg-type]
    "TimeCountAggregator window float": lambda: nova.TimeCountAggregator(10, 1.5),  # type: ignore[arg-type]
    "ClickHouseTaskRecorder url bytes": lambda: nova.ClickHouseTaskRecorder.from_url(b"chdb://memory"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_an_option_object_of_the_wrong_type(make: Callable[[], object]) -> None:
    with pytest.raises(nova.ConfigurationTypeError):
        make()


@pytest.mark.parametrize("make", [
    lambda: queue(max_payload_size=0),
    lambda: queue(delay_slots=(0, timedelta(hours=1))),
    lambda: nova.RetryPolicy(max_retries=-1),
    lambda: nova.CountAggregator(0),
])
def test_a_wrong_value_of_the_right_type_is_not_a_type_error(make: Callable[[], object]) -> None:
    with pytest.raises(nova.ConfigurationError) as info:
        make()
    assert not isinstance(info.value, TypeError)


async def test_a_wrong_task_value_of_the_right_type_is_not_a_type_error() -> None:
    for task in (nova.Task("", b""), nova.Task("email", b"", headers={"nova-x": "1"}), nova.Task("e", b"", id="")):
        with pytest.raises(nova.ValidationError) as info:
            await queue().enqueue(task)
        assert not isinstance(info.value, TypeError)
    with pytest.raises(nova.ValidationError) as info:
        await queue().enqueue(nova.Task("email", b""), priority=7)
    assert not isinstance(info.value, TypeError)
    with pytest.raises(nova.ValidationError) as info:
        await queue().enqueue(nova.Task("email", b""), process_at=datetime(2030, 1, 1))  # naive
    assert not isinstance(info.value, TypeError)


def test_a_dead_lettered_task_shows_its_error() -> None:
    task = nova.Task("email", b"hi", id="t1")
    task.attempt, task.error = 4, "ValueError: smtp down"
    assert repr(task) == ("Task(type='email', id='t1', queue='default', priority=NORMAL, attempt=4, "
                          "payload=<2 bytes>, error='ValueError: smtp down')")
    assert "error" not in repr(nova.Task("email", b"hi"))
    assert "payload=<? bytes>" in repr(nova.Task("email", "oops"))  # type: ignore[arg-type]
