"""A worker process that holds every task it gets until it is killed (for crash tests).

    python -m tests.crash_worker --broker rabbitmq --prefix t0123456789 --group g

Run from the repository's root. It builds its broker as the conformance suite does
(``conformance.backends``, from the harness's ``NOVA_*`` variables), consumes the
default queue of ``--prefix`` as a member of ``--group``, and writes one JSON line
per event to stdout: ``{"ready": true}`` once it consumes, then ``{"holding": ID}``
each time its handler takes a task, which it never finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import nova
from conformance.backends import make_backend


def _say(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(broker: str, prefix: str, group: str) -> None:
    backend = make_backend(broker)
    queue = nova.TaskQueue(backend.broker(), topic_prefix=prefix, group_id=group, delay_slots=backend.delay_slots)
    never = asyncio.Event()

    async def hold(task: nova.Task) -> None:
        _say(holding=task.id)
        await never.wait()

    await queue.start(hold)
    _say(ready=True)
    await never.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, choices=("kafka", "rabbitmq", "rocketmq"))
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.prefix, args.group))
