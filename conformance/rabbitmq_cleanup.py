"""A pytest plugin deleting the RabbitMQ queues each conformance test declared.

The suite gives each test fresh topic prefixes and leaves what it declared behind:
about twenty queues per test on RabbitMQ. With quorum queues that is too many for a
node with 1024 open files (the harness's): on RabbitMQ 3.10 each quorum queue
reserves about three file handles, and a node out of them stops taking connections
(handshakes hang). Run the suite on quorum queues with it:

    NOVA_RABBITMQ_URL="$NOVA_RABBITMQ_URL?queue_type=quorum" \\
        python -m pytest conformance --broker rabbitmq -p conformance.rabbitmq_cleanup

(``python -m``: the plugin is imported before pytest puts the repository on the path.)

The test's worker processes (tests/crash_worker.py) declare the same names as its
own brokers, so those are deleted too. Other backends are left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from conformance.backends import Backend


@pytest.fixture(autouse=True)
def _delete_rabbitmq_queues(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.config.getoption("--broker") != "rabbitmq" or "backend" not in request.fixturenames:
        yield
        return
    # Made now, before the test's other fixtures: torn down (brokers closed) before this.
    backend: Backend = request.getfixturevalue("backend")
    yield
    from nova.brokers.rabbitmq import RabbitMQBroker

    names: set[str] = set()
    urls = [b._nodes.urls[0] for b in backend.brokers if isinstance(b, RabbitMQBroker)]
    for broker in backend.brokers:
        if isinstance(broker, RabbitMQBroker):
            names |= broker._declared | {f"{tier}_due" for tier in broker._delay_ttls}
    if names:
        # a loop of its own: the test's is not running between its fixtures' teardowns
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_delete(urls[0], names))
        finally:
            loop.close()


async def _delete(url: str, names: set[str]) -> None:
    import aio_pika

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for name in sorted(names):
            await channel.queue_delete(name)
