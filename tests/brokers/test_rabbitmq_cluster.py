"""A three-node RabbitMQ cluster under a node's loss, through aio-pika (``--broker rabbitmq --cluster``).

    python tools/brokers.py up rabbitmq --nodes 3
    eval "$(python tools/brokers.py env rabbitmq --nodes 3)"
    pytest tests/brokers/test_rabbitmq_cluster.py --broker rabbitmq --cluster

Smoke tests of the harness's cluster and of what nova's RabbitMQ adapter will rely on
for ``queue_type="quorum"``: the nodes form one cluster, and a quorum queue keeps every
confirmed message when the node its client is connected to (and its leader) stops, the
client going on through another node's URL (``NOVA_RABBITMQ_URLS``). Waits are
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import pytest

from tests.brokers._cluster import eventually, harness, require_cluster

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.cluster]

# What a client sees when its node goes away (a refused connection, a closed connection or
# channel, a nacked publish, an operation on a dead channel, a timeout): it goes to another node.
OP_TIMEOUT = 15.0  # seconds; no client operation waits longer
NODE_LOST = (OSError, aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, TimeoutError)


@pytest.fixture
def urls() -> list[str]:
    return require_cluster("rabbitmq", ("NOVA_RABBITMQ_URLS",))["NOVA_RABBITMQ_URLS"].split(",")


@pytest.fixture
async def queue_names(urls: list[str]) -> AsyncIterator[list[str]]:
    """Fresh queue names; the queues are deleted after the test (through any live node)."""
    made: list[str] = []
    yield made
    async with asyncio.timeout(OP_TIMEOUT), await connect_any(urls) as connection:
        channel = await connection.channel()
        for name in made:
            await channel.queue_delete(name)


async def connect_any(urls: list[str], first: int = 0) -> aio_pika.abc.AbstractConnection:
    """The first node, from ``urls[first]`` on, that takes a connection: a client's failover."""
    errors = []
    for i in range(len(urls)):
        url = urls[(first + i) % len(urls)]
        try:
            return await aio_pika.connect(url, timeout=5)
        except NODE_LOST as exc:
            errors.append(exc)
    raise ConnectionError(f"no node of the cluster takes a connection: {errors!r}")


def node_of(port: int | None, urls: list[str]) -> int:
    """Which node (1-based) of ``urls`` listens on ``port``."""
    return [urlsplit(url).port for url in urls].index(port) + 1


async def test_the_nodes_form_one_cluster(urls: list[str], queue_names: list[str]) -> None:
    assert len(urls) >= 3
    name = f"smoke-{uuid.uuid4().hex[:10]}"
    queue_names.append(name)
    connections = [await aio_pika.connect(url, timeout=10) for url in urls]
    try:
        channels = [await c.channel() for c in connections]
        await channels[0].declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        # Every node knows the queue declared through node 1 (passive: it must exist already)...
        for channel in channels[1:]:
            queue = await channel.declare_queue(name, passive=True)
            assert queue.name == name
        # ... and what one node takes, another hands out.
        await channels[-1].default_exchange.publish(aio_pika.Message(b"hello"), routing_key=name)
        got = await channels[1].get_queue(name)
        message = None

        async def arrived() -> bool:
            nonlocal message
            message = await got.get(fail=False)
            return message is not None

        await eventually(arrived, "the message published through the last node reaches the second", within=30)
        assert message is not None and message.body == b"hello"
        await message.ack()
    finally:
        for c in connections:
            await c.close()
    # The quorum queue's leader is on the node it was declared through (client-local placement).
    assert await harness("leader", "rabbitmq", name) == "1"


