"""RocketMQBroker against a real RocketMQ 5 (``--broker rocketmq``).

    python tools/brokers.py up rocketmq            # NOVA_ROCKETMQ_ACL=1 for ACL 2.0
    eval "$(python tools/brokers.py env rocketmq)"
    pytest tests/brokers/test_rocketmq.py --broker rocketmq

Waits are conditions with deadlines, never fixed sleeps. The ACL tests run
when the harness was started with ACL (``NOVA_ROCKETMQ_ACCESS_KEY`` is set).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import nova._errors as errors
from nova import Task, TaskQueue
from nova._broker import Delivery, Message
from nova.brokers.rocketmq import ConsumerModel, RocketMQAdmin, RocketMQBroker
from nova.brokers.rocketmq._client_patches import client as _client
from nova.brokers.rocketmq._client_patches import (
    telemetry_streams_on_the_io_thread as _telemetry_streams_on_the_io_thread,
)
from nova.brokers.rocketmq._subscription import _INVISIBLE_S, _Delivery, _Subscription

pytestmark = pytest.mark.broker("rocketmq")

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 30.0


def _require(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run `python tools/brokers.py up rocketmq` and "
            '`eval "$(python tools/brokers.py env rocketmq)"` first',
            pytrace=False,
        )
    return value


def _acl() -> tuple[str, str] | None:
    ak = os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY")
    return (ak, os.environ.get("NOVA_ROCKETMQ_SECRET_KEY", "")) if ak else None


def _admin_auth() -> tuple[str, str] | None:
    ak = os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY")
    return (ak, os.environ.get("NOVA_ROCKETMQ_ADMIN_SECRET_KEY", "")) if ak else None


def _timer_precision() -> timedelta | None:
    """The harness broker's timerPrecisionMs (None: the broker's default)."""
    ms = os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS")
    return timedelta(milliseconds=int(ms)) if ms else None


needs_acl = pytest.mark.skipif(_acl() is None, reason="harness started without NOVA_ROCKETMQ_ACL=1")


@pytest.fixture
def rocketmq_endpoints() -> str:
    return _require("NOVA_ROCKETMQ_ENDPOINTS")


@pytest.fixture
def rocketmq_namesrv() -> str:
    return _require("NOVA_ROCKETMQ_NAMESRV")


@pytest.fixture
def rocketmq_prefix() -> str:
    # (the ACL harness denies the app user topics named "forbidden*" only)
    return "nova" + uuid.uuid4().hex[:10]


@pytest.fixture
async def rocketmq_make(rocketmq_endpoints: str, rocketmq_namesrv: str) -> AsyncIterator[Callable[..., RocketMQBroker]]:
    made: list[RocketMQBroker] = []

    def make(**kwargs: object) -> RocketMQBroker:
        kwargs.setdefault("namesrv", rocketmq_namesrv)
        kwargs.setdefault("auth", _acl())
        kwargs.setdefault("admin_auth", _admin_auth())
        kwargs.setdefault("timer_precision", _timer_precision())
        broker = RocketMQBroker(rocketmq_endpoints, **kwargs)  # type: ignore[arg-type]
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


async def wait_for(predicate: Callable[[], bool], within: float = PATIENCE) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(0.01)


class Collector:
    """Drains a subscription in the background, recording arrival times."""

    def __init__(self, sub: _Subscription, *, ack: bool) -> None:
        self.sub = sub
        self.ack = ack
        self.got: list[tuple[float, Delivery]] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for d in self.sub:
                self.got.append((time.time(), d))
                if self.ack:
                    await d.ack()
        except Exception as exc:  # noqa: BLE001 - asserted by the tests
            self.error = exc

    def bodies(self, topic: str | None = None) -> list[bytes]:
        return [d.body for _, d in self.got if topic is None or d.topic == topic]

    async def stop(self) -> None:
        await self.sub.close()
        await asyncio.wait_for(self.task, PATIENCE)


async def test_the_clients_io_thread_never_waits_for_itself_for_a_route(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    """A send retried on the client's I/O thread looks its route up on that thread; if it
    waited for the answer there, every RocketMQ client in the process would stop for good."""
    from concurrent.futures import Future

    from rocketmq.v5.client.connection.rpc_client import RpcClient  # type: ignore[import-untyped]

    broker = rocketmq_make()
    topic = f"{rocketmq_prefix}_q_normal"
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"routed")])  # the producer has used this route
    producer = broker._producer

    def on_io_thread(name: str) -> Future[Any]:
        answer: Future[Any] = Future()

        def look_up() -> None:
            try:
                answer.set_result(producer._retrieve_topic_route_data(name))
            except Exception as exc:  # noqa: BLE001 - handed to the test
                answer.set_exception(exc)

        RpcClient._io_loop.call_soon_threadsafe(look_up)
        return answer

    known = await asyncio.wait_for(asyncio.wrap_future(on_io_thread(topic)), 10)
    assert known is not None
    with pytest.raises(RuntimeError, match="no route"):
        await asyncio.wait_for(asyncio.wrap_future(on_io_thread(f"{rocketmq_prefix}_never_used")), 10)
    await broker.publish([Message(topic, b"still works")])  # the I/O thread is alive


def _hooked_after_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route query asked off the client's I/O thread (and off any event loop) is
    answered before the asker hooks its callback on, so the callback, and the telemetry
    stream the first route to a broker opens, runs in the asking thread: the order that
    is rare on its own (the asker loses the CPU between the two calls)."""
    from concurrent.futures import wait

    _client()  # (nova's import first: the client's own would reconfigure logging)
    from rocketmq.v5.client.connection.rpc_client import RpcClient  # type: ignore[import-untyped]

    ask = RpcClient.query_topic_route_async

    def answered_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = ask(self, *args, **kwargs)
        try:
            asyncio.get_running_loop()  # nova's own route checks: never block a loop
        except RuntimeError:
            if threading.current_thread() is not RpcClient._io_loop_thread:
                wait([answer], timeout=PATIENCE)
        return answer

    monkeypatch.setattr(RpcClient, "query_topic_route_async", answered_first)


