"""``nova worker`` against the real broker chosen with ``--broker``: signals, redelivery to the
next worker, competing worker processes, a killed child, bad apps and unreachable brokers.

Workers run as subprocesses; the test enqueues through its own TaskQueue on the same topic
prefix and reads the ledger the handlers write (tests/worker_support.py). Every wait is on a
condition with a deadline.

On RocketMQ an unacked task comes back only after the consumer's invisible time
(``consume_timeout``); the workers here use 10 s, RocketMQ's minimum, so the redelivery
tests wait up to that long.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nova
from tests.worker_support import ROCKETMQ_INVISIBLE, Setup, WorkerProcess, child_pids, free_port, probe, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and Linux signals")

START = 90.0  # import + connect + join the group, on a busy 2-core machine
REDELIVERY = 90.0  # Kafka: the session timeout (30 s) and a rebalance; RocketMQ: the invisible time (10 s)


@pytest.fixture
def setup(tmp_path: Path, broker_name: str) -> Iterator[Setup]:
    # Two partitions on Kafka, so that two worker processes both get tasks.
    s = Setup(tmp_path, broker_name, NOVA_TEST_PARTITIONS="2")
    yield s
    s.cleanup()


def enqueue(setup: Setup, task_type: str, count: int = 1, *, process_in: float | None = None,
            priority: nova.Priority = nova.Priority.NORMAL) -> list[str]:
    """Enqueue ``count`` tasks from this process (a fresh producer each time); their ids."""

    async def run() -> list[str]:
        queue = setup.queue()
        try:
            results = await queue.enqueue_batch([nova.Task(task_type, b"x") for _ in range(count)],
                                                process_in=process_in, priority=priority)
        finally:
            await queue.stop()
        return [r.id for r in results]

    return asyncio.run(run())


def not_redelivered_proof(setup: Setup, broker: str, slow_id: str) -> None:
    """A fresh worker handles a task enqueued after ``slow_id``'s worker stopped; had ``slow_id``
    not been acked, that worker would have started it first (Kafka's partition order,
    RabbitMQ's requeue at the head, RocketMQ's invisible time ending before the sentinel's delay)."""
    after = setup.worker("workerapp:app", "--concurrency", "1")
    delay = ROCKETMQ_INVISIBLE + 5.0 if broker == "rocketmq" else None
    [sentinel] = enqueue(setup, "quick", process_in=delay)
    wait_until(lambda: len(setup.done(sentinel)) == 1, START + (delay or 0), "the sentinel handled")
    assert len(setup.started(slow_id)) == 1
    after.signal(signal.SIGTERM)
    assert after.wait(60) == 0


def test_sigterm_during_a_slow_handler_completes_it_exit_0_not_redelivered(setup: Setup, broker_name: str) -> None:
    port = free_port()
    worker = setup.worker("workerapp:app", "--health-port", str(port), "--health-host", "127.0.0.1")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "ready")
    [slow_id] = enqueue(setup, "slow")
    wait_until(lambda: len(setup.started(slow_id)) == 1, START, "the slow task started")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: probe(port, "/readyz") == (503, "stopping\n"), 30, "not ready while stopping")
    setup.release()
    assert worker.wait(60) == 0, worker.output
    assert len(setup.done(slow_id)) == 1
    not_redelivered_proof(setup, broker_name, slow_id)


def test_second_sigint_exits_1_and_the_task_goes_to_the_next_worker(setup: Setup) -> None:
    first = setup.worker("workerapp:app")
    first.wait_for_output("ready: consuming default", START)
    [slow_id] = enqueue(setup, "slow")
    wait_until(lambda: len(setup.started(slow_id)) == 1, START, "the slow task started")
    first.signal(signal.SIGINT)
    first.wait_for_output("SIGINT: stopping", 30)
    first.signal(signal.SIGINT)
    assert first.wait(30) == 1, first.output
    assert setup.done(slow_id) == []
    second = setup.worker("workerapp:app")
    wait_until(lambda: len(setup.started(slow_id)) == 2, START + REDELIVERY, "the task redelivered")
    assert setup.started(slow_id)[1].pid == second.pid
    setup.release()
    wait_until(lambda: len(setup.done(slow_id)) == 1, 30, "the task done")
    second.signal(signal.SIGTERM)
    assert second.wait(60) == 0


def two_ready_workers(setup: Setup) -> tuple[WorkerProcess, int]:
    """A supervisor of two worker processes (concurrency 1, prefetch 1), once both are ready; its health port."""
    port = free_port()
    supervisor = setup.worker("workerapp:app", "--processes", "2", "--concurrency", "1", "--prefetch", "1",
                              "--health-port", str(port), "--health-host", "127.0.0.1")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "both workers ready")
    return supervisor, port


def test_two_processes_both_take_tasks(setup: Setup) -> None:
    supervisor, _ = two_ready_workers(setup)
    children = set(child_pids(supervisor.pid))
    ids = enqueue(setup, "slow", 2)
    # Each worker holds one task (concurrency 1, prefetch 1) until released: the other must take the second.
    wait_until(lambda: len(setup.started()) == 2, START, "both tasks started")
    pids = {e.pid for e in setup.started()}
    assert len(pids) == 2 and pids <= children, (pids, children)
    setup.release()
    wait_until(lambda: sorted(e.task_id for e in setup.done()) == sorted(ids), 30, "both done")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.output


