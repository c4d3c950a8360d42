"""A RabbitMQBroker given several nodes: it connects to the first that answers and, when
its node dies, goes on through the next one.

The URL forms run without a broker. The failovers run against the harness's single
RabbitMQ node (``--broker rabbitmq``) reached through local TCP proxies, one per
"node": killing a proxy (its listener closed, every connection through it reset)
is what the client sees when a node dies. The same on a real cluster, stopping the
node the client is on: tests/brokers/test_rabbitmq_cluster_failover.py.

    eval "$(python tools/brokers.py env rabbitmq)"
    pytest tests/brokers/test_rabbitmq_failover.py --broker rabbitmq

Waits are conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import nova
import nova._errors as errors
from nova._broker import Message
from nova.brokers.rabbitmq import RabbitMQBroker
from tests.brokers._rabbitmq_queues import Queues, made_queues, rabbitmqctl
from tests.brokers.test_rabbitmq import PATIENCE, Collector, _require

# -- several nodes in the URL, without a broker --------------------------------------------


def test_one_url_with_a_comma_list_of_hosts() -> None:
    broker = RabbitMQBroker("amqp://u:p%2Fw@10.0.0.1,10.0.0.2:5682,[::1]:5683/vh?heartbeat=30&queue_type=quorum")
    assert broker._nodes.urls == (
        "amqp://u:p%2Fw@10.0.0.1:5672/vh?heartbeat=30",
        "amqp://u:p%2Fw@10.0.0.2:5682/vh?heartbeat=30",
        "amqp://u:p%2Fw@[::1]:5683/vh?heartbeat=30",
    )
    assert repr(broker) == (
        "RabbitMQBroker('amqp://u:***@10.0.0.1:5672,10.0.0.2:5682,[::1]:5683/vh', exchange='nova', "
        "queue_type='quorum')"
    )


def test_a_list_of_urls_shares_credentials_vhost_and_options() -> None:
    broker = RabbitMQBroker(["amqps://u:p@h1/?heartbeat=30", "amqps://u:p@h2:5682/", "amqps://u:p@h1/"])
    assert broker._nodes.urls == ("amqps://u:p@h1:5671/?heartbeat=30", "amqps://u:p@h2:5682/?heartbeat=30")
    assert broker._tls is not None  # amqps: TLS to every node
    apart = RabbitMQBroker(("amqp://h1/", "amqp://h2/"), auth=("app", "s3cret/x"))
    assert apart._nodes.urls == ("amqp://app:s3cret%2Fx@h1:5672/", "amqp://app:s3cret%2Fx@h2:5672/")
    assert "s3cret" not in repr(apart)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (["amqp://u:p@h1/", "amqp://u:other@h2/"], "must share scheme, user, password, vhost and options"),
        (["amqp://u:p@h1/", "amqp://u:p@h2/other"], "must share"),
        (["amqp://u:p@h1/", "amqps://u:p@h2/"], "must share"),
        (["amqp://u:p@h1/?heartbeat=10", "amqp://u:p@h2/?heartbeat=20"], "must share"),
        ([], "a list of them"),
        ("amqp://u:p@h1,,h2/", "has no host"),
        ("amqp://u:p@h1,h2:99999/", "invalid port '99999'"),
        ("amqp://u:p@h1,h2:x/", "invalid port 'x'"),
        ("amqp://u:p@[::1/", "invalid IPv6 host"),
        (["amqp://u:p@h1/", "http://h2/"], "must start with amqp://"),
    ],
)
def test_bad_node_lists_are_refused_clearly(url: str | list[str], says: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=says.replace("(", r"\(")):
        RabbitMQBroker(url)


# -- proxies standing for nodes -------------------------------------------------------------


class Node:
    """A TCP proxy to the harness's RabbitMQ: one 'node' of a pretend cluster."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.accepted = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Node:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._links |= {client_writer, upstream_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))
        self._links -= {client_writer, upstream_writer}

    async def kill(self) -> None:
        """The node dies: no more connections, and the open ones reset."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        await self._server.wait_closed()


@pytest.fixture
def rabbitmq_url() -> str:
    return _require("NOVA_RABBITMQ_URL")


@pytest.fixture
async def nodes(rabbitmq_url: str) -> AsyncIterator[Callable[[int], Awaitable[list[Node]]]]:
    parts = urlsplit(rabbitmq_url)
    made: list[Node] = []

    async def start(count: int) -> list[Node]:
        made.extend([await Node((parts.hostname or "127.0.0.1", parts.port or 5672)).start() for _ in range(count)])
        return made[-count:]

    yield start
    for node in made:
        with contextlib.suppress(Exception):
            await node.kill()


def _through(url: str, nodes: list[Node], *, password: str | None = None) -> str:
    """``url`` with a comma list of the proxies' ports as its hosts."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    if password is not None:
        userinfo = f"{userinfo.partition(':')[0]}:{password}"
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    return urlunsplit((parts.scheme, f"{userinfo}@{hosts}", parts.path, parts.query, ""))