async def test_a_route_answered_before_its_callback_is_hooked_still_gives_a_stream(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first publish of a producer, and a consumer's start and receive, each look a route
    up from a nova executor thread. When the answer came before the callback was hooked on,
    the callback ran there and gRPC could not open the telemetry stream ("There is no current
    event loop in thread 'nova-rocketmq_0'"): "failed to fetch topic route", EnqueueError."""
    _hooked_after_the_answer(monkeypatch)
    broker = rocketmq_make()
    topic = f"{rocketmq_prefix}_q_normal"
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"first")])
    c = Collector(await broker.subscribe([topic], group=f"{rocketmq_prefix}_g", window=4), ack=True)
    await wait_for(lambda: len(c.got) == 1)
    assert c.bodies() == [b"first"]
    await c.stop()
    assert c.error is None


def test_a_telemetry_stream_asked_for_off_the_io_thread_is_made_on_it() -> None:
    """The same cause without a broker: the channel was made on the client's I/O thread
    (where route queries run) and a thread without an event loop asks for the stream."""
    rmq = _client()  # (nova's import first: the client's own would reconfigure logging)
    from rocketmq.v5.client.connection.rpc_client import RpcClient  # type: ignore[import-untyped]

    config = rmq.ClientConfiguration("127.0.0.1:9", rmq.Credentials("", ""), "", request_timeout=3)
    producer = rmq.Producer(config)  # not started: nothing is sent
    _telemetry_streams_on_the_io_thread(producer)
    rpc, endpoints = producer.rpc_client, config.rpc_endpoints
    try:

        async def make_channel() -> Any:
            return rpc.retrieve_or_create_channel(endpoints)

        channel = asyncio.run_coroutine_threadsafe(make_channel(), RpcClient._io_loop).result(PATIENCE)
        outcome: list[Any] = []

        def ask() -> None:
            try:
                outcome.append(rpc.telemetry_stream(endpoints, producer, producer.sign(), False, timeout=60))
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        asker = threading.Thread(target=ask, name="nova-rocketmq_test")
        asker.start()
        asker.join(PATIENCE)
        assert outcome == [channel]
        assert channel.telemetry_stream_stream_call is not None
    finally:
        rpc.stop()