def test_a_second_worker_takes_tasks_of_every_priority_level(setup: Setup) -> None:
    """Scaling out: a worker runs, a second one starts; with two tasks of each level and each
    worker holding at most one task of a level (prefetch 1, concurrency 1), each worker takes
    one task of every level (Kafka: the second worker gets one of the two partitions of every
    level, not the first one's idle partitions whatever their level)."""
    first = setup.worker("workerapp:app", "--concurrency", "1", "--prefetch", "1")
    first.wait_for_output("ready: consuming default", START)
    second = setup.worker("workerapp:app", "--concurrency", "1", "--prefetch", "1")
    second.wait_for_output("ready: consuming default", START)
    levels = {level: enqueue(setup, "slow", 2, priority=level) for level in nova.Priority}
    wait_until(lambda: len(setup.started()) == 2, START, "a task started in each worker")
    setup.release()
    wait_until(lambda: len(setup.done()) == 6, 30, "all six done")
    started = {e.task_id: e.pid for e in setup.started()}
    for level, ids in levels.items():
        assert {started[i] for i in ids} == {first.pid, second.pid}, (level.name, started)
    for worker in (first, second):
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output


def test_more_worker_processes_than_partitions_is_a_warning(setup: Setup, broker_name: str) -> None:
    if broker_name != "kafka":
        pytest.skip("only Kafka has partitions (a queue of RabbitMQ or RocketMQ feeds any number of workers)")
    supervisor = setup.worker("workerapp:app", "--processes", "3")  # the topics here have 2 partitions
    # one warning per topic, written one after another: wait for the one this test checks
    supervisor.wait_for_output(f"topic {setup.prefix}_default_normal has 2 partition(s): 1 process(es) get none",
                               START)
    assert "3 worker processes but its topic" in supervisor.output
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.output


# By default a killed worker's unacked tasks reach another worker within this many seconds.
# Kafka: the session timeout (30 s by default) ends the dead member, then the group rebalances.
REDELIVERY_BOUND = {"kafka": 60.0}


def test_a_killed_child_is_restarted_and_its_task_redelivered(setup: Setup, broker_name: str) -> None:
    supervisor, port = two_ready_workers(setup)
    [slow_id] = enqueue(setup, "slow")
    wait_until(lambda: len(setup.started(slow_id)) == 1, START, "the slow task started")
    victim = setup.started(slow_id)[0].pid
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for_output(f"(pid {victim}) killed by SIGKILL", 30)
    bound = REDELIVERY_BOUND.get(broker_name)
    if bound is not None:
        within = max(0.0, killed_at + bound - time.monotonic())
        wait_until(lambda: len(setup.started(slow_id)) == 2, within,
                   f"the task redelivered within {bound:g} s of the kill")
    else:
        wait_until(lambda: len(setup.started(slow_id)) == 2, START + REDELIVERY, "the task redelivered")
    assert setup.started(slow_id)[1].pid != victim
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "the restarted worker ready")
    assert victim not in child_pids(supervisor.pid) and len(child_pids(supervisor.pid)) == 2
    setup.release()
    wait_until(lambda: len(setup.done(slow_id)) == 1, 30, "the task done")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.output


def test_bad_module_attr_is_exit_2(setup: Setup) -> None:
    worker = setup.worker("workerapp:LEDGER")
    assert worker.wait(START) == 2
    assert "nova worker: error: 'LEDGER' in workerapp is a PosixPath, expected a nova.App" in worker.output


SECRET = "hunter2-Secret"


def _bad_urls(broker: str) -> dict[str, str]:
    if broker == "kafka":
        sasl = os.environ["NOVA_KAFKA_SASL_BOOTSTRAP"]
        return {"unreachable": f"kafka://nova:{SECRET}@127.0.0.1:1",
                "refused": f"kafka://{os.environ['NOVA_KAFKA_USER']}:{SECRET}@{sasl}"}
    if broker == "rabbitmq":
        host = os.environ["NOVA_RABBITMQ_URL"].rsplit("@", 1)[1]
        return {"unreachable": f"amqp://nova:{SECRET}@127.0.0.1:1/",
                "refused": f"amqp://{os.environ['NOVA_RABBITMQ_USER']}:{SECRET}@{host}"}
    endpoint = os.environ["NOVA_ROCKETMQ_ENDPOINTS"]
    urls = {"unreachable": f"rocketmq://nova:{SECRET}@127.0.0.1:1"}
    if os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY"):  # ACL on: a wrong secret is refused
        urls["refused"] = f"rocketmq://{os.environ['NOVA_ROCKETMQ_ACCESS_KEY']}:{SECRET}@{endpoint}"
    return urls


@pytest.mark.parametrize("case", ["unreachable", "refused"])
def test_unreachable_or_refusing_broker_is_exit_3_within_15_s_without_secrets(
    setup: Setup, broker_name: str, case: str
) -> None:
    url = _bad_urls(broker_name).get(case)
    if url is None:
        pytest.skip("this RocketMQ runs without ACL: nothing refuses credentials")
    (setup.dir / "badbroker.py").write_text(
        "import os\nimport nova\napp = nova.App(os.environ['NOVA_TEST_URL'])\n"
        "@app.task('x')\nasync def x(task): ...\n")
    setup.env["NOVA_TEST_URL"] = url
    worker = setup.worker("badbroker:app")
    worker.wait_for_output("starting:", START)
    started = time.monotonic()
    assert worker.wait(30) == 3, worker.output
    assert time.monotonic() - started < 16.0
    assert SECRET not in worker.output
    assert "ERROR" in worker.output

