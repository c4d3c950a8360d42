"""What nova changes in, and reads from, the rocketmq-python-client beyond its public API."""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
from concurrent.futures import Future
from typing import Any

_EXTRA_HINT = "RocketMQBroker needs the rocketmq extra: pip install 'nova-taskqueue[rocketmq]'"
_CLIENT_LOGGER = "rocketmq-python-client"


def _client() -> Any:
    """Import ``rocketmq`` without its logging side effects.

    On import the client calls ``logging.config.dictConfig`` (which closes every
    handler the application installed) and creates ``~/logs/rocketmq_python``.
    nova stands in for its log-config module, so the client logs to the
    ``rocketmq-python-client`` logger (WARNING and up, propagating as usual).
    """
    module = sys.modules.get("rocketmq")
    if module is not None:
        return module
    if "rocketmq.v5.log.log_config" not in sys.modules:
        stub = types.ModuleType("rocketmq.v5.log.log_config")
        client_log = logging.getLogger(_CLIENT_LOGGER)
        if client_log.level == logging.NOTSET:
            client_log.setLevel(logging.WARNING)
        stub.logger = client_log  # type: ignore[attr-defined]
        sys.modules["rocketmq.v5.log.log_config"] = stub
    try:
        return importlib.import_module("rocketmq")
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc


def _precise_timestamps(producer: Any) -> None:
    """Send delivery timestamps with their fraction of a second.

    The client only fills ``delivery_timestamp.seconds``; nova wraps its
    request builder to set the exact time (kept whole seconds, rounded up, if
    the client changes shape).
    """
    build = getattr(producer, "_Producer__send_req", None)
    if build is None:
        return

    def send_req(message: Any) -> Any:
        req = build(message)
        due = getattr(message, "_nova_due", None)
        if due is not None:
            for m in req.messages:
                if m.system_properties.HasField("delivery_timestamp"):
                    m.system_properties.delivery_timestamp.FromNanoseconds(round(due * 1e9))
        return req

    producer._Producer__send_req = send_req


def _no_route_lookups_on_the_io_thread(producer: Any) -> None:
    """Keep the client's shared I/O thread from blocking on itself.

    When a send fails, the client retries it from a callback on its I/O thread
    (one per process, shared by every client) and, if the topic's route is not in
    its cache, looks the route up with a request on that same thread and waits
    for the answer: the thread waits for itself, forever, and every RocketMQ
    client in the process stops (seen in CI while the broker restarted). On that
    thread the retry now gets the route this producer last used for the topic, or
    fails at once; the publish that waited for it then times out (see
    ``publish``) and raises EnqueueError. Elsewhere lookups are unchanged.
    """
    retrieve = getattr(producer, "_retrieve_topic_route_data", None)
    try:
        rpc_client = importlib.import_module("rocketmq.v5.client.connection.rpc_client").RpcClient
    except (ImportError, AttributeError):
        rpc_client = None
    if retrieve is None or rpc_client is None:
        return  # the client changed shape: nothing to guard here
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


def _telemetry_streams_on_the_io_thread(client: Any) -> None:
    """Have the client open its telemetry (settings) streams on its I/O thread only.

    The first route a client gets for a broker opens a gRPC stream to it, in the
    callback of the route query: on the I/O thread when the answer comes after the
    asking thread hooked the callback on, but in the asking thread (a nova executor
    thread, which called send, receive or startup) when the answer came first. gRPC
    makes a call with the thread's current event loop, and only the thread that made
    the channel has one (``RpcChannel.create_channel`` sets it), so there the stream
    fails ("There is no current event loop in thread 'nova-rocketmq_0'"), the route
    is not kept and the send or receive fails: "failed to fetch topic ... route".
    Elsewhere than on the I/O thread the stream is now made there, as in the usual
    order, waiting at most the client's request timeout for it.
    """
    rpc: Any = getattr(client, "rpc_client", None)
    make = getattr(rpc, "telemetry_stream", None)
    shared: Any = type(rpc)
    if make is None or not hasattr(shared, "_io_loop") or not hasattr(shared, "_io_loop_thread"):
        return  # the client changed shape: nothing to guard here
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