async def test_a_long_held_delivery_is_not_redelivered(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    broker = rocketmq_make()  # the defaults: receives ask for _INVISIBLE_S, consume_timeout is 5 minutes
    topic, group = f"{rocketmq_prefix}_q_normal", f"{rocketmq_prefix}_g"
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"slow")])
    holder = Collector(await broker.subscribe([topic], group=group, window=4), ack=False)
    await wait_for(lambda: len(holder.got) == 1)
    rival = Collector(await broker.subscribe([topic], group=group, window=4), ack=True)
    held_since = time.monotonic()
    # past the receive's invisible time with margin: the holder extended it
    await wait_for(lambda: time.monotonic() > held_since + _INVISIBLE_S + 8, within=_INVISIBLE_S + 20)
    assert rival.got == [] and len(holder.got) == 1
    held = holder.got[0][1]
    assert isinstance(held, _Delivery) and held._visible_until > held_since + _INVISIBLE_S  # (renewed)
    await held.ack()
    await holder.stop()
    await rival.stop()
    assert rival.got == []
    assert holder.error is None and rival.error is None


async def test_a_task_held_past_consume_timeout_goes_back_to_the_group(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 40.0  # longer than the receive's invisible time: renewals take the task up to it
    assert timeout > _INVISIBLE_S
    broker = rocketmq_make(consume_timeout=timedelta(seconds=timeout))
    topic, group = f"{rocketmq_prefix}_q_normal", f"{rocketmq_prefix}_g"
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"stuck")])
    holder = Collector(await broker.subscribe([topic], group=group, window=4), ack=False)
    await wait_for(lambda: len(holder.got) == 1)
    rival = Collector(await broker.subscribe([topic], group=group, window=4), ack=True)
    # the group gets it again: the rival, or the holder itself (it still polls, and has room)
    with caplog.at_level(logging.WARNING, logger="nova.rocketmq"):
        await wait_for(lambda: len(holder.got) + len(rival.got) == 2, within=timeout + 30)
    first, again = sorted(at for at, _ in [*holder.got, *rival.got])
    assert timeout - 3 <= again - first < timeout + 20, again - first
    assert holder.bodies() + rival.bodies() == [b"stuck", b"stuck"]
    assert "held for consume_timeout (40 s)" in caplog.text
    await holder.got[0][1].ack()  # too late: the group has it again; nothing breaks
    await holder.stop()
    await rival.stop()
    assert holder.error is None and rival.error is None