@pytest.fixture
async def queues(rabbitmq_url: str) -> AsyncIterator[Queues]:
    async with made_queues(rabbitmq_url) as made:
        yield made


async def _eventually(predicate: Callable[[], bool], what: str, within: float = PATIENCE) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.02)  # polling what the proxies and the test's tasks saw


@pytest.mark.broker("rabbitmq")
async def test_connect_skips_a_node_that_is_down(
    rabbitmq_url: str, nodes: Callable[[int], Awaitable[list[Node]]], queues: Queues
) -> None:
    down, up = await nodes(2)
    await down.kill()
    broker = queues.broker(_through(rabbitmq_url, [down, up]))
    await broker.connect()
    assert broker.current_node == f"127.0.0.1:{up.port}"
    await broker.publish([Message(f"t{uuid.uuid4().hex[:10]}_q_normal", b"through the second node")])


@pytest.mark.broker("rabbitmq")
async def test_refused_credentials_end_the_search_at_the_first_node(
    rabbitmq_url: str, nodes: Callable[[int], Awaitable[list[Node]]], queues: Queues
) -> None:
    first, second = await nodes(2)
    broker = queues.broker(_through(rabbitmq_url, [first, second], password="not-the-password"))
    with pytest.raises(errors.AuthenticationError, match="refused the credentials"):
        await asyncio.wait_for(broker.connect(), 15)
    assert (first.accepted, second.accepted) == (1, 0)  # the second would refuse them too


@pytest.mark.broker("rabbitmq")
async def test_no_node_answers_is_a_connection_error_naming_them(queues: Queues) -> None:
    broker = queues.broker("amqp://u:p@127.0.0.1:1,127.0.0.1:2/")
    with pytest.raises(errors.ConnectionError, match=r"127\.0\.0\.1:1,127\.0\.0\.1:2"):
        await asyncio.wait_for(broker.connect(), 30)


@pytest.mark.broker("rabbitmq")
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_the_nodes_death_moves_publishing_and_consuming_to_the_next_node(
    rabbitmq_url: str, nodes: Callable[[int], Awaitable[list[Node]]], queues: Queues, queue_type: str
) -> None:
    first, second, third = await nodes(3)
    topic = f"t{uuid.uuid4().hex[:10]}_q_normal"
    broker = queues.broker(_through(rabbitmq_url, [first, second, third]), queue_type=queue_type,
                           reconnect_interval=timedelta(milliseconds=200))
    await broker.connect()
    assert broker.current_node == f"127.0.0.1:{first.port}"
    got = Collector(await broker.subscribe([topic], group="g", window=20), ack=True)
    confirmed: list[bytes] = []

    async def produce() -> None:
        while True:
            body = b"m%d" % len(confirmed)
            await broker.publish([Message(topic, body)])  # waits out the failover, resends
            confirmed.append(body)

    producer = asyncio.create_task(produce())
    try:
        await got.wait(lambda: len(got.deliveries) >= 50)
        await second.kill()  # a node the client is not on: nothing happens
        await first.kill()  # the client's node
        mark = len(confirmed)
        await _eventually(lambda: len(confirmed) >= mark + 100, "publishing goes on through another node")
        assert broker.current_node == f"127.0.0.1:{third.port}"  # past the dead second node
        assert third.accepted == 1
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
    await got.wait(lambda: set(confirmed) <= set(got.bodies()))
    await got.stop()


@pytest.mark.broker("rabbitmq")
async def test_task_queue_workers_continue_on_the_next_node(
    rabbitmq_url: str, nodes: Callable[[int], Awaitable[list[Node]]], queues: Queues
) -> None:
    first, second = await nodes(2)
    broker = queues.broker(_through(rabbitmq_url, [first, second]), queue_type="quorum")
    queue = nova.TaskQueue(broker, topic_prefix="t" + uuid.uuid4().hex[:10], delay_slots=(4, timedelta(seconds=4)))
    handled: dict[bytes, float] = {}

    async def handle(task: nova.Task) -> None:
        handled.setdefault(task.payload, time.time())

    try:
        await queue.start(handle, concurrency=8)
        due: dict[bytes, float] = {}
        for i in range(10):
            await queue.enqueue(nova.Task("t", b"before%d" % i))
            due[b"later%d" % i] = time.time() + 1 + i % 4
            await queue.enqueue(nova.Task("t", b"later%d" % i), process_at=None, process_in=1 + i % 4)
        await _eventually(lambda: len(handled) >= 5, "the worker handles tasks")
        await first.kill()
        for i in range(10):
            await queue.enqueue(nova.Task("t", b"after%d" % i))  # through the second node
        expected = {b"before%d" % i for i in range(10)} | {b"after%d" % i for i in range(10)} | set(due)
        await _eventually(lambda: expected <= handled.keys(),
                          f"every task handled (missing {sorted(expected - handled.keys())[:5]})")
        assert broker.current_node == f"127.0.0.1:{second.port}"
        early = {k: due[k] - handled[k] for k in due if handled[k] < due[k] - 0.001}
        assert not early, f"delayed tasks handled early: {early}"
    finally:
        await queue.stop()


