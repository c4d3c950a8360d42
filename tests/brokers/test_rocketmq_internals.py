"""The installed rocketmq-python-client still has the shape ``_client_patches`` relies on,
and its failures map onto nova's errors as ``_errors`` says.

No broker needed (this runs in the sim suite): an upgrade of the client that moves
one of the names nova reaches for fails here, naming it, even where nova itself
would quietly fall back.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova.brokers.rocketmq import _client_patches as patches
from nova.brokers.rocketmq._errors import is_auth_failure, is_not_found, permission_denied, refusal, translate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rmq() -> Any:
    return patches.client()


@pytest.fixture(scope="module")
def config(rmq: Any) -> Any:
    return rmq.ClientConfiguration("127.0.0.1:9", rmq.Credentials("", ""), "", request_timeout=3)


@pytest.fixture
def producer(rmq: Any, config: Any) -> Iterator[Any]:
    made = rmq.Producer(config)  # never started: nothing is sent
    yield made
    made.rpc_client.stop()


def _received(rmq: Any, body: bytes = b"hi", *, message_id: str = "m1", stored_ms: int = 1_234_567) -> Any:
    """A client Message as the client makes it from a ReceiveMessage response."""
    from rocketmq.grpc_protocol import DigestType, Encoding, definition_pb2  # type: ignore[import-untyped]
    from rocketmq.v5.util import Misc  # type: ignore[import-untyped]

    raw = definition_pb2.Message()
    raw.topic.name = "t"
    raw.body = body
    props = raw.system_properties
    props.message_id = message_id
    props.receipt_handle = f"handle-{message_id}"
    props.body_encoding = Encoding.IDENTITY
    props.body_digest.type = DigestType.CRC32
    props.body_digest.checksum = Misc.crc32_checksum(body)
    props.born_timestamp.FromMilliseconds(stored_ms - 10)
    props.store_timestamp.FromMilliseconds(stored_ms)
    return rmq.Message().fromProtobuf(raw)


def _queue(broker_name: str, queue_id: int) -> Any:
    from rocketmq.grpc_protocol import definition_pb2
    from rocketmq.v5.model.topic_route import MessageQueue  # type: ignore[import-untyped]

    raw = definition_pb2.MessageQueue()
    raw.topic.name = "t"
    raw.id = queue_id
    raw.broker.name = broker_name
    return MessageQueue(raw)


def _owner(dotted: str) -> Any:
    try:
        return importlib.import_module(dotted)
    except ImportError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _instances(rmq: Any, config: Any) -> dict[str, Callable[[], Any]]:
    return {
        "rocketmq.v5.client.client.Client": lambda: rmq.SimpleConsumer(
            config, "g", {"t": rmq.FilterExpression()}, await_duration=1
        ),
        "rocketmq.v5.model.message.Message": lambda: _received(rmq),
        "rocketmq.v5.model.topic_route.MessageQueue": lambda: _queue("b", 0),
    }


@pytest.mark.parametrize(
    ("owner", "attribute", "kind", "used_by"),
    patches.CLIENT_SHAPE,
    ids=[f"{owner.rsplit('.', 1)[-1]}.{attribute}" for owner, attribute, _, _ in patches.CLIENT_SHAPE],
)
def test_the_client_has_what_nova_reaches_for(
    rmq: Any, config: Any, owner: str, attribute: str, kind: str, used_by: str
) -> None:
    try:
        where = _owner(owner)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"rocketmq-python-client changed: {owner} is gone ({used_by} needs its {attribute}): {exc}")
    if kind == "instance":
        where = _instances(rmq, config)[owner]()
    assert hasattr(where, attribute), (
        f"rocketmq-python-client changed: {owner}.{attribute} is gone ({used_by} relies on it)"
    )


def test_the_client_logs_through_novas_stand_in(tmp_path: Path) -> None:
    code = (
        "import logging, os, sys\n"
        "handler = logging.StreamHandler(sys.stdout)\n"
        "logging.getLogger().addHandler(handler)\n"
        "from nova.brokers.rocketmq import _client_patches as patches\n"
        "patches.client()\n"
        "import rocketmq.v5.log\n"
        "assert rocketmq.v5.log.logger is logging.getLogger(patches.CLIENT_LOGGER), 'the client has its own logger'\n"
        "assert handler in logging.getLogger().handlers, 'root handlers were replaced'\n"
        "assert not os.path.exists(os.path.expanduser('~/logs/rocketmq_python')), 'the client made ~/logs'\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr


def test_precise_timestamps_send_the_fraction_of_a_second(rmq: Any, producer: Any) -> None:
    patches.precise_timestamps(producer)
    message = rmq.Message()
    message.topic = "t"
    message.body = b"x"
    message.delivery_timestamp = 101
    patches.set_due(message, 100.25)
    assert patches.due_of(message) == 100.25
    producer._Producer__wrap_sending_message(message, False)  # (what send_async does first)
    req = producer._Producer__send_req(message)
    assert req.messages[0].system_properties.delivery_timestamp.ToNanoseconds() == 100_250_000_000


def test_a_route_asked_for_on_the_io_thread_never_waits_for_that_thread(producer: Any) -> None:
    from rocketmq.v5.client.connection.rpc_client import RpcClient  # type: ignore[import-untyped]

    patches.no_route_lookups_on_the_io_thread(producer)

    async def look_up() -> Any:
        return producer._retrieve_topic_route_data("never-used")

    answer = asyncio.run_coroutine_threadsafe(look_up(), RpcClient._io_loop)
    with pytest.raises(RuntimeError, match="no route of never-used"):
        answer.result(10)


def test_received_messages_and_receipts_give_what_nova_reads(rmq: Any) -> None:
    message = _received(rmq, stored_ms=1_234_567)
    assert patches.store_timestamp(message) == 1_234_567
    receipt = rmq.SendReceipt("id", "", _queue("broker-a", 3), 7)
    assert patches.queue_of(receipt) == ("broker-a", 3)


def test_one_ack_request_carries_every_message(rmq: Any) -> None:
    messages = [_received(rmq, message_id=f"m{i}") for i in range(3)]
    req = patches.ack_request("g", "ns", messages)
    assert (req.group.name, req.group.resource_namespace, req.topic.name) == ("g", "ns", "t")
    assert [(e.message_id, e.receipt_handle) for e in req.entries] == [(f"m{i}", f"handle-m{i}") for i in range(3)]


def test_a_change_invisible_request_names_the_message(rmq: Any) -> None:
    message = _received(rmq, message_id="m1")
    req = patches.change_invisible_request("g", "ns", message, 30)
    assert (req.group.name, req.group.resource_namespace) == ("g", "ns")
    assert (req.topic.name, req.topic.resource_namespace) == ("t", "ns")
    assert (req.message_id, req.receipt_handle, req.invisible_duration.seconds) == ("m1", "handle-m1", 30)


@pytest.mark.parametrize("code", ["OK", "INVALID_RECEIPT_HANDLE"])
async def test_a_change_of_invisible_time_gives_the_message_the_new_receipt_handle_only_if_taken(
    rmq: Any, config: Any, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker answers a change with a new receipt handle (the old one is spent); a
    refusal carries none, and the message keeps the one it has."""
    from concurrent.futures import Future

    from rocketmq.grpc_protocol import Code, service_pb2  # type: ignore[import-untyped]

    consumer = rmq.SimpleConsumer(config, "g", {"t": rmq.FilterExpression()}, await_duration=1)
    message = _received(rmq, message_id="m1")
    sent: list[tuple[Any, Any, float]] = []

    def answer(endpoints: Any, req: Any, metadata: Any, timeout: float) -> Future[Any]:
        sent.append((endpoints, req, timeout))
        res = service_pb2.ChangeInvisibleDurationResponse()
        res.status.code = getattr(Code, code)
        if code == "OK":
            res.receipt_handle = "handle-new"
        done: Future[Any] = Future()
        done.set_result(res)
        return done

    monkeypatch.setattr(consumer.rpc_client, "change_invisible_duration_async", answer)
    req = patches.change_invisible_request("g", "", message, 30)
    try:
        if code == "OK":
            await patches.change_invisible(consumer, message, req, timeout=3)
            assert message.receipt_handle == "handle-new"
        else:
            with pytest.raises(Exception, match="40") as info:
                await patches.change_invisible(consumer, message, req, timeout=3)
            assert type(info.value).__module__.startswith("rocketmq.")
            assert message.receipt_handle == "handle-m1"
        assert sent == [(message.endpoints, req, 3)]
    finally:
        consumer.rpc_client.stop()


