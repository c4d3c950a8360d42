"""Everything nova takes from rocketmq-python-client beyond its public API, in one place.

The client's public face (``Producer.send_async``, ``SimpleConsumer.receive_async``,
``Message``, ``ClientConfiguration``) does not cover all nova needs. What it reaches
past it for is here, behind these functions:

    client()                               imports the client with a stand-in for its log-config module
    precise_timestamps(producer)           wraps Producer.__send_req: sub-second delivery timestamps
    set_due(message, due), due_of(message) the exact due time, kept on the client's Message for it
    no_route_lookups_on_the_io_thread(p)   replaces Client._retrieve_topic_route_data on the I/O thread
    telemetry_streams_on_the_io_thread(c)  replaces RpcClient.telemetry_stream off the I/O thread
    query_route(client, topic, ...)        one QueryRoute request through client.rpc_client
    ack_request(...), send_acks(...)       one AckMessage request for many messages (client.rpc_client)
    change_invisible_request(...),         one ChangeInvisibleDuration request (client.rpc_client); the
      change_invisible(...)                  message takes the new receipt handle only when it succeeded
    wait_for_settings(consumer, timeout)   Client._init_settings_event
    store_timestamp(message)               Message.__store_timestamp (no public accessor)
    queue_of(receipt)                      MessageQueue.__broker_name and __queue_id

``CLIENT_SHAPE`` lists every name of the client they rely on;
``tests/brokers/test_rocketmq_internals.py`` checks it against the installed client
without a broker, so an upgrade that moves one fails there, naming it. When a function
finds the client changed at run time it falls back as its docstring says.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
import types
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

__all__ = [
    "CLIENT_LOGGER",
    "CLIENT_SHAPE",
    "ack_request",
    "change_invisible",
    "change_invisible_request",
    "client",
    "due_of",
    "no_route_lookups_on_the_io_thread",
    "precise_timestamps",
    "query_route",
    "queue_of",
    "send_acks",
    "set_due",
    "store_timestamp",
    "telemetry_streams_on_the_io_thread",
    "wait_for_settings",
]

_EXTRA_HINT = "RocketMQBroker needs the rocketmq extra: pip install 'nova-taskqueue[rocketmq]'"
#: The logger the client writes to (nova leaves it at WARNING unless the application set a level).
CLIENT_LOGGER = "rocketmq-python-client"
_LOG_CONFIG_MODULE = "rocketmq.v5.log.log_config"
_DUE = "_nova_due"

_RPC_CLIENT = "rocketmq.v5.client.connection.rpc_client.RpcClient"
_CLIENT = "rocketmq.v5.client.client.Client"

#: (module.Class or module, attribute, on the class or on an instance, what needs it).
CLIENT_SHAPE: tuple[tuple[str, str, str, str], ...] = (
    ("rocketmq.v5.log", "logger", "module", "client(): read from the stand-in for " + _LOG_CONFIG_MODULE),
    ("rocketmq.v5.producer.producer.Producer", "_Producer__send_req", "class", "precise_timestamps"),
    (_CLIENT, "_retrieve_topic_route_data", "class", "no_route_lookups_on_the_io_thread"),
    (_RPC_CLIENT, "_io_loop", "class", "no_route_lookups_on_the_io_thread, telemetry_streams_on_the_io_thread"),
    (_RPC_CLIENT, "_io_loop_thread", "class", "no_route_lookups_on_the_io_thread, telemetry_streams_on_the_io_thread"),
    (_RPC_CLIENT, "telemetry_stream", "class", "telemetry_streams_on_the_io_thread"),
    (_RPC_CLIENT, "query_topic_route_async", "class", "query_route"),
    (_RPC_CLIENT, "ack_message_async", "class", "send_acks"),
    (_RPC_CLIENT, "change_invisible_duration_async", "class", "change_invisible"),
    (_CLIENT, "rpc_client", "class", "query_route, send_acks, change_invisible, telemetry_streams_on_the_io_thread"),
    (_CLIENT, "sign", "class", "query_route, send_acks, change_invisible"),
    (_CLIENT, "_init_settings_event", "instance", "wait_for_settings"),
    ("rocketmq.v5.client.client_configuration.ClientConfiguration", "rpc_endpoints", "class", "query_route"),
    ("rocketmq.v5.model.message.Message", "_Message__store_timestamp", "instance", "store_timestamp"),
    ("rocketmq.v5.model.message.Message", "endpoints", "class", "send_acks, change_invisible"),
    ("rocketmq.v5.model.message.Message", "receipt_handle", "class", "ack_request, change_invisible"),
    ("rocketmq.v5.model.topic_route.MessageQueue", "_MessageQueue__broker_name", "instance", "queue_of"),
    ("rocketmq.v5.model.topic_route.MessageQueue", "_MessageQueue__queue_id", "instance", "queue_of"),
    ("rocketmq.grpc_protocol", "QueryRouteRequest", "module", "query_route"),
    ("rocketmq.grpc_protocol", "AckMessageRequest", "module", "ack_request"),
    ("rocketmq.grpc_protocol", "ChangeInvisibleDurationRequest", "module", "change_invisible_request"),
    ("rocketmq.v5.util", "MessagingResultChecker", "module", "query_route, change_invisible"),
)


def client() -> Any:
    """The ``rocketmq`` module, imported without its logging side effects.

    On import the client calls ``logging.config.dictConfig`` (which closes every
    handler the application installed) and creates ``~/logs/rocketmq_python``.
    nova stands in for its log-config module, so the client logs to the
    ``rocketmq-python-client`` logger (WARNING and up, propagating as usual).
    """
    module = sys.modules.get("rocketmq")
    if module is not None:
        return module
    if _LOG_CONFIG_MODULE not in sys.modules:
        stub = types.ModuleType(_LOG_CONFIG_MODULE)
        client_log = logging.getLogger(CLIENT_LOGGER)
        if client_log.level == logging.NOTSET:
            client_log.setLevel(logging.WARNING)
        stub.logger = client_log  # type: ignore[attr-defined]
        sys.modules[_LOG_CONFIG_MODULE] = stub
    try:
        return importlib.import_module("rocketmq")
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc


# ---------------------------------------------------------------- publishing


def set_due(message: Any, due: float) -> None:
    """Keep the exact due time (epoch seconds) on the client's Message for ``precise_timestamps``."""
    setattr(message, _DUE, due)


