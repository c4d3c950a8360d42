"""The nova.App of the chaos run (``tools/chaos.py``): its workers run ``nova worker chaos_app:app``
and its producer enqueues through it.

    queue "work"   task types "async" (an async handler) and "sync" (a sync one, run in a thread)
    queue "bulk"   task type "bulk", a batch handler (up to 50 tasks, or 0.5 s after the first)

Every handler writes one line per task to its process's own ledger file before it returns,
so before the task can be acknowledged (times in epoch seconds)::

    D <task id> <handler start> <handler end> <attempt>
    M <task id>                  the payload is not the task id (it always is, as enqueued)

The broker and the run come from the environment the chaos run sets: ``CHAOS_BROKER``
(kafka, rabbitmq or rocketmq), ``CHAOS_PREFIX`` (a fresh topic prefix per run),
``CHAOS_DIR`` (the run's directory), ``CHAOS_WORKER`` (this process's name in the ledger)
and the harness's ``NOVA_<BROKER>_*`` variables.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from chaos import LedgerFile

import nova

__all__ = ["app", "make_broker"]

#: Kafka partitions per topic, so that several worker processes share each ready topic.
KAFKA_PARTITIONS = 3


def make_broker() -> Any:
    """The broker named by ``CHAOS_BROKER``, from the harness's ``NOVA_*`` variables."""
    name = os.environ.get("CHAOS_BROKER", "")
    if name == "kafka":
        return nova.KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"], partitions=KAFKA_PARTITIONS)
    if name == "rabbitmq":
        urls = [u for u in os.environ.get("NOVA_RABBITMQ_URLS", "").split(",") if u]
        if len(urls) > 1:
            # A cluster: every node listed, so a client moves on when its node stops, and
            # quorum queues, since a classic queue is unusable while its one node is down.
            return nova.RabbitMQBroker(urls, queue_type="quorum")
        return nova.RabbitMQBroker(os.environ["NOVA_RABBITMQ_URL"])
    if name == "rocketmq":
        kwargs: dict[str, Any] = {"namesrv": os.environ["NOVA_ROCKETMQ_NAMESRV"]}
        if os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY"):
            kwargs["auth"] = (os.environ["NOVA_ROCKETMQ_ACCESS_KEY"], os.environ["NOVA_ROCKETMQ_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"):
            kwargs["admin_auth"] = (os.environ["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"],
                                    os.environ["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS"):
            kwargs["timer_precision"] = timedelta(milliseconds=int(os.environ["NOVA_ROCKETMQ_TIMER_PRECISION_MS"]))
        return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **kwargs)
    raise SystemExit(f"chaos_app: CHAOS_BROKER must be kafka, rabbitmq or rocketmq, not {name!r} "
                     "(tools/chaos.py sets it)")


app = nova.App(make_broker(), topic_prefix=os.environ.get("CHAOS_PREFIX", "chaos"), group_id="chaos",
               close_broker=True)

_ledger: LedgerFile | None = None
_ledger_lock = threading.Lock()


def _done_ledger() -> LedgerFile:
    """This worker's ledger, opened on the first task (the producer imports this module too)."""
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            worker = os.environ.get("CHAOS_WORKER") or f"pid{os.getpid()}"
            _ledger = LedgerFile(Path(os.environ.get("CHAOS_DIR", ".")) / f"done-{worker}.log")
        return _ledger


def _lines(tasks: list[nova.Task], start: float) -> str:
    end = time.time()
    out = []
    for task in tasks:
        if task.payload != (task.id or "").encode():
            out.append(f"M {task.id}\n")
        out.append(f"D {task.id} {start!r} {end!r} {task.attempt}\n")
    return "".join(out)


@app.task("async", queue="work")
async def run_async(task: nova.Task) -> None:
    start = time.time()
    await asyncio.sleep(random.uniform(0, 0.2))  # long enough that a kill -9 finds tasks mid-handler
    _done_ledger().append(_lines([task], start))


@app.task("sync", queue="work")
def run_sync(task: nova.Task) -> None:
    start = time.time()
    time.sleep(random.uniform(0, 0.05))
    _done_ledger().append(_lines([task], start))


@app.batch("bulk", nova.TimeCountAggregator(50, timedelta(milliseconds=500)), queue="bulk")
async def run_bulk(tasks: list[nova.Task]) -> None:
    start = time.time()
    await asyncio.sleep(random.uniform(0, 0.2))
    _done_ledger().append(_lines(tasks, start))
