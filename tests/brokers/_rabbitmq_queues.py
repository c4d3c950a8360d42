"""RabbitMQ brokers made for one test, and the deletion of every queue they declared;
``rabbitmqctl`` on the harness's node.

On RabbitMQ 3.10 each quorum queue holds file handles on every node; the harness's
node (1024 open files) stops taking connections after a few hundred of them, so
tests that declare quorum queues delete them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

from nova.brokers.rabbitmq import RabbitMQBroker


def rabbitmqctl(*args: str) -> str:
    """``rabbitmqctl -q ARGS`` on the harness's node (policies, users): its output."""
    assert shutil.which("rabbitmqctl"), "this test needs rabbitmqctl (the harness's node)"
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


class Queues:
    """Brokers made for a test, and every queue they (or the test's own client) declared."""

    def __init__(self, url: str, *, admin_url: str | None = None) -> None:
        self.url = url
        #: one node's URL, for the test's own aio-pika client
        self.admin_url = admin_url or url
        self.brokers: list[RabbitMQBroker] = []
        self.extra: set[str] = set()

    def broker(self, url: Any = None, **options: Any) -> RabbitMQBroker:
        self.brokers.append(RabbitMQBroker(url or self.url, **options))
        return self.brokers[-1]

    def names(self) -> set[str]:
        names = set(self.extra)
        for broker in self.brokers:
            names |= broker._declared | {f"{tier}_due" for tier in broker._delay_ttls}
        return names

    async def channel_call(self, call: Callable[[Any], Any]) -> Any:
        """``call(channel)`` on a fresh connection (a 406 closes only that channel)."""
        import aio_pika

        async with await aio_pika.connect(self.admin_url) as connection:
            return await call(await connection.channel())

    async def equivalent(self, name: str, arguments: dict[str, Any] | None) -> bool:
        """Whether RabbitMQ holds ``name`` with exactly these arguments: it accepts a
        declare only when every argument it compares (type, TTL, dead-letter target and
        strategy, overflow) is the same, and answers 406 otherwise."""
        import aiormq.exceptions

        try:
            await self.channel_call(lambda ch: ch.declare_queue(name, durable=True, arguments=arguments))
        except aiormq.exceptions.ChannelPreconditionFailed:
            return False
        return True

    async def delete(self) -> None:
        import aio_pika

        async with await aio_pika.connect(self.admin_url) as connection:
            channel = await connection.channel()
            for name in sorted(self.names()):
                await channel.queue_delete(name)


@contextlib.asynccontextmanager
async def made_queues(url: str, *, admin_url: str | None = None) -> AsyncIterator[Queues]:
    """A ``Queues``; afterwards its brokers are closed and their queues deleted."""
    made = Queues(url, admin_url=admin_url)
    try:
        yield made
    finally:
        for broker in made.brokers:
            await broker.close()
        await made.delete()