def test_waiting_for_settings_gives_up_after_the_timeout(rmq: Any, config: Any) -> None:
    consumer = rmq.SimpleConsumer(config, "g", {"t": rmq.FilterExpression()}, await_duration=1)
    try:
        patches.wait_for_settings(consumer, 0.01)  # not started: no settings ever come
        assert not consumer._init_settings_event.is_set()
    finally:
        consumer.rpc_client.stop()


# ---------------------------------------------------------------- the error table


def _grpc_error(status: str) -> Exception:
    import grpc
    import grpc.aio

    return grpc.aio.AioRpcError(getattr(grpc.StatusCode, status), grpc.aio.Metadata(), grpc.aio.Metadata(), "details")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _grpc_error("UNAVAILABLE"), "ConnectionError"),
        (lambda: _grpc_error("DEADLINE_EXCEEDED"), "ConnectionError"),
        (lambda: _grpc_error("UNAUTHENTICATED"), "AuthenticationError"),
        (lambda: _grpc_error("PERMISSION_DENIED"), "AuthenticationError"),
        (lambda: _grpc_error("INTERNAL"), "BrokerError"),
        (lambda: _client_error("UnauthorizedException", "UNAUTHORIZED"), "AuthenticationError"),
        (lambda: _client_error("ForbiddenException", "FORBIDDEN"), "AuthenticationError"),
        (lambda: _client_error("ClientException", "FORBIDDEN"), "AuthenticationError"),
        (lambda: _client_error("NotFoundException", "TOPIC_NOT_FOUND"), "BrokerError"),
        (lambda: _client_error("InternalErrorException", "INTERNAL_ERROR"), "BrokerError"),
        (lambda: ConnectionRefusedError(111, "Connection refused"), "ConnectionError"),
        (lambda: TimeoutError(), "ConnectionError"),
        (lambda: Exception("failed to fetch topic:t route."), "BrokerError"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_client_failures_become_novas_errors(rmq: Any, make: Callable[[], Exception], expected: str) -> None:
    import nova

    error = translate(make(), "publish", ["s3cr3t"])
    assert type(error) is getattr(nova, expected)
    assert "publish" in str(error)


def _client_error(name: str, code: str) -> Exception:
    import rocketmq.v5.exception as client_errors  # type: ignore[import-untyped]
    from rocketmq.grpc_protocol import Code

    error: Exception = getattr(client_errors, name)("refused", getattr(Code, code))
    return error


def test_the_table_tells_the_callers_cases_apart(rmq: Any) -> None:
    import nova

    not_found = _client_error("NotFoundException", "CONSUMER_GROUP_NOT_FOUND")
    assert is_not_found(not_found) and not is_auth_failure(not_found)
    assert is_auth_failure(_client_error("UnauthorizedException", "UNAUTHORIZED"))
    assert not is_not_found(_grpc_error("UNAVAILABLE"))
    # the proxy's one code for bad credentials and for a denied permission (40100), told apart
    wrong_secret = _client_error("UnauthorizedException", "UNAUTHORIZED")
    denied = type(wrong_secret)("User:app has no permission to access Topic:t, the decision is deny.", 40100)
    assert is_auth_failure(denied) and permission_denied(translate(denied, "connect", []))
    assert not permission_denied(translate(wrong_secret, "connect", []))
    closed = nova.ClosedError("closed")
    assert translate(closed, "publish", []) is closed  # nova's own errors pass as they are
    error = translate(Exception("signed with s3cr3t, s3cr3t"), "connect", ["s3cr3t"])
    assert "s3cr3t" not in str(error) and "***" in str(error)


@pytest.mark.parametrize(
    ("code", "remark", "expected"),
    [
        (16, "check signature failed.", "AuthenticationError"),
        (16, "User:nobody is not found.", "AuthenticationError"),
        (16, "User:app has no permission to access Topic:t, no matched policies.", "AuthenticationError"),
        (1, "authentication failed for alice", "AuthenticationError"),
        (1, "the broker is busy", "BrokerError"),
        (17, "topic t does not exist", "BrokerError"),
    ],
)
def test_remoting_refusals_become_novas_errors(code: int, remark: str, expected: str) -> None:
    import nova

    error = refusal("create topic t", code, remark + " s3cr3t", ["s3cr3t"])
    assert type(error) is getattr(nova, expected)
    assert "create topic t" in str(error) and "s3cr3t" not in str(error)


async def test_an_admin_reply_nova_cannot_read_is_a_broker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import nova
    from nova.brokers.rocketmq import RocketMQBroker

    broker = RocketMQBroker("127.0.0.1:8081", namesrv="127.0.0.1:9876")
    assert broker._admin is not None

    async def unreadable(*args: object, **kwargs: object) -> None:
        raise ValueError("Expecting value: line 1 column 1 (char 0)")

    monkeypatch.setattr(broker._admin, "create_groups", unreadable)
    try:
        with pytest.raises(nova.BrokerError, match="create consumer group g") as info:
            await broker._ensure_group("g")
        assert isinstance(info.value.__cause__, ValueError)
    finally:
        await broker.close()
