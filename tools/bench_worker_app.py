"""The app ``tools/bench.py --processes N`` runs with ``nova worker``: a no-op handler that counts.

Each worker process holds its tasks until the bench creates the file NOVA_BENCH_GO (so every
process is consuming when the timing starts), then writes "count last_handled_at" to
NOVA_BENCH_OUT/<pid> every 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import nova

OUT = Path(os.environ["NOVA_BENCH_OUT"])
GO = Path(os.environ["NOVA_BENCH_GO"])


def _broker() -> Any:
    name = os.environ["NOVA_BENCH_BROKER"]
    if name == "kafka":
        return nova.KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"], partitions=int(os.environ["NOVA_BENCH_PARTITIONS"]))
    if name == "rabbitmq":
        return nova.RabbitMQBroker(os.environ["NOVA_RABBITMQ_URL"])
    from bench_rocketmq import harness_options

    return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **harness_options())


class _State:
    count = 0
    last = 0.0
    open = False


async def _report() -> None:
    path = OUT / str(os.getpid())
    while True:
        path.write_text(f"{_State.count} {_State.last}")
        await asyncio.sleep(0.05)


class BenchApp(nova.App):
    async def start(self, *args: Any, **kwargs: Any) -> None:
        await super().start(*args, **kwargs)
        self.reporter = asyncio.get_running_loop().create_task(_report())


app = BenchApp(_broker(), topic_prefix=os.environ["NOVA_BENCH_PREFIX"], group_id="bench",
               message_format=nova.MessageFormat.SONIC)


@app.task("bench")
async def bench(task: nova.Task) -> None:
    if not _State.open:
        # A file the bench creates in another process: polled, once per process.
        while not GO.exists():  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.005)
        _State.open = True
    _State.count += 1
    _State.last = time.time()