#: A worker process: takes one task of the queue and holds it until it is killed.
_HOLDER = """
import asyncio, os, sys
from datetime import timedelta
import nova
from nova.brokers.rocketmq import RocketMQBroker

def pair(name):
    ak = os.environ.get(f"NOVA_ROCKETMQ_{name}ACCESS_KEY")
    return (ak, os.environ[f"NOVA_ROCKETMQ_{name}SECRET_KEY"]) if ak else None

async def main():
    ms = os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS")
    broker = RocketMQBroker(
        os.environ["NOVA_ROCKETMQ_ENDPOINTS"], namesrv=os.environ["NOVA_ROCKETMQ_NAMESRV"],
        auth=pair(""), admin_auth=pair("ADMIN_"), timer_precision=timedelta(milliseconds=int(ms)) if ms else None,
    )
    queue = nova.TaskQueue(broker, group_id="workers", topic_prefix=sys.argv[1])

    async def hold(task):
        print("holding", task.id, flush=True)
        await asyncio.Event().wait()

    await queue.start(hold, concurrency=1, prefetch=1)
    print("started", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_workers_task_reaches_another_worker_within_a_minute(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str, tmp_path: Path
) -> None:
    bound = 60.0
    stderr = (tmp_path / "holder.stderr").open("wb")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, rocketmq_prefix, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    assert holder.stdout is not None

    async def line() -> str:
        text = await asyncio.wait_for(holder.stdout.readline(), PATIENCE)  # type: ignore[union-attr]
        assert text, f"the holder exited: {(tmp_path / 'holder.stderr').read_text()[-2000:]}"
        return text.decode().strip()

    rival = TaskQueue(rocketmq_make(), group_id="workers", topic_prefix=rocketmq_prefix)
    got: list[tuple[str, float]] = []

    async def take(task: Task) -> None:
        got.append((task.id, time.monotonic()))

    try:
        assert await line() == "started"
        enqueued = await rival.enqueue(Task("hold", b"x"))
        assert await line() == f"holding {enqueued.id}"
        await rival.start(take)  # another worker of the group, while the holder holds the task
        assert got == []
        holder.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(holder.wait(), PATIENCE)
        await wait_for(lambda: bool(got), within=bound)
        assert [task_id for task_id, _ in got] == [enqueued.id]
        assert got[0][1] - killed_at < bound
        print(f"redelivered {got[0][1] - killed_at:.1f} s after the kill")
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        stderr.close()
        await rival.stop()


async def test_acks_made_just_before_close_reach_the_broker(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    broker = rocketmq_make(consume_timeout=timedelta(seconds=10))
    topic, group = f"{rocketmq_prefix}_q_normal", f"{rocketmq_prefix}_g"
    await broker.ensure_topics([topic])
    # more acks than one AckMessage request carries
    await broker.publish([Message(topic, f"m{i}".encode()) for i in range(150)])
    sub = await broker.subscribe([topic], group=group, window=256)
    got: list[bytes] = []
    async with asyncio.timeout(PATIENCE):
        async for d in sub:
            await d.ack()
            got.append(d.body)
            if len(got) == 150:
                break
    await sub.close()  # (ack() returned at once; close sends any ack still pending)
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(150))
    closed_at = time.time()
    rival = Collector(await broker.subscribe([topic], group=group, window=256), ack=True)
    # past the invisible deadline (10 s) with margin: an ack that never arrived would be back by now
    await wait_for(lambda: time.time() > closed_at + 14, within=20)
    assert rival.got == []
    await rival.stop()


async def test_broadcasting_gives_every_worker_every_task(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    broker = rocketmq_make(consumer_model=ConsumerModel.BROADCASTING)
    topic = f"{rocketmq_prefix}_q_normal"
    await broker.ensure_topics([topic])
    a = Collector(await broker.subscribe([topic], group=f"{rocketmq_prefix}_g", window=8), ack=True)
    b = Collector(await broker.subscribe([topic], group=f"{rocketmq_prefix}_g", window=8), ack=True)
    await broker.publish([Message(topic, f"m{i}".encode()) for i in range(4)])
    await wait_for(lambda: len(a.got) == 4 and len(b.got) == 4)
    assert sorted(a.bodies()) == sorted(b.bodies()) == [b"m0", b"m1", b"m2", b"m3"]
    await a.stop()
    await b.stop()


async def test_missing_topic_without_admin_names_the_command(rocketmq_endpoints: str, rocketmq_prefix: str) -> None:
    broker = RocketMQBroker(rocketmq_endpoints, namesrv=None, auth=_acl())
    broker._admin = None  # as if NOVA_ROCKETMQ_NAMESRV were unset
    try:
        with pytest.raises(errors.ConfigurationError, match="mqadmin updateTopic"):
            await broker.ensure_topics([f"{rocketmq_prefix}_nope_normal"])
        with pytest.raises(errors.EnqueueError) as info:
            await broker.publish([Message(f"{rocketmq_prefix}_nope_normal", b"x")])
        assert info.value.__cause__ is not None
    finally:
        await broker.close()


async def test_unreachable_broker_is_a_connection_error_without_secrets(rocketmq_prefix: str) -> None:
    broker = RocketMQBroker("127.0.0.1:1", namesrv="127.0.0.1:1", auth=("someone", "s3cr3t-value"))
    assert "s3cr3t-value" not in repr(broker)
    try:
        started = time.monotonic()
        with pytest.raises(errors.ConnectionError) as info:
            await broker.ensure_topics([f"{rocketmq_prefix}_q_normal"])
        assert time.monotonic() - started < 20
        assert "s3cr3t-value" not in str(info.value)
    finally:
        await broker.close()


def test_importing_the_client_leaves_logging_and_home_alone(tmp_path: Path) -> None:
    code = """
