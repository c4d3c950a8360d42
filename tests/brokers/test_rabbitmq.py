"""RabbitMQBroker against a real RabbitMQ (``--broker rabbitmq``).

    python tools/brokers.py up rabbitmq
    eval "$(python tools/brokers.py env rabbitmq)"
    pytest tests/brokers/test_rabbitmq.py --broker rabbitmq

Waits are conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import nova._errors as errors
from nova._broker import Broker, Delivery, Message, Subscription
from nova.brokers.rabbitmq import RabbitMQBroker

pytestmark = pytest.mark.broker("rabbitmq")

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 30.0


def _require(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run `python tools/brokers.py up rabbitmq` and "
            '`eval "$(python tools/brokers.py env rabbitmq)"` first',
            pytrace=False,
        )
    return value


@pytest.fixture
def rabbitmq_url() -> str:
    return _require("NOVA_RABBITMQ_URL")


@pytest.fixture
def rabbitmq_tls_url() -> str:
    return _require("NOVA_RABBITMQ_TLS_URL")


@pytest.fixture
def rabbitmq_ca_file() -> str:
    return _require("NOVA_RABBITMQ_CA_FILE")


@pytest.fixture
def rabbitmq_credentials() -> tuple[str, str]:
    return _require("NOVA_RABBITMQ_USER"), _require("NOVA_RABBITMQ_PASSWORD")


@pytest.fixture
async def rabbitmq_topics(rabbitmq_url: str) -> AsyncIterator[Callable[[], str]]:
    """Fresh topic names; their queues are deleted after the test."""
    made: list[str] = []

    def new() -> str:
        made.append(f"t{uuid.uuid4().hex[:10]}_q_normal")
        return made[-1]

    yield new
    import aio_pika

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        for topic in made:
            for name in (topic, f"{topic}_due"):
                channel = await connection.channel()
                await channel.queue_delete(name)
                await channel.close()


@pytest.fixture
async def rabbitmq_brokers(rabbitmq_url: str) -> AsyncIterator[Callable[..., RabbitMQBroker]]:
    """Factory of brokers on the harness URL, closed after the test."""
    made: list[RabbitMQBroker] = []

    def make(url: str | None = None, **options: object) -> RabbitMQBroker:
        made.append(RabbitMQBroker(url or rabbitmq_url, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for broker in made:
        await broker.close()


class Collector:
    """Reads a subscription in the background; tests wait on what it saw."""

    def __init__(self, sub: Subscription, *, ack: bool) -> None:
        self.sub = sub
        self.ack = ack
        self.deliveries: list[Delivery] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for delivery in self.sub:
            self.deliveries.append(delivery)
            if self.ack:
                await delivery.ack()
            self.changed.set()

    def bodies(self, topic: str | None = None) -> list[bytes]:
        return [d.body for d in self.deliveries if topic is None or d.topic == topic]

    async def wait(self, predicate: Callable[[], bool], within: float = PATIENCE) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {within} s; saw {len(self.deliveries)} deliveries")
            self.changed.clear()
            if self.task.done():
                self.task.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))

    async def stop(self) -> None:
        await self.sub.close()
        await asyncio.wait_for(self.task, PATIENCE)


async def _wait_backlog(sub: Subscription, topic: str, expected: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while (count := await sub.backlog(topic)) != expected:
        assert time.monotonic() < deadline, f"backlog({topic}) stayed {count}, expected {expected}"
        await asyncio.sleep(0.05)  # polling the broker's counter, not waiting for our code


# -- configuration and secrets --------------------------------------------------


def test_satisfies_the_broker_protocol() -> None:
    broker: Broker = RabbitMQBroker()  # mypy checks the protocol here
    assert broker.clock is None
    assert broker.native_delay_max is None
    assert broker.max_message_bytes == 128 * 1024 * 1024
    assert isinstance(broker, RabbitMQBroker)
    assert broker.exchange == "nova"


def test_prefetch_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="prefetch size 1024 is not supported"):
        RabbitMQBroker(prefetch=(10, 1024))
    with pytest.raises(errors.ConfigurationError):
        RabbitMQBroker(prefetch=(0, 0))
    assert RabbitMQBroker(prefetch=(32, 0)).prefetch_count == 32


def test_missing_aio_pika_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['aio_pika'] = None\n"
        "from nova.brokers.rabbitmq import RabbitMQBroker\n"
        "try:\n    RabbitMQBroker()\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "pip install 'nova-taskqueue[rabbitmq]'" in out.stdout


def test_bad_url_and_exchange_are_rejected() -> None:
    with pytest.raises(errors.ConfigurationError, match="amqp://"):
        RabbitMQBroker("http://127.0.0.1/")
    with pytest.raises(errors.ConfigurationError, match="exchange"):
        RabbitMQBroker(exchange="")


def test_password_never_in_repr() -> None:
    secret = "pa:ss/w@rd#1"
    broker = RabbitMQBroker("amqp://127.0.0.1:5672/", auth=("app", secret))
    assert "pa:ss" not in repr(broker)
    assert "pa%3Ass" not in repr(broker)
    assert repr(broker) == "RabbitMQBroker('amqp://app:***@127.0.0.1:5672/', exchange='nova')"
    from_url = RabbitMQBroker.from_url("amqp://app:hunter2@127.0.0.1/vh?exchange=ex1&topic_prefix=p1&group_id=g1")
    assert "hunter2" not in repr(from_url)
    assert (from_url.exchange, from_url.topic_prefix, from_url.group_id) == ("ex1", "p1", "g1")


def test_the_constructor_reads_novas_url_options_as_from_url_does() -> None:
    url = "amqp://u:p@127.0.0.1/vh?exchange=ex1&topic_prefix=p1&group_id=g1&heartbeat=30"
    for broker in (RabbitMQBroker(url), RabbitMQBroker.from_url(url)):
        assert (broker.exchange, broker.topic_prefix, broker.group_id) == ("ex1", "p1", "g1")
        assert broker._nodes.urls == ("amqp://u:p@127.0.0.1:5672/vh?heartbeat=30",)  # aio-pika's own only
    assert RabbitMQBroker(url, exchange="ex1").exchange == "ex1"
    with pytest.raises(errors.ConfigurationError, match="exchange='ex2' contradicts the URL's exchange=ex1"):
        RabbitMQBroker(url, exchange="ex2")
    with pytest.raises(errors.ConfigurationError, match="group_id"):
        RabbitMQBroker("amqp://u:p@127.0.0.1/?group_id=a.b")
    with pytest.raises(errors.ConfigurationError, match="exchange"):
        RabbitMQBroker("amqp://u:p@127.0.0.1/?exchange=amq.direct")


def test_amqps_url_or_tls_context_selects_tls() -> None:
    assert "amqps://" in repr(RabbitMQBroker("amqps://u:p@127.0.0.1/"))
    assert "amqps://u:***@127.0.0.1:5671/" in repr(
        RabbitMQBroker("amqp://u:p@127.0.0.1/", tls=ssl.create_default_context())
    )


# -- how RabbitMQ keeps the contract (the contract itself: conformance/contract/) ----------


async def test_unroutable_message_raises_enqueue_error(
    rabbitmq_url: str, rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str]
) -> None:
    import aio_pika
    import aiormq.exceptions

    topic = rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    await broker.publish([Message(topic, b"ok")])
    # someone deletes the queue behind the broker's back: the message has nowhere to go
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(topic)
    with pytest.raises(errors.EnqueueError, match="unroutable") as caught:
        await broker.publish([Message(topic, b"lost?")])
    assert isinstance(caught.value.__cause__, aiormq.exceptions.PublishError)


async def test_publish_each_fails_only_the_unroutable_message(
    rabbitmq_url: str, rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str]
) -> None:
    import aio_pika

    kept, gone = rabbitmq_topics(), rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    await broker.ensure_topics([kept, gone])
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(gone)  # behind the broker's back: nowhere to route to
    messages = [Message(kept, b"a%d" % i) for i in range(5)] + [Message(gone, b"lost?")]
    messages += [Message(kept, b"b%d" % i) for i in range(5)]
    outcomes = await broker.publish_each(messages)
    assert [i for i, o in enumerate(outcomes) if o is not None] == [5]
    assert isinstance(outcomes[5], errors.EnqueueError)
    assert "unroutable" in str(outcomes[5])
    got = Collector(await broker.subscribe([kept], group="g", window=20), ack=True)
    await got.wait(lambda: len(got.deliveries) == 10)
    assert got.bodies() == [m.body for m in messages if m.topic == kept]  # in order, all of them
    await got.stop()


async def test_concurrent_enqueues_one_refused_fails_only_its_own_call(
    rabbitmq_url: str, rabbitmq_brokers: Callable[..., RabbitMQBroker]
) -> None:
    """Through the engine: calls of one loop turn share a publish; the one whose queue is gone
    gets the error, the others their results."""
    import aio_pika

    import nova

    prefix = "co" + uuid.uuid4().hex[:8]
    queue = nova.TaskQueue(rabbitmq_brokers(), topic_prefix=prefix)
    try:
        await queue.enqueue(nova.Task("t", b""), queue="kept")
        await queue.enqueue(nova.Task("t", b""), queue="gone")
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{prefix}_gone_normal")
        outcomes = await asyncio.gather(
            *(queue.enqueue(nova.Task("t", b"%d" % i), queue="kept") for i in range(3)),
            queue.enqueue(nova.Task("t", b"x"), queue="gone"),
            *(queue.enqueue(nova.Task("t", b"%d" % i), queue="kept") for i in range(3, 6)),
            return_exceptions=True,
        )
        assert [type(o).__name__ for o in outcomes] == ["Result"] * 3 + ["EnqueueError"] + ["Result"] * 3
        assert "unroutable" in str(outcomes[3])
    finally:
        await queue.stop()
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            for name in ("kept", "gone"):
                for level in ("high", "normal", "low"):
                    await channel.queue_delete(f"{prefix}_{name}_{level}")


async def test_backlog_of_a_topic_not_subscribed_asks_rabbitmq(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str]
) -> None:
    topic, empty = rabbitmq_topics(), rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    await broker.ensure_topics([topic, empty])
    await broker.publish([Message(topic, b"%d" % i) for i in range(7)])
    sub = await broker.subscribe([empty], group="g", window=1)
    await _wait_backlog(sub, topic, 7)
    assert await sub.backlog(empty) == 0
    assert await sub.backlog("never_declared_topic") == 0
    await sub.close()


async def test_backlog_of_a_subscribed_topic_counts_what_waits_in_this_process_and_in_rabbitmq(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str]
) -> None:
    topic, idle = rabbitmq_topics(), rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    sub = await broker.subscribe([topic, idle], group="g", window=2)
    await broker.publish([Message(topic, b"%d" % i) for i in range(5)])
    # Nobody iterates: 2 deliveries wait in this process, 3 in RabbitMQ (our credit is used up).
    await _wait_backlog(sub, topic, 2)
    deliveries = aiter(sub)
    first, second = await anext(deliveries), await anext(deliveries)
    assert await sub.backlog(topic) == 3
    assert await sub.backlog(idle) == 0
    await first.ack()
    await second.ack()  # credit returns: RabbitMQ sends 2 more, 1 stays ready
    await _wait_backlog(sub, topic, 2)  # the 2 new ones, received, not yet iterated
    assert [(await anext(deliveries)).body for _ in range(2)] == [b"2", b"3"]
    assert await sub.backlog(topic) == 1
    await sub.close()


async def test_settles_are_batched_but_never_cover_an_unsettled_delivery(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str]
) -> None:
    topic = rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    await broker.publish([Message(topic, b"m%d" % i) for i in range(6)])
    got = Collector(await broker.subscribe([topic], group="g", window=10), ack=False)
    await got.wait(lambda: len(got.deliveries) == 6)
    m = got.deliveries
    # One event-loop turn, m0 and m5 still "running": acks and a nack around gaps.
    await m[1].ack()
    await m[2].ack()
    await m[3].nack()
    await m[4].ack()
    await got.wait(lambda: len(got.deliveries) == 7)  # the nack gave m3 back at once
    assert got.deliveries[6].body == b"m3"
    await got.deliveries[6].ack()
    await m[0].ack()  # closes the gap: one multiple ack up to m0's tag, never past m5
    await got.stop()  # settles given before the close go out before it; m5 goes back
    again = Collector(await broker.subscribe([topic], group="g", window=10), ack=True)
    await broker.publish([Message(topic, b"marker")])
    await again.wait(lambda: len(again.deliveries) == 2)
    assert again.bodies() == [b"m5", b"marker"]
    await again.stop()


async def test_classic_delay_tiers_are_plain_queues_held_by_the_forwarder(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_topics: Callable[[], str], rabbitmq_url: str
) -> None:
    """A classic queue dead-letters at most once: a TTL tier loses what expires while the
    node stops. So classic tiers carry no TTL, and the forwarder holds them (under 15 min
    each, within RabbitMQ's consumer_timeout)."""
    import aio_pika
    import aiormq.exceptions

    tier = rabbitmq_topics()
    broker = rabbitmq_brokers()
    broker.declare_delay_tiers({tier: timedelta(hours=1)})
    assert broker.delay_hold_max == timedelta(minutes=15)
    await broker.connect()
    got = Collector(await broker.subscribe([tier], group="fwd", window=10), ack=True)
    await broker.publish([Message(tier, b"later", {"nova-hold-until": "1"})])
    await got.wait(lambda: len(got.deliveries) == 1)  # at once: the forwarder holds it, not a TTL
    assert got.deliveries[0].topic == tier
    await got.stop()
    async with await aio_pika.connect(rabbitmq_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(tier, durable=True)  # no arguments: no TTL, no dead-letter target
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await (await connection.channel()).declare_queue(
                tier, durable=True, arguments={"x-message-ttl": 3_600_000})
        # a tier an earlier nova declared as a TTL queue is refused with what to do
        old = rabbitmq_topics()
        await channel.declare_queue(old, durable=True, arguments={
            "x-message-ttl": 2000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{old}_due"})
        try:
            again = rabbitmq_brokers()
            again.declare_delay_tiers({old: 2.0})
            await again.connect()
            with pytest.raises(errors.ConfigurationError, match=f"declared as a TTL queue.*{old}_due are empty"):
                await again.ensure_topics([old])
        finally:
            await channel.queue_delete(old)


# -- credentials and TLS ------------------------------------------------------------


async def test_credentials_given_apart_are_escaped(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
    rabbitmq_credentials: tuple[str, str],
    rabbitmq_topics: Callable[[], str],
) -> None:
    user, password = rabbitmq_credentials
    assert set("@/:#") & set(password), "the harness password should need escaping"
    broker = rabbitmq_brokers("amqp://127.0.0.1:5672/", auth=(user, password))
    await broker.connect()
    await broker.publish([Message(rabbitmq_topics(), b"escaped fine")])


async def test_wrong_password_is_refused_quickly_and_clearly(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_credentials: tuple[str, str]
) -> None:
    user, _ = rabbitmq_credentials
    wrong = "not-the-Password-42"
    broker = rabbitmq_brokers("amqp://127.0.0.1:5672/", auth=(user, wrong))
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError, match="refused the credentials") as caught:
        await asyncio.wait_for(broker.connect(), 15)
    assert time.monotonic() - started < 10
    assert wrong not in str(caught.value)
    assert wrong not in repr(broker)


async def test_a_user_who_may_not_publish_gets_a_clear_error_not_a_lost_connection(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], rabbitmq_url: str, rabbitmq_topics: Callable[[], str]
) -> None:
    from tests.brokers._rabbitmq_queues import rabbitmqctl

    topic = rabbitmq_topics()
    user, password = f"nowrite-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vhost = unquote(urlsplit(rabbitmq_url).path[1:]) or "/"
    rabbitmqctl("add_user", user, password)
    try:
        # configure and read anything, write only the test's queue (binding it needs that):
        # declaring works, publishing to the exchange is refused (403 closes the channel)
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", f"^{topic}$", ".*")
        broker = rabbitmq_brokers(rabbitmq_url, auth=(user, password), publish_timeout=5)
        await broker.connect()
        with pytest.raises(errors.EnqueueError, match="set_permissions") as caught:
            await broker.publish([Message(topic, b"x")])
        # not resent until publish_timeout and then reported as a lost connection
        assert f"RabbitMQ refused publishing to {topic!r} to user {user!r}" in str(caught.value)
        assert password not in str(caught.value)
        # no configure permission: declaring nova's exchange on connect is refused, as clearly
        rabbitmqctl("set_permissions", "-p", vhost, user, "^$", ".*", ".*")
        other = rabbitmq_brokers(rabbitmq_url, auth=(user, password))
        with pytest.raises(errors.AuthenticationError, match=f"to user {user!r}.*set_permissions"):
            await other.connect()
    finally:
        rabbitmqctl("delete_user", user)


async def test_a_sync_queue_made_from_an_app_routes_by_task_type(rabbitmq_url: str) -> None:
    import nova

    prefix = f"s{uuid.uuid4().hex[:8]}"
    app = nova.App(rabbitmq_url, topic_prefix=prefix)
    ran: list[str] = []
    both = asyncio.Event()

    @app.task("resize", queue="images")
    async def resize(task: nova.Task) -> None:
        ran.append(task.payload.decode())
        if len(ran) == 2:
            both.set()

    def produce() -> list[str]:
        with nova.SyncTaskQueue(app) as queue:
            one = queue.enqueue(nova.Task("resize", b"cat.jpg"))
            other = queue.enqueue(nova.Task("email", b"hi"))  # no handler anywhere: "default"
            batch = queue.enqueue_batch([nova.Task("resize", b"dog.jpg")])
            with pytest.raises(nova.ValidationError, match="several queues"):
                queue.enqueue_batch([nova.Task("resize", b"x"), nova.Task("email", b"y")])
            return [one.queue, other.queue, *(r.queue for r in batch)]

    assert await asyncio.to_thread(produce) == ["images", "default", "images"]
    async with app:
        await asyncio.wait_for(both.wait(), PATIENCE)
    assert sorted(ran) == ["cat.jpg", "dog.jpg"]
    import aio_pika

    from nova._naming import ready_topic

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        for queue_name in ("images", "default"):
            for level in nova.Priority:
                channel = await connection.channel()
                await channel.queue_delete(ready_topic(prefix, queue_name, level))
                await channel.close()


async def test_tls_round_trip_with_the_harness_ca(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
    rabbitmq_tls_url: str,
    rabbitmq_ca_file: str,
    rabbitmq_topics: Callable[[], str],
) -> None:
    context = ssl.create_default_context(cafile=rabbitmq_ca_file)
    broker = rabbitmq_brokers(rabbitmq_tls_url, tls=context)
    await broker.connect()
    topic = rabbitmq_topics()
    await broker.publish([Message(topic, b"over tls")])
    got = Collector(await broker.subscribe([topic], group="g", window=1), ack=True)
    await got.wait(lambda: got.bodies() == [b"over tls"])
    await got.stop()


async def test_untrusted_certificate_is_refused_quickly_and_clearly(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
    rabbitmq_tls_url: str,
    rabbitmq_credentials: tuple[str, str],
) -> None:
    _, password = rabbitmq_credentials
    broker = rabbitmq_brokers(rabbitmq_tls_url)  # amqps:// with the system trust store only
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError, match="not trusted") as caught:
        await asyncio.wait_for(broker.connect(), 15)
    assert time.monotonic() - started < 10
    assert "cafile" in str(caught.value)
    assert password not in str(caught.value)


async def test_unreachable_broker_is_a_connection_error(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
) -> None:
    broker = rabbitmq_brokers("amqp://u:p@127.0.0.1:1/")
    with pytest.raises(errors.ConnectionError, match=r"127\.0\.0\.1:1"):
        await asyncio.wait_for(broker.connect(), 15)


# -- broker restart -----------------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing_and_consumers_resume(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
    rabbitmq_topics: Callable[[], str],
    restart_broker: Callable[[], Awaitable[None]],
) -> None:
    topic = rabbitmq_topics()
    producer, consumer = rabbitmq_brokers(), rabbitmq_brokers()
    await producer.connect()
    await consumer.connect()
    got = Collector(await consumer.subscribe([topic], group="g", window=20), ack=False)
    acked: set[bytes] = set()

    async def ack_all() -> None:
        seen = 0
        while True:
            await got.wait(lambda seen=seen: len(got.deliveries) > seen, within=120)  # type: ignore[misc]
            while seen < len(got.deliveries):  # more may arrive while we ack
                delivery = got.deliveries[seen]
                await delivery.ack()  # a stale one (channel died) only logs: it is redelivered
                acked.add(delivery.body)
                seen += 1

    acker = asyncio.create_task(ack_all())
    published: list[bytes] = []

    async def produce(count: int) -> None:
        for _ in range(count):
            body = f"m{len(published)}".encode()
            await producer.publish([Message(topic, body)])  # waits out the restart, resends
            published.append(body)

    await produce(50)
    await got.wait(lambda: len(acked) >= 20)
    restart = asyncio.create_task(restart_broker())
    # keep publishing while the broker goes down and comes back
    while not restart.done():
        await produce(1)
    await restart
    await produce(50)
    try:
        await got.wait(lambda: acker.done() or acked >= set(published), within=120)
    except AssertionError:
        missing = sorted(set(published) - acked)
        delivered = {d.body for d in got.deliveries}
        raise AssertionError(
            f"{len(missing)} published never acked (first {missing[:5]}; delivered but unacked: "
            f"{len(set(missing) & delivered)}); acker done={acker.done()}"
        ) from None
    if acker.done():
        acker.result()
    await _wait_backlog(got.sub, topic, 0)
    acker.cancel()
    assert acked == set(published)
    assert len(published) >= 100
    await got.stop()


