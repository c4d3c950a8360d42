"""nova.SyncTaskQueue: blocking enqueues from many threads, close, and use after close."""

from __future__ import annotations

import threading

import pytest

import nova
from nova._naming import ready_topic
from nova.sim import SimBroker


def test_enqueue_from_8_threads_at_once() -> None:
    broker = SimBroker()
    queue = nova.SyncTaskQueue(broker, topic_prefix="sync", close_broker=False)
    start = threading.Barrier(8)
    results: dict[int, list[nova.Result]] = {}

    def producer(n: int) -> None:
        start.wait()
        mine = [queue.enqueue(nova.Task("email", f"{n}-{i}".encode())) for i in range(50)]
        mine += queue.enqueue_batch([nova.Task("email", f"{n}-b{i}".encode()) for i in range(10)],
                                    priority=nova.Priority.HIGH)
        results[n] = mine

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    queue.close()
    assert sorted(results) == list(range(8))
    ids = {r.id for rs in results.values() for r in rs}
    assert len(ids) == 8 * 60
    assert broker.depth(ready_topic("sync", "default", nova.Priority.NORMAL)) == 8 * 50
    assert broker.depth(ready_topic("sync", "default", nova.Priority.HIGH)) == 8 * 10


def test_closed_queue_refuses_and_close_is_idempotent() -> None:
    with nova.SyncTaskQueue("sim://", topic_prefix="sync") as queue:
        result = queue.enqueue(nova.Task("email", b"hi"), queue="mail")
        assert result.queue == "mail" and len(result.id) == 32
        with pytest.raises(nova.ValidationError, match=r"Task\.type"):
            queue.enqueue(nova.Task("", b"hi"))  # errors reach the calling thread
    with pytest.raises(nova.ClosedError, match="closed"):
        queue.enqueue(nova.Task("email", b"hi"))
    with pytest.raises(nova.ClosedError):
        queue.enqueue_batch([nova.Task("email", b"hi")])
    queue.close()
    assert "closed" in repr(queue)
    assert not queue._thread.is_alive()


def test_bad_options_fail_in_the_calling_thread() -> None:
    with pytest.raises(nova.ConfigurationError, match="topic_prefix"):
        nova.SyncTaskQueue("sim://", topic_prefix="bad_prefix")


def test_an_app_made_from_a_broker_object_or_a_sim_url_is_refused_clearly() -> None:
    with pytest.raises(nova.ConfigurationError, match=r"make the App from a URL"):
        nova.SyncTaskQueue(nova.App(SimBroker()))
    with pytest.raises(nova.ConfigurationError, match=r"second, separate in-memory broker"):
        nova.SyncTaskQueue(nova.App("sim://"))