import logging, os, sys
handler = logging.StreamHandler(sys.stdout)
logging.getLogger().addHandler(handler)
from nova.brokers.rocketmq._client_patches import client
client()
assert handler in logging.getLogger().handlers, "root handlers were replaced"
assert handler.stream is sys.stdout and not sys.stdout.closed
assert not os.path.exists(os.path.expanduser("~/logs/rocketmq_python")), "client made ~/logs"
assert logging.getLogger("rocketmq-python-client").getEffectiveLevel() == logging.WARNING
"""
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr


def test_from_url_and_repr_hide_the_secret() -> None:
    broker = RocketMQBroker.from_url(
        "rocketmq://ak:se%2Fcret@127.0.0.1:8081,127.0.0.2:8081?group_id=g1&topic_prefix=app"
        "&consumer_model=broadcasting&consume_timeout=60&max_reconsume_times=5&namesrv=127.0.0.1:9876"
    )
    assert broker.endpoints == ["127.0.0.1:8081", "127.0.0.2:8081"]
    assert (broker.group_id, broker.topic_prefix) == ("g1", "app")
    assert broker.consumer_model is ConsumerModel.BROADCASTING
    assert broker.consume_timeout == timedelta(seconds=60)
    assert broker.max_reconsume_times == 5
    assert "se/cret" not in repr(broker) and "***" in repr(broker)
    with pytest.raises(errors.ConfigurationError, match="bogus"):
        RocketMQBroker.from_url("rocketmq://127.0.0.1:8081?bogus=1")
    with pytest.raises(errors.ConfigurationError):
        RocketMQBroker("127.0.0.1:8081", consume_timeout=timedelta(seconds=1))


@needs_acl
async def test_acl_wrong_secret_is_refused_clearly(rocketmq_endpoints: str, rocketmq_prefix: str) -> None:
    user, _ = _acl() or ("", "")
    broker = RocketMQBroker(rocketmq_endpoints, namesrv=None, auth=(user, "wrong-secret-xyz"))
    broker._admin = None
    started = time.monotonic()
    try:
        with pytest.raises(errors.AuthenticationError) as info:
            await broker.connect()
        assert time.monotonic() - started < 10
        assert "wrong-secret-xyz" not in str(info.value)
    finally:
        await broker.close()


@needs_acl
async def test_acl_user_without_permission_cannot_publish(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    admin_auth = _admin_auth()
    assert admin_auth is not None
    forbidden = "forbidden" + uuid.uuid4().hex[:8]  # the ACL harness denies these to the app user
    admin = RocketMQAdmin(_require("NOVA_ROCKETMQ_NAMESRV"), auth=admin_auth)
    await admin.create_topics([forbidden])
    await admin.aclose()
    broker = rocketmq_make()
    broker._admin = None
    with pytest.raises(errors.EnqueueError) as info:
        await broker.publish([Message(forbidden, b"x")])
    assert info.value.__cause__ is not None
    assert "no permission" in str(info.value)
    assert isinstance(info.value.__cause__, errors.AuthenticationError)


@needs_acl
async def test_publish_each_fails_only_the_message_to_a_topic_it_may_not_publish_to(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str
) -> None:
    admin_auth = _admin_auth()
    assert admin_auth is not None
    forbidden = "forbidden" + uuid.uuid4().hex[:8]  # the ACL harness denies these to the app user
    admin = RocketMQAdmin(_require("NOVA_ROCKETMQ_NAMESRV"), auth=admin_auth)
    await admin.create_topics([forbidden])
    await admin.aclose()
    broker = rocketmq_make()
    topic = f"{rocketmq_prefix}_q_normal"
    await broker.ensure_topics([topic])
    admin_of_broker, broker._admin = broker._admin, None  # the forbidden topic exists: not made again
    messages = [Message(topic, b"a"), Message(forbidden, b"x"), Message(topic, b"b")]
    outcomes = await broker.publish_each(messages)
    broker._admin = admin_of_broker  # the subscription's group is made with it
    assert [o is None for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1], errors.EnqueueError)
    assert "no permission" in str(outcomes[1])
    got = Collector(await broker.subscribe([topic], group=f"{rocketmq_prefix}-g", window=10), ack=True)
    await wait_for(lambda: len(got.got) == 2)
    assert sorted(got.bodies()) == [b"a", b"b"]
    await got.stop()


async def test_broker_restart_mid_stream_loses_nothing(
    rocketmq_make: Callable[..., RocketMQBroker], rocketmq_prefix: str, restart_broker: Callable[[], Awaitable[None]]
) -> None:
    broker = rocketmq_make()
    topic = f"{rocketmq_prefix}_q_normal"
    await broker.ensure_topics([topic])
    c = Collector(await broker.subscribe([topic], group=f"{rocketmq_prefix}_g", window=16), ack=True)
    sent = [f"before{i}".encode() for i in range(20)]
    await broker.publish([Message(topic, b) for b in sent])
    await wait_for(lambda: len(c.got) >= 5)
    await restart_broker()
    after = [f"after{i}".encode() for i in range(20)]
    deadline = time.monotonic() + 60
    while True:  # the client reconnects on its own; publishing may fail until it has
        try:
            await broker.publish([Message(topic, b) for b in after])
            break
        except errors.EnqueueError:
            assert time.monotonic() < deadline, "could not publish after the restart"
            await asyncio.sleep(0.5)
    await wait_for(lambda: set(sent + after) <= set(c.bodies()), within=120)
    assert c.error is None
    await c.stop()


class _FakeConsumer:
    """Stands in for the client's SimpleConsumer where the pump's bookkeeping is tested."""

    def change_invisible_duration(self, native: object, seconds: int) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _fake_message(n: int) -> Any:
    return type(
        "FakeMessage",
        (),
        {"properties": {}, "delivery_timestamp": None, "born_timestamp": None, "body": b"%d" % n,
         "message_id": str(n), "topic": "t"},
    )()


async def test_a_short_receive_of_the_helping_lane_lets_lane_0_poll_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The S11 timeout in CI, receive by receive (fake consumer, no broker): a batch of 4
    # failed and its 4 retries came back one by one. Lane 1's receive came back short and
    # lane 1 waited for a full one; lane 0 waited for room, which only an ack or nack
    # announced, and none came (the batch waited for its 4th task): nothing polled again.
    broker = RocketMQBroker("127.0.0.1:1")
    broker._admin = None  # no offsets to read
    sub = _Subscription(broker, ["t"], "g", window=4)
    calls: list[tuple[int, int, asyncio.Future[list[Any]]]] = []  # (lane, count, answer)

    async def receive(consumer: Any, count: int) -> list[Any]:
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        calls.append((sub._tasks.index(asyncio.current_task()), count, answer))  # type: ignore[arg-type]
        return await answer

    async def no_route(client: Any, topic: str) -> None:
        pass

    async def new_consumer(topic: str) -> Any:
        return _FakeConsumer()

    async def send_acks(batch: list[Any]) -> None:
        pass

    def answer(call: int, *numbers: int) -> None:
        calls[call][2].set_result([_fake_message(n) for n in numbers])

    monkeypatch.setattr(broker, "_query_route", no_route)
    monkeypatch.setattr(sub, "_new_consumer", new_consumer)
    monkeypatch.setattr(sub, "_receive", receive)
    monkeypatch.setattr(sub, "_send_acks", send_acks)
    got: list[Delivery] = []

    async def drain() -> None:
        async for d in sub:
            got.append(d)

    drainer = asyncio.create_task(drain())
    try:
        await sub.start()
        await wait_for(lambda: len(calls) == 1, within=5)
        assert calls[0][:2] == (0, 4)
        answer(0, 1, 2, 3, 4)  # full: lane 1 helps from now on
        await wait_for(lambda: len(got) == 4, within=5)
        # the batch failed: its retries went out and its tasks are acked, one by one
        await got[0].ack()
        await wait_for(lambda: len(calls) == 2, within=5)  # room for one: a lane asks for it
        await got[1].ack()
        await wait_for(lambda: len(calls) == 3, within=5)  # and the other lane for the next
        await got[2].ack()
        await got[3].ack()
        assert sorted((lane, count) for lane, count, _ in calls[1:]) == [(0, 1), (1, 1)]
        by_lane = {lane: i for i, (lane, _, _) in enumerate(calls) if i}
        answer(by_lane[1], 5)  # lane 1: 1 of 1, asks for 2 (4 - 1 held - 1 asked by lane 0)
        await wait_for(lambda: len(calls) == 4, within=5)
        assert calls[3][:2] == (1, 2)
        answer(by_lane[0], 6)  # lane 0: 1 of 1, waits for room (2 held + 2 asked by lane 1)
        await wait_for(lambda: len(got) == 6, within=5)
        answer(3, 7)  # lane 1: 1 of 2, waits for a full receive of lane 0
        await wait_for(lambda: len(got) == 7, within=5)
        await wait_for(lambda: len(calls) == 5, within=5)  # the window has room for the 4th retry
        assert calls[4][:2] == (0, 1)
        answer(4, 8)
        await wait_for(lambda: len(got) == 8, within=5)
    finally:
        await sub.close()
        await broker.close()
        await asyncio.wait_for(drainer, 5)