async def test_a_delivery_received_before_a_restart_is_revoked_and_comes_again(
    rabbitmq_brokers: Callable[..., RabbitMQBroker],
    rabbitmq_topics: Callable[[], str],
    restart_broker: Callable[[], Awaitable[None]],
) -> None:
    """What a worker still holds from before a restart is reported revoked (it drops it
    rather than run the task twice); RabbitMQ delivers the message again."""
    topic = rabbitmq_topics()
    broker = rabbitmq_brokers()
    await broker.connect()
    sub = await broker.subscribe([topic], group="g", window=10)
    got = Collector(sub, ack=False)
    await broker.publish([Message(topic, b"m")])
    await got.wait(lambda: len(got.deliveries) == 1)
    first = got.deliveries[0]
    assert sub.revoked(first) is False
    await restart_broker()
    await got.wait(lambda: len(got.deliveries) == 2, within=120)
    again = got.deliveries[1]
    assert again.body == b"m"
    assert sub.revoked(first) is True
    assert sub.revoked(again) is False
    await again.ack()
    await got.stop()


async def test_task_queue_survives_a_broker_restart_with_delayed_tasks(
    rabbitmq_brokers: Callable[..., RabbitMQBroker], restart_broker: Callable[[], Awaitable[None]]
) -> None:
    """End to end through the engine: ready and delayed tasks across a restart, with delayed
    tasks due all through it."""
    import nova

    broker = rabbitmq_brokers()
    queue = nova.TaskQueue(broker, topic_prefix="r" + uuid.uuid4().hex[:8], delay_slots=(6, timedelta(seconds=4)))
    handled: dict[bytes, float] = {}
    changed = asyncio.Event()

    async def handle(task: nova.Task) -> None:
        handled.setdefault(task.payload, time.time())
        changed.set()

    await queue.start(handle, concurrency=16)
    due: dict[bytes, float] = {}
    expected: set[bytes] = set()
    for i in range(30):
        await queue.enqueue(nova.Task("t", b"now%d" % i))
        expected.add(b"now%d" % i)
    for i in range(20):
        delay = 2.0 + i % 8
        due[b"later%d" % i] = time.time() + delay
        await queue.enqueue(nova.Task("t", b"later%d" % i), process_in=delay)
    for i in range(70):  # 3,500 more, due every 0.1 s from 1 s to 8 s: some while RabbitMQ stops
        batch = [nova.Task("t", b"batch%d.%d" % (i, j)) for j in range(50)]
        delay = 1.0 + i * 0.1
        for task in batch:
            due[task.payload] = time.time() + delay
        await queue.enqueue_batch(batch, process_in=delay)
    expected |= set(due)
    restart = asyncio.create_task(restart_broker())
    n = 0
    while not restart.done():
        await queue.enqueue(nova.Task("t", b"during%d" % n))  # waits out the outage
        expected.add(b"during%d" % n)
        n += 1
    await restart
    for i in range(10):
        await queue.enqueue(nova.Task("t", b"after%d" % i))
        expected.add(b"after%d" % i)
    deadline = time.monotonic() + 120
    while not expected <= handled.keys():
        assert time.monotonic() < deadline, f"never handled: {sorted(expected - handled.keys())[:10]}"
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), 1.0)
    early = {k: due[k] - handled[k] for k in due if handled[k] < due[k] - 0.001}
    assert not early, f"delayed tasks handled early: {early}"
    await queue.stop()