class FailoverClient:
    """A publisher (with confirms) and a consumer (basic.consume, manual acks) that go on through
    the next node's URL when their connection dies: what nova's adapter needs for a cluster."""

    def __init__(self, urls: list[str], queue: str, first: int) -> None:
        self.urls = urls
        self.queue = queue
        self.first = first
        self.confirmed: set[bytes] = set()
        self.received: Counter[bytes] = Counter()
        self.reconnects = Counter[str]()
        self.failures: Counter[str] = Counter()  # what made a client leave its node
        self.connected_to: dict[str, int] = {}  # role -> node (1-based)
        self.longest_gap = 0.0  # seconds without a confirm: the failover's cost to the producer
        self.publishing = asyncio.Event()
        self.publishing.set()
        self.stopping = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run("publisher", self._publish)),
                       asyncio.create_task(self._run("consumer", self._consume))]

    async def _run(self, role: str, work: Callable[[aio_pika.abc.AbstractChannel], Awaitable[None]]) -> None:
        """``work`` on a channel of one node after another until it returns."""
        while True:
            connection = None
            try:
                connection = await connect_any(self.urls, self.first + self.reconnects[role])
                self.connected_to[role] = node_of(connection.url.port, self.urls)
                # A returned (unroutable) message raises instead of counting as confirmed.
                await work(await connection.channel(on_return_raises=True))
                return
            except NODE_LOST as exc:
                self.failures[f"{role}: {type(exc).__name__}"] += 1
                self.reconnects[role] += 1
            finally:
                if connection is not None:
                    # Closing a connection to a node that just went away may never finish.
                    with contextlib.suppress(*NODE_LOST):
                        async with asyncio.timeout(OP_TIMEOUT):
                            await connection.close()

    async def _publish(self, channel: aio_pika.abc.AbstractChannel) -> None:
        last = time.monotonic()
        while self.publishing.is_set():
            body = uuid.uuid4().bytes
            async with asyncio.timeout(OP_TIMEOUT):
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.queue,
                    mandatory=True,
                )  # returns once the broker confirmed it; a failure is never counted as sent
            self.confirmed.add(body)
            now = time.monotonic()
            self.longest_gap, last = max(self.longest_gap, now - last), now
            await asyncio.sleep(0.005)  # pacing: the box is shared

    async def _consume(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """basic.consume with manual acks (as nova's adapter does) until the channel dies or the test stops."""

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.received[message.body] += 1
            await message.ack()

        async with asyncio.timeout(OP_TIMEOUT):
            await channel.set_qos(prefetch_count=50)
            queue = await channel.get_queue(self.queue)
            await queue.consume(on_message, no_ack=False)
        stop = asyncio.ensure_future(self.stopping.wait())
        closed = asyncio.ensure_future(channel.closed())
        await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not closed.done():
            closed.cancel()
            return
        closed.result()  # raises why it closed, if it says
        raise ConnectionError("the consumer's channel closed")

    def lost(self) -> set[bytes]:
        return self.confirmed - self.received.keys()

    async def stop_publishing(self) -> None:
        self.publishing.clear()
        await asyncio.wait_for(self._tasks[0], 4 * OP_TIMEOUT)

    async def close(self) -> None:
        self.publishing.clear()
        self.stopping.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 4 * OP_TIMEOUT)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_quorum_queue_survives_the_stop_of_the_clients_node(
    urls: list[str], queue_names: list[str], how: str
) -> None:
    name = f"qq-{uuid.uuid4().hex[:10]}"
    queue_names.append(name)
    node = 2  # the client's node, which also leads the queue
    connection = await aio_pika.connect(urls[node - 1], timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    assert await harness("leader", "rabbitmq", name) == str(node)

    client = FailoverClient(urls, name, first=node - 1)
    try:
        await eventually(lambda: len(client.received) >= 200, "the consumer gets the first 200 messages")
        assert client.connected_to == {"publisher": node, "consumer": node}
        await harness("stop-node", "rabbitmq", str(node), *(["--kill"] if how == "kill" else []))
        try:
            mark = len(client.confirmed)
            await eventually(lambda: len(client.confirmed) >= mark + 300,
                             "the publisher goes on through another node")
            await eventually(lambda: not client.lost(), "every confirmed message reaches the consumer")
            assert client.reconnects["publisher"] >= 1 and client.reconnects["consumer"] >= 1
            assert node not in client.connected_to.values()
            assert await harness("leader", "rabbitmq", name) != str(node)
        finally:
            await harness("start-node", "rabbitmq", str(node))
        # The node is back: it serves the queue again (its replica follows the new leader).
        async with asyncio.timeout(OP_TIMEOUT), await aio_pika.connect(urls[node - 1], timeout=10) as back:
            queue = await (await back.channel()).declare_queue(name, passive=True)
            assert queue.name == name
        mark = len(client.confirmed)
        await eventually(lambda: len(client.confirmed) >= mark + 100, "publishing goes on after the node's return")
        await client.stop_publishing()
        await eventually(lambda: not client.lost(), "every confirmed message reaches the consumer")
    finally:
        await client.close()
    duplicates = sum(count - 1 for count in client.received.values())
    print(f"{how}: {len(client.confirmed)} confirmed, {len(client.received)} received, {duplicates} duplicates, "
          f"longest wait for a confirm {client.longest_gap:.1f} s, failures {dict(client.failures)}")
    assert not client.lost()