def due_of(message: Any) -> float | None:
    """The due time ``set_due`` kept, or None."""
    due: float | None = getattr(message, _DUE, None)
    return due


def precise_timestamps(producer: Any) -> None:
    """Send delivery timestamps with their fraction of a second.

    The client only fills ``delivery_timestamp.seconds``; nova wraps its
    request builder to set the exact time kept by ``set_due``. If the client
    changed shape, timestamps stay whole seconds, rounded up by the caller.
    """
    build = getattr(producer, "_Producer__send_req", None)
    if build is None:
        return

    def send_req(message: Any) -> Any:
        req = build(message)
        due = due_of(message)
        if due is not None:
            for m in req.messages:
                if m.system_properties.HasField("delivery_timestamp"):
                    m.system_properties.delivery_timestamp.FromNanoseconds(round(due * 1e9))
        return req

    producer._Producer__send_req = send_req


def queue_of(receipt: Any) -> tuple[str, int] | None:
    """(broker name, queue id) of the queue a send receipt names, or None if the client changed shape."""
    queue = receipt.message_queue
    name = getattr(queue, "_MessageQueue__broker_name", None)
    queue_id = getattr(queue, "_MessageQueue__queue_id", None)
    if name is None or queue_id is None:
        return None
    return name, queue_id


def no_route_lookups_on_the_io_thread(producer: Any) -> None:
    """Keep the client's shared I/O thread from blocking on itself.

    When a send fails, the client retries it from a callback on its I/O thread
    (one per process, shared by every client) and, if the topic's route is not in
    its cache, looks the route up with a request on that same thread and waits
    for the answer: the thread would wait for itself, forever, and every RocketMQ
    client in the process would stop. On that thread the retry gets the route this
    producer last used for the topic, or fails at once; the publish that waited for
    it then times out and raises EnqueueError. Elsewhere lookups are unchanged.
    If the client changed shape, nothing is replaced.
    """
    retrieve = getattr(producer, "_retrieve_topic_route_data", None)
    try:
        rpc_client = importlib.import_module("rocketmq.v5.client.connection.rpc_client").RpcClient
    except (ImportError, AttributeError):
        rpc_client = None
    if retrieve is None or rpc_client is None:
        return
    known: dict[str, Any] = {}

    def route_of(topic: str) -> Any:
        if threading.current_thread() is getattr(rpc_client, "_io_loop_thread", None):
            route = known.get(topic)
            if route is None:
                raise RuntimeError(f"no route of {topic} known for a retry on the client's I/O thread")
            return route
        known[topic] = route = retrieve(topic)
        return route

    producer._retrieve_topic_route_data = route_of