# -- a publish that gets no confirm, or a nack -------------------------------------------------


@pytest.mark.broker("rabbitmq")
async def test_a_publish_left_unconfirmed_on_a_live_connection_is_resent_on_a_new_channel(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ 3.10 can leave a quorum queue's publish unconfirmed for good when the queue's
    leader dies as it arrives; here the first channel's publish simply never completes."""
    import nova.brokers.rabbitmq._broker as broker_module

    monkeypatch.setattr(broker_module, "CONFIRM_WAIT", 0.5)
    topic = f"t{uuid.uuid4().hex[:10]}_q_normal"
    broker = queues.broker(queue_type="quorum")
    await broker.connect()
    await broker.ensure_topics([topic])
    stuck_channel = broker._publish_channel
    assert stuck_channel is not None
    stuck = await stuck_channel.get_underlay_channel()
    swallowed: list[object] = []
    publish_confirmed = broker_module.aiormq_internals.publish_confirmed

    async def never_confirmed(channel: Any, exchange: str, messages: Any) -> list[asyncio.Future[Any]]:
        if channel is not stuck:
            return await publish_confirmed(channel, exchange, messages)
        swallowed.extend(messages)
        return [asyncio.get_running_loop().create_future() for _ in messages]  # never done

    monkeypatch.setattr(broker_module.aiormq_internals, "publish_confirmed", never_confirmed)
    started = time.monotonic()
    await asyncio.wait_for(broker.publish([Message(topic, b"once")]), 15)
    assert 0.5 <= time.monotonic() - started < 10
    assert len(swallowed) == 1
    assert broker._publish_channel is not stuck_channel
    got = Collector(await broker.subscribe([topic], group="g", window=5), ack=True)
    await got.wait(lambda: got.bodies() == [b"once"])
    await broker.publish([Message(topic, b"twice")])  # the new channel keeps working
    await got.wait(lambda: got.bodies() == [b"once", b"twice"])
    await got.stop()


@pytest.mark.broker("rabbitmq")
async def test_a_nacked_publish_is_sent_again_until_publish_timeout(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    """A full queue with overflow reject-publish nacks: nova sends again until it is taken."""
    topic = f"t{uuid.uuid4().hex[:10]}_q_normal"
    policy = f"nova-test-{topic}"
    broker = queues.broker(publish_timeout=timedelta(seconds=60))
    await broker.connect()
    await broker.ensure_topics([topic])
    rabbitmqctl("set_policy", "--apply-to", "queues", "--priority", "100", policy, f"^{topic}$",
                 '{"max-length": 1, "overflow": "reject-publish"}')
    try:
        await _eventually(lambda: f"{topic}\t{policy}" in rabbitmqctl("list_queues", "name", "policy"),
                          "RabbitMQ applies the policy")
        await broker.publish([Message(topic, b"first")])
        caplog.set_level(logging.INFO, "nova.rabbitmq")
        second = asyncio.create_task(broker.publish([Message(topic, b"second")]))  # nacked: the queue is full

        def resent() -> int:
            return sum("refused (nacked) 1 message(s); resending" in r.getMessage() for r in caplog.records)

        await _eventually(lambda: resent() >= 2, "the nacked message is sent again, and again")
        assert not second.done()
        got = Collector(await broker.subscribe([topic], group="g", window=1), ack=True)  # room for one more
        await asyncio.wait_for(second, PATIENCE)
        await got.wait(lambda: got.bodies() == [b"first", b"second"])
        await got.stop()
        short = queues.broker(publish_timeout=timedelta(seconds=2))
        await short.connect()
        await short.publish([Message(topic, b"third")])  # fills it again (nobody consumes now)
        started = time.monotonic()
        with pytest.raises(errors.EnqueueError, match=r"refused \(nacked\)"):
            await short.publish([Message(topic, b"fourth")])
        assert time.monotonic() - started >= 1.9
    finally:
        rabbitmqctl("clear_policy", policy)