def telemetry_streams_on_the_io_thread(client: Any) -> None:
    """Have the client open its telemetry (settings) streams on its I/O thread only.

    The first route a client gets for a broker opens a gRPC stream to it, in the
    callback of the route query: on the I/O thread when the answer comes after the
    asking thread hooked the callback on, but in the asking thread (a nova executor
    thread, which called send, receive or startup) when the answer came first. gRPC
    makes a call with the thread's current event loop, and only the thread that made
    the channel has one (``RpcChannel.create_channel`` sets it), so there the stream
    would fail ("There is no current event loop in thread ..."), the route would not
    be kept and the send or receive would fail: "failed to fetch topic ... route".
    Elsewhere than on the I/O thread the stream is made there, as in the usual
    order, waiting at most the client's request timeout for it. If the client
    changed shape, nothing is replaced.
    """
    rpc: Any = getattr(client, "rpc_client", None)
    make = getattr(rpc, "telemetry_stream", None)
    shared: Any = type(rpc)
    if make is None or not hasattr(shared, "_io_loop") or not hasattr(shared, "_io_loop_thread"):
        return
    within = float(getattr(getattr(client, "client_configuration", None), "request_timeout", None) or 5)

    def telemetry_stream(*args: Any, **kwargs: Any) -> Any:
        loop = shared._io_loop
        if loop is None or threading.current_thread() is shared._io_loop_thread:
            return make(*args, **kwargs)
        made: Future[Any] = Future()

        def on_io_thread() -> None:
            if not made.set_running_or_notify_cancel():
                return  # the asking thread gave up
            try:
                made.set_result(make(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the asking thread
                made.set_exception(exc)

        loop.call_soon_threadsafe(on_io_thread)
        try:
            return made.result(within)
        except TimeoutError:
            if made.cancel():
                raise TimeoutError(f"the client's I/O thread did not open the stream within {within:g} s") from None
            return made.result(within)  # it is being made right now

    rpc.telemetry_stream = telemetry_stream


async def query_route(client: Any, topic: str, *, namespace: str, timeout: float) -> None:
    """One QueryRoute request through ``client``'s channel to the proxy.

    Returns if the proxy routes ``topic``; raises the client's exception for a
    refusal (``NotFoundException`` for an unknown topic, ``UnauthorizedException``
    ...) or gRPC's for a failed call.
    """
    from rocketmq.grpc_protocol import QueryRouteRequest  # type: ignore[import-untyped]
    from rocketmq.v5.util import MessagingResultChecker  # type: ignore[import-untyped]

    endpoints = client.client_configuration.rpc_endpoints
    req = QueryRouteRequest()
    req.topic.name = topic
    req.topic.resource_namespace = namespace
    req.endpoints.CopyFrom(endpoints.endpoints)
    fut = client.rpc_client.query_topic_route_async(endpoints, req, metadata=client.sign(), timeout=timeout)
    res = await asyncio.wrap_future(fut)
    MessagingResultChecker.check(res.status)


# ---------------------------------------------------------------- consuming


def wait_for_settings(consumer: Any, timeout: float) -> None:
    """Block until the proxy has sent ``consumer`` its settings (it refuses receives until then),
    at most ``timeout`` seconds. Returns at once if the client changed shape."""
    ready = getattr(consumer, "_init_settings_event", None)
    if ready is not None:
        ready.wait(timeout)


def store_timestamp(message: Any) -> int | None:
    """When the broker stored a received message (epoch ms), or None if unknown."""
    stored: int | None = getattr(message, "_Message__store_timestamp", None)
    return stored


def ack_request(group: str, namespace: str, messages: Sequence[Any]) -> Any:
    """An AckMessage request for received messages of one topic (the client acks one per request)."""
    from rocketmq.grpc_protocol import AckMessageRequest

    req = AckMessageRequest()
    req.group.name = group
    req.group.resource_namespace = namespace
    req.topic.name = messages[0].topic
    req.topic.resource_namespace = namespace
    for message in messages:
        entry = req.entries.add()
        entry.message_id = message.message_id
        entry.receipt_handle = message.receipt_handle
    return req


async def send_acks(consumer: Any, request: Any, endpoints: Any, *, timeout: float) -> Any:
    """Send an ``ack_request`` through ``consumer``'s channel to ``endpoints`` (the messages'
    ``endpoints``); the AckMessageResponse (a status, and one per entry)."""
    fut = consumer.rpc_client.ack_message_async(endpoints, request, metadata=consumer.sign(), timeout=timeout)
    return await asyncio.wrap_future(fut)


def change_invisible_request(group: str, namespace: str, message: Any, seconds: int) -> Any:
    """A ChangeInvisibleDuration request: ``message`` (received) stays invisible ``seconds`` from now
    (0 gives it back). The protocol carries one receipt handle per request."""
    from rocketmq.grpc_protocol import ChangeInvisibleDurationRequest

    req = ChangeInvisibleDurationRequest()
    req.group.name = group
    req.group.resource_namespace = namespace
    req.topic.name = message.topic
    req.topic.resource_namespace = namespace
    req.receipt_handle = message.receipt_handle
    req.invisible_duration.seconds = seconds
    req.message_id = message.message_id
    return req


async def change_invisible(consumer: Any, message: Any, request: Any, *, timeout: float) -> None:
    """Send a ``change_invisible_request`` for ``message`` through ``consumer``'s channel.

    On success ``message`` carries the new receipt handle the broker answered with
    (acks, renewals and give-backs must use it: the old one no longer holds the
    message). Raises the client's exception for a refusal (the handle is kept) or
    gRPC's for a failed call. The client's own ``change_invisible_duration`` blocks
    a thread per call, and overwrites the handle before it checks the answer, so a
    refusal would leave the message without one.
    """
    from rocketmq.v5.util import MessagingResultChecker

    fut = consumer.rpc_client.change_invisible_duration_async(
        message.endpoints, request, metadata=consumer.sign(), timeout=timeout
    )
    res = await asyncio.wrap_future(fut)
    MessagingResultChecker.check(res.status)
    message.receipt_handle = res.receipt_handle
