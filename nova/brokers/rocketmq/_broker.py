"""RocketMQ 5 backend on Apache's ``rocketmq-python-client`` (gRPC, through the proxy).

    broker = RocketMQBroker(
        "127.0.0.1:8081",                  # proxy gRPC endpoint(s)
        namesrv="127.0.0.1:9876",          # lets nova create topics and groups itself
        auth=("nova-app", "secret"),       # ACL 2.0 user, if the cluster has ACL on
    )
    queue = TaskQueue(broker)

Topics and consumer groups. gRPC clients cannot create either, and the proxy
refuses unknown ones. Given ``namesrv=`` (or ``rocketmq://...?namesrv=...``, or,
when neither is given, the ``NOVA_ROCKETMQ_NAMESRV`` variable, with
``NOVA_ROCKETMQ_ADMIN_ACCESS_KEY``/``_SECRET_KEY`` as ``admin_auth``),
``ensure_topics`` and ``subscribe`` create them through RocketMQ's remoting admin
protocol (the same requests as ``mqadmin updateTopic`` / ``updateSubGroup``,
signed with ``admin_auth`` or else ``auth``), which takes milliseconds. Without
it they only check that the topics exist and raise ``ConfigurationError`` naming
the ``mqadmin`` commands to run. :class:`RocketMQAdmin` does the same by hand::

    await RocketMQAdmin("127.0.0.1:9876").create_topics(["myapp_default_normal"])
    await RocketMQAdmin("127.0.0.1:9876").create_groups(["myapp_workers"])

Topics carry normal and timer messages alike, so nova creates them with
``message.type=MIXED`` (the broker needs ``enableMixedMessageType=true``), or use
``topic_message_type=`` with a proxy running ``enableTopicMessageTypeCheck=false``.

Delays: ``Message.deliver_at`` becomes the message's delivery timestamp (a timer
message, rounded up to ``timer_precision`` — the broker's ``timerPrecisionMs`` —
so never early) when it fits ``max_delay`` (the proxy's ``maxDelayTimeMills``,
1 day by default); the engine cascades longer delays. ``consume_timeout`` is
the invisible duration of a received message; nova extends it while a handler
still holds the message. ``max_reconsume_times`` (the seed's option) is kept as
an attribute for the engine's retry policy; RocketMQ's own redelivery limit
(the group's ``retryMaxTimes``, after which the broker moves a message to
``%DLQ%<group>`` where nova never sees it) is set very high, so failed tasks
reach nova's dead-letter queue instead.
Acks: ``Delivery.ack()`` returns at once and a background task sends the acks
of each topic in batches (one AckMessage request carries up to 64 receipt
handles); ``close()`` sends the pending ones first. An ack that never reaches
the broker means a redelivery after ``consume_timeout``, never a lost task.
``ConsumerModel.BROADCASTING`` gives each subscription its own group
(``<group>-b<random>``), so every worker sees every task published while it runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import hmac
import importlib
import itertools
import json
import logging
import math
import os
import re
import struct
import sys
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from nova._broker import Delivery, Message
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectionError,  # noqa: A004 - nova.ConnectionError on purpose
    EnqueueError,
    NovaError,
)

if TYPE_CHECKING:
    from nova._clock import Clock

__all__ = ["ConsumerModel", "RocketMQAdmin", "RocketMQBroker"]

log = logging.getLogger("nova.rocketmq")
T = TypeVar("T")

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


class ConsumerModel(enum.Enum):
    """How the workers of one group share tasks."""

    #: Each task goes to one worker of the group (the default).
    CLUSTERING = "clustering"
    #: Every worker gets every task (each subscription has its own group).
    BROADCASTING = "broadcasting"


# ---------------------------------------------------------------- errors


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _is_auth_failure(exc: BaseException) -> bool:
    name = type(exc).__name__
    if name in ("UnauthorizedException", "ForbiddenException"):
        return True
    code = str(getattr(exc, "code", "") or "")
    return code.startswith(("401", "403")) or "UNAUTHENTICATED" in str(exc) or "PERMISSION_DENIED" in str(exc)


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    text = str(exc)
    return any(s in text for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "failed to connect", "Connection refused"))


def _translate(exc: BaseException, what: str, secrets: Sequence[str]) -> NovaError:
    """Turn a client exception into nova's error tree (the caller raises it ``from exc``)."""
    if isinstance(exc, NovaError):
        return exc
    detail = _scrub(f"{type(exc).__name__}: {exc}", secrets)
    if _is_auth_failure(exc):
        return AuthenticationError(f"RocketMQ refused the credentials or permission for {what}: {detail}")
    if _is_connection_failure(exc):
        return ConnectionError(f"cannot reach RocketMQ for {what}: {detail}")
    return BrokerError(f"RocketMQ failed during {what}: {detail}")


# ---------------------------------------------------------------- remoting admin

_GET_ROUTEINFO_BY_TOPIC = 105
_GET_BROKER_CLUSTER_INFO = 106
_UPDATE_AND_CREATE_TOPIC = 17
_UPDATE_AND_CREATE_SUBSCRIPTIONGROUP = 200
_TOPIC_NOT_EXIST = 17
_GET_MAX_OFFSET = 30
_QUERY_CONSUMER_OFFSET = 14
_FASTJSON_INT_KEY = re.compile(r"([{,])(-?\d+):")


class RocketMQAdmin:
    """Create topics and consumer groups over RocketMQ's remoting protocol.

    Talks to the name server to find the master brokers, then to each broker,
    like ``mqadmin updateTopic`` / ``updateSubGroup`` (no JVM needed).

        admin = RocketMQAdmin("127.0.0.1:9876", auth=("admin", "secret"))
        await admin.create_topics(["app_default_normal"], message_type="MIXED")
        await admin.create_groups(["app_workers"], retry_max_times=3)
    """

    def __init__(
        self,
        namesrv: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        cluster: str | None = None,
    ) -> None:
        addrs = namesrv.replace(";", ",").split(",") if isinstance(namesrv, str) else list(namesrv)
        self.namesrv = [a.strip() for a in addrs if a.strip()]
        if not self.namesrv:
            raise ConfigurationError("RocketMQAdmin needs at least one name server address host:port")
        self._auth = auth
        self.timeout = timeout
        self.cluster = cluster
        self._opaque = itertools.count(1)
        self._conns: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._routes: dict[str, tuple[float, list[tuple[str, str, int]]]] = {}

    def __repr__(self) -> str:
        user = f", auth=({self._auth[0]!r}, '***')" if self._auth else ""
        return f"RocketMQAdmin({self.namesrv!r}{user})"

    def _sign(self, ext: dict[str, str], body: bytes) -> dict[str, str]:
        if not self._auth:
            return ext
        ext = {**ext, "AccessKey": self._auth[0]}
        content = "".join(ext[k] for k in sorted(ext)).encode() + body
        digest = hmac.new(self._auth[1].encode(), content, hashlib.sha1).digest()
        ext["Signature"] = base64.b64encode(digest).decode()
        return ext

    async def _call(
        self, addr: str, code: int, ext: Mapping[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, str, bytes]:
        code, remark, _, data = await self._call_ext(addr, code, ext, body)
        return code, remark, data

    async def _call_ext(
        self, addr: str, code: int, ext: Mapping[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, str, dict[str, str], bytes]:
        """One request/response on a kept-open connection to ``addr`` (reopened once on failure)."""
        return (await self._call_many(addr, [(code, ext, body)]))[0]

    async def _call_many(
        self, addr: str, requests: Sequence[tuple[int, Mapping[str, str] | None, bytes]]
    ) -> list[tuple[int, str, dict[str, str], bytes]]:
        """Requests sent together on the connection to ``addr``, replies in request order.

        One round trip for all of them: the broker answers each (matched by
        ``opaque``), perhaps out of order.
        """
        frames = []
        opaques = []
        for code, ext, body in requests:
            opaque = next(self._opaque)
            header = {
                "code": code,
                "language": "PYTHON",
                "version": 480,
                "opaque": opaque,
                "flag": 0,
                "extFields": self._sign(dict(ext or {}), body),
                "serializeTypeCurrentRPC": "JSON",
            }
            raw = json.dumps(header).encode()
            frames.append(struct.pack(">ii", 4 + len(raw) + len(body), len(raw)) + raw + body)
            opaques.append(opaque)
        replies: dict[int, tuple[int, str, dict[str, str], bytes]] = {}
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            for attempt in (1, 2):
                replies.clear()
                try:
                    async with asyncio.timeout(self.timeout):
                        conn = self._conns.get(addr)
                        if conn is None:
                            host, _, port = addr.rpartition(":")
                            conn = self._conns[addr] = await asyncio.open_connection(host, int(port))
                        reader, writer = conn
                        writer.write(b"".join(frames))
                        await writer.drain()
                        while len(replies) < len(frames):
                            (length,) = struct.unpack(">i", await reader.readexactly(4))
                            data = await reader.readexactly(length)
                            header_len = struct.unpack(">i", data[:4])[0] & 0xFFFFFF
                            reply = json.loads(data[4 : 4 + header_len])
                            ext_out = {str(k): str(v) for k, v in (reply.get("extFields") or {}).items()}
                            replies[int(reply.get("opaque", -1))] = (
                                int(reply.get("code", -1)),
                                str(reply.get("remark") or ""),
                                ext_out,
                                data[4 + header_len :],
                            )
                    break
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self._drop(addr)
                    if attempt == 2:
                        raise ConnectionError(f"cannot reach RocketMQ at {addr}: {exc!r}") from exc
        try:
            return [replies[opaque] for opaque in opaques]
        except KeyError as exc:
            self._drop(addr)  # out of step with the broker: start over on a new connection
            raise ConnectionError(f"RocketMQ at {addr} answered a request nova did not send") from exc

    def _drop(self, addr: str) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            conn[1].close()

    async def aclose(self) -> None:
        """Close the kept-open connections."""
        conns = list(self._conns.values())
        self._conns.clear()
        for _, writer in conns:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _route(self, topic: str) -> list[tuple[str, str, int]]:
        """(broker name, master broker address, queue id) of each queue of ``topic``, cached briefly."""
        cached = self._routes.get(topic)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        code, remark, body = await self._namesrv_call(_GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        if code != 0:
            raise self._refused(f"look up topic {topic}", code, remark)
        info = json.loads(_FASTJSON_INT_KEY.sub(r'\1"\2":', body.decode()))
        masters = {b["brokerName"]: b.get("brokerAddrs", {}).get("0") for b in info.get("brokerDatas", [])}
        pairs = [
            (q["brokerName"], masters[q["brokerName"]], i)
            for q in info.get("queueDatas", [])
            if masters.get(q["brokerName"])
            for i in range(int(q.get("readQueueNums", 0)))
        ]
        self._routes[topic] = (time.monotonic() + 30.0, pairs)
        return pairs

    async def offsets(self, topic: str, group: str) -> tuple[int, int]:
        """(messages written, messages ``group`` has received) of ``topic``, over its queues.

        Pop consumption moves the group's offset on receive, so the difference is
        what the group has not received yet.
        """
        by_queue = await self.queue_offsets(topic, group)
        return sum(w for w, _ in by_queue.values()), sum(r for _, r in by_queue.values())

    async def queue_offsets(self, topic: str, group: str) -> dict[tuple[str, int], tuple[int, int]]:
        """``offsets`` of each queue, keyed by (broker name, queue id); one round trip per broker."""
        by_addr: dict[str, list[tuple[str, int]]] = {}
        for name, addr, queue_id in await self._route(topic):
            by_addr.setdefault(addr, []).append((name, queue_id))
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for addr, queues in by_addr.items():
            requests: list[tuple[int, Mapping[str, str] | None, bytes]] = []
            for _, queue_id in queues:
                ext = {"topic": topic, "queueId": str(queue_id)}
                requests.append((_GET_MAX_OFFSET, ext, b""))
                requests.append((_QUERY_CONSUMER_OFFSET, {**ext, "consumerGroup": group}, b""))
            replies = await self._call_many(addr, requests)
            for queue, (code, remark, high_out, _), (group_code, _, group_out, _) in zip(
                queues, replies[::2], replies[1::2], strict=True
            ):
                if code != 0:
                    raise self._refused(f"read the offsets of {topic}", code, remark)
                high = int(high_out.get("offset", "0"))
                out[queue] = (high, min(int(group_out.get("offset", "0")), high) if group_code == 0 else 0)
        return out

    async def _namesrv_call(self, code: int, ext: Mapping[str, str] | None = None) -> tuple[int, str, bytes]:
        last: Exception | None = None
        for addr in self.namesrv:
            try:
                return await self._call(addr, code, ext)
            except ConnectionError as exc:
                last = exc
        assert last is not None
        raise last

    async def master_brokers(self) -> list[str]:
        """Addresses of the master brokers (of ``cluster``, or of every cluster)."""
        code, remark, body = await self._namesrv_call(_GET_BROKER_CLUSTER_INFO)
        if code != 0:
            raise self._refused("read the cluster", code, remark)
        info = json.loads(_FASTJSON_INT_KEY.sub(r'\1"\2":', body.decode()))
        names: set[str] | None = None
        if self.cluster is not None:
            names = set(info.get("clusterAddrTable", {}).get(self.cluster, []))
        addrs = []
        for name, data in info.get("brokerAddrTable", {}).items():
            if names is None or name in names:
                master = data.get("brokerAddrs", {}).get("0")
                if master:
                    addrs.append(master)
        if not addrs:
            raise BrokerError(f"RocketMQ name server {self.namesrv} knows no master broker")
        return sorted(addrs)

    def _refused(self, what: str, code: int, remark: str) -> NovaError:
        secrets = [self._auth[1]] if self._auth else []
        detail = _scrub(f"code {code}: {remark}", secrets)
        if code in (16, 17) and ("auth" in remark.lower() or "permission" in remark.lower()):
            return AuthenticationError(f"RocketMQ refused to {what}: {detail}")
        if "signature" in remark.lower() or "authentic" in remark.lower() or "accessKey" in remark:
            return AuthenticationError(f"RocketMQ refused to {what}: {detail}")
        return BrokerError(f"RocketMQ refused to {what}: {detail}")

    async def topic_exists(self, topic: str) -> bool:
        code, remark, _ = await self._namesrv_call(_GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        if code == 0:
            return True
        if code == _TOPIC_NOT_EXIST:
            return False
        raise self._refused(f"look up topic {topic}", code, remark)

    async def create_topics(self, topics: Sequence[str], *, message_type: str = "MIXED", queues: int = 1) -> None:
        """Create (or update) topics with ``message.type`` and wait until routable."""
        brokers = await self.master_brokers()
        for topic in topics:
            ext = {
                "topic": topic,
                "defaultTopic": "TBW102",
                "readQueueNums": str(queues),
                "writeQueueNums": str(queues),
                "perm": "6",
                "topicFilterType": "SINGLE_TAG",
                "topicSysFlag": "0",
                "order": "false",
                "attributes": f"+message.type={message_type}",
                "force": "false",
            }
            for broker in brokers:
                code, remark, _ = await self._call(broker, _UPDATE_AND_CREATE_TOPIC, ext)
                if code != 0:
                    raise self._refused(f"create topic {topic}", code, remark)
        deadline = time.monotonic() + self.timeout
        for topic in topics:
            while not await self.topic_exists(topic):
                if time.monotonic() > deadline:
                    raise BrokerError(f"topic {topic} was created but the name server does not route it")
                await asyncio.sleep(0.05)

    async def create_groups(self, groups: Sequence[str], *, retry_max_times: int = 16) -> None:
        """Create (or update) consumer groups."""
        brokers = await self.master_brokers()
        for group in groups:
            body = json.dumps(
                {
                    "groupName": group,
                    "consumeEnable": True,
                    "consumeFromMinEnable": True,
                    "consumeBroadcastEnable": True,
                    "consumeMessageOrderly": False,
                    "retryQueueNums": 1,
                    "retryMaxTimes": retry_max_times,
                    "brokerId": 0,
                    "whichBrokerWhenConsumeSlowly": 1,
                    "notifyConsumerIdsChangedEnable": True,
                    "groupSysFlag": 0,
                    "consumeTimeoutMinute": 15,
                    "attributes": {},
                }
            ).encode()
            for broker in brokers:
                code, remark, _ = await self._call(broker, _UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, None, body)
                if code != 0:
                    raise self._refused(f"create consumer group {group}", code, remark)


# ---------------------------------------------------------------- broker


#: The group's retryMaxTimes: give-backs (close, nack, crashes) must never make
#: the broker dead-letter a task behind nova's back.
_BROKER_RETRY_MAX_TIMES = 10_000

_HEADER_MARK = "="  # header values are stored as "=value": RocketMQ rejects blank property values


def _parse_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    items = endpoints.replace(";", ",").split(",") if isinstance(endpoints, str) else list(endpoints)
    out = [e.strip() for e in items if e and e.strip()]
    if not out:
        raise ConfigurationError("RocketMQBroker needs at least one proxy endpoint host:port")
    for e in out:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"RocketMQ endpoint {e!r} is not host:port")
    return out


class RocketMQBroker:
    """A RocketMQ 5 cluster reached through its proxy (gRPC). See the module docstring.

    broker = RocketMQBroker(["127.0.0.1:8081"], namesrv="127.0.0.1:9876",
                            consume_timeout=timedelta(minutes=5))
    """

    clock: Clock | None = None

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        group_id: str | None = None,
        topic_prefix: str | None = None,
        consumer_model: ConsumerModel = ConsumerModel.CLUSTERING,
        consume_timeout: timedelta = timedelta(minutes=5),
        max_reconsume_times: int = 3,
        auth: tuple[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
        delay_slots: tuple[int, timedelta] | None = None,
        namesrv: str | Sequence[str] | None = None,
        admin_auth: tuple[str, str] | None = None,
        namespace: str = "",
        max_delay: timedelta = timedelta(days=1),
        topic_message_type: str = "MIXED",
        queues_per_topic: int = 1,
        request_timeout: int = 5,
        poll_seconds: int = 2,
        max_message_bytes: int = 4 * 1024 * 1024,
        timer_precision: timedelta | None = None,
    ) -> None:
        if auth is not None and credentials is not None and auth != credentials:
            raise ConfigurationError("give auth= or credentials= (the same thing), not both")
        auth = auth or credentials
        if auth is not None and (len(auth) != 2 or not all(isinstance(x, str) and x for x in auth)):
            raise ConfigurationError("auth must be (access_key, secret_key), both non-empty strings")
        if not isinstance(consumer_model, ConsumerModel):
            raise ConfigurationError(f"consumer_model must be a ConsumerModel, not {consumer_model!r}")
        if consume_timeout < timedelta(seconds=10) or consume_timeout > timedelta(hours=12):
            raise ConfigurationError("consume_timeout must be between 10 s and 12 h (RocketMQ invisible time)")
        if max_reconsume_times < 0:
            raise ConfigurationError("max_reconsume_times must be >= 0")
        if max_delay <= timedelta(seconds=30):
            raise ConfigurationError("max_delay must be longer than 30 s")
        self.endpoints = _parse_endpoints(endpoints)
        self.group_id = group_id
        self.topic_prefix = topic_prefix
        self.delay_slots = delay_slots
        self.consumer_model = consumer_model
        self.consume_timeout = consume_timeout
        self.max_reconsume_times = max_reconsume_times
        self.namespace = namespace
        self.max_delay = max_delay
        # A little under the proxy's cap: timestamps are rounded up to whole seconds.
        self.native_delay_max: timedelta | None = max_delay - timedelta(seconds=10)
        self.max_message_bytes: int | None = max_message_bytes
        if timer_precision is None:
            # the broker's timerPrecisionMs (default 1000); the harness runs 100
            env_ms = os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS")
            timer_precision = timedelta(milliseconds=int(env_ms)) if env_ms else timedelta(seconds=1)
        if timer_precision <= timedelta(0):
            raise ConfigurationError("timer_precision must be positive")
        self.timer_precision = timer_precision
        self.topic_message_type = topic_message_type
        self.queues_per_topic = queues_per_topic
        self.request_timeout = request_timeout
        # The client tries a send up to 3 times, each up to request_timeout, with backoff between.
        self._confirm_within = 4.0 * request_timeout + 5.0
        self.poll_seconds = poll_seconds
        self._auth = auth
        self._admin: RocketMQAdmin | None = None
        if namesrv is None and os.environ.get("NOVA_ROCKETMQ_NAMESRV"):
            # The harness's variables (see the module docstring): lets tests and
            # `nova` CLI runs create topics without extra wiring.
            namesrv = os.environ["NOVA_ROCKETMQ_NAMESRV"]
            if admin_auth is None and os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"):
                admin_auth = (
                    os.environ["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"],
                    os.environ.get("NOVA_ROCKETMQ_ADMIN_SECRET_KEY", ""),
                )
        if namesrv is not None:
            self._admin = RocketMQAdmin(namesrv, auth=admin_auth or auth)
        self._secrets = [s for s in ((auth or ("", ""))[1], (admin_auth or ("", ""))[1]) if s]
        self._producer: Any = None
        self._config: Any = None
        self._connect_lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._known_groups: set[str] = set()
        # topic -> (broker name, queue id) -> end offset after the messages this broker published
        self._published: dict[str, dict[tuple[str, int], int]] = {}
        self._subscriptions: set[_Subscription] = set()
        self._closed = False
        # The client's *_async ack/renew methods are broken (asyncio futures made
        # off-loop), so blocking calls run here, never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="nova-rocketmq")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- construction helpers

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RocketMQBroker:
        """``rocketmq://[ak:sk@]host:8081[,host2:8081]?group_id=..&topic_prefix=..&namesrv=..``

        Other query keys: ``consumer_model`` (clustering|broadcasting),
        ``consume_timeout`` and ``max_delay`` (seconds), ``max_reconsume_times``,
        ``namespace``, ``topic_message_type``.
        """
        parts = urlsplit(url)
        if parts.scheme != "rocketmq":
            raise ConfigurationError(f"not a rocketmq:// URL: {parts.scheme}://...")
        netloc = parts.netloc
        auth = None
        if "@" in netloc:
            userinfo, _, netloc = netloc.rpartition("@")
            ak, _, sk = userinfo.partition(":")
            auth = (unquote(ak), unquote(sk))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kwargs: dict[str, Any] = {"auth": auth}
        try:
            for key in ("group_id", "topic_prefix", "namesrv", "namespace", "topic_message_type"):
                if key in query:
                    kwargs[key] = query.pop(key)
            if "consumer_model" in query:
                kwargs["consumer_model"] = ConsumerModel(query.pop("consumer_model").lower())
            for key in ("consume_timeout", "max_delay"):
                if key in query:
                    kwargs[key] = timedelta(seconds=float(query.pop(key)))
            if "max_reconsume_times" in query:
                kwargs["max_reconsume_times"] = int(query.pop("max_reconsume_times"))
        except ValueError as exc:
            raise ConfigurationError(f"bad rocketmq URL option: {exc}") from exc
        if query:
            raise ConfigurationError(f"unknown rocketmq URL option(s): {', '.join(sorted(query))}")
        kwargs.update(overrides)
        return cls(netloc, **kwargs)

    def __repr__(self) -> str:
        auth = f", auth=({self._auth[0]!r}, '***')" if self._auth else ""
        return (
            f"RocketMQBroker({self.endpoints!r}, group_id={self.group_id!r}, "
            f"topic_prefix={self.topic_prefix!r}, consumer_model={self.consumer_model.name}{auth})"
        )

    def _err(self, exc: BaseException, what: str) -> NovaError:
        return _translate(exc, what, self._secrets)

    # -- lifecycle

    async def connect(self) -> None:
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed; create a new one")
        async with self._connect_lock:
            if self._producer is not None:
                return
            rmq = _client()
            ak, sk = self._auth or ("", "")
            try:
                config = rmq.ClientConfiguration(
                    ";".join(self.endpoints),
                    rmq.Credentials(ak, sk),
                    self.namespace,
                    request_timeout=self.request_timeout,
                )
                producer = rmq.Producer(config)
                _precise_timestamps(producer)
                _no_route_lookups_on_the_io_thread(producer)
                _telemetry_streams_on_the_io_thread(producer)
                await self._run(producer.startup)
            except Exception as exc:
                raise self._err(exc, "connect") from exc
            self._config = config
            self._producer = producer
            try:
                # Any RPC checks reachability and credentials: ask for a route.
                await self._query_route(producer, "TBW102")
            except NovaError as exc:
                authenticated_but_not_allowed = "no permission" in str(exc)
                if authenticated_but_not_allowed or not isinstance(exc, (AuthenticationError, ConnectionError)):
                    return  # reachable and signed in; the topic itself may be hidden
                self._producer = None
                await self._run(_shutdown_quietly, producer)
                raise

    async def _query_route(self, client: Any, topic: str) -> None:
        """One QueryRoute RPC; raises nova errors (NotFound -> ConfigurationError)."""
        from rocketmq.grpc_protocol import QueryRouteRequest  # type: ignore[import-untyped]
        from rocketmq.v5.util import MessagingResultChecker  # type: ignore[import-untyped]

        req = QueryRouteRequest()
        req.topic.name = topic
        req.topic.resource_namespace = self.namespace
        req.endpoints.CopyFrom(client.client_configuration.rpc_endpoints.endpoints)
        try:
            fut = client.rpc_client.query_topic_route_async(
                client.client_configuration.rpc_endpoints,
                req,
                metadata=client.sign(),
                timeout=self.request_timeout,
            )
            res = await asyncio.wrap_future(fut)
            MessagingResultChecker.check(res.status)
        except Exception as exc:
            if type(exc).__name__ == "NotFoundException":
                raise ConfigurationError(
                    f"RocketMQ topic {topic!r} does not exist. Give RocketMQBroker namesrv= so nova creates "
                    f"it, or run: mqadmin updateTopic -n <namesrv> -c <cluster> -t {topic} "
                    f"-a +message.type={self.topic_message_type}"
                ) from exc
            raise self._err(exc, f"route of topic {topic}") from exc

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        await self.connect()
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        if self._admin is not None:
            await self._admin.create_topics(missing, message_type=self.topic_message_type, queues=self.queues_per_topic)
        else:
            for topic in missing:
                await self._query_route(self._producer, topic)
        self._known_topics.update(missing)

    async def _ensure_group(self, group: str) -> None:
        if group in self._known_groups or self._admin is None:
            return
        await self._admin.create_groups([group], retry_max_times=_BROKER_RETRY_MAX_TIMES)
        self._known_groups.add(group)

    async def publish(self, messages: Sequence[Message]) -> None:
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed")
        if not messages:
            return
        await self.connect()
        try:
            native = [self._to_native(m) for m in messages]
        except NovaError:
            raise
        except Exception as exc:
            raise EnqueueError(f"RocketMQ cannot carry this message: {self._err(exc, 'publish')}") from exc
        producer = self._producer

        def submit() -> list[Any]:
            return [producer.send_async(m) for m in native]

        try:
            futures = await self._run(submit)
            # Bounded: a send the client lost track of must not hang the caller (see
            # _no_route_lookups_on_the_io_thread); it raises EnqueueError like any failure.
            receipts = await _confirmed(futures, self._confirm_within)
            self._note_published(native, receipts)
            if log.isEnabledFor(logging.DEBUG):
                _log_timer_sends(native, receipts)
        except _Unconfirmed as exc:
            raise EnqueueError(
                f"RocketMQ did not confirm the publish within {self._confirm_within:g} s (none, some or all of "
                f"the {len(messages)} message(s) may be stored)"
            ) from exc
        except Exception as exc:
            cause = self._err(exc, "publish")
            if "route" in str(exc):
                # The client hides why a route lookup failed (permission, unknown topic): ask again.
                for topic in dict.fromkeys(m.topic for m in messages):
                    try:
                        await self._query_route(producer, topic)
                    except NovaError as why:
                        raise EnqueueError(f"RocketMQ refused the publish to {topic}: {why}") from why
            if isinstance(cause, ConnectionError) or "settings" in str(exc):
                # the next publish starts from a fresh producer (see _Subscription._pump_loop)
                await self._reset_producer(producer)
            raise EnqueueError(f"RocketMQ did not confirm the publish: {cause}") from exc

    def _note_published(self, native: Sequence[Any], receipts: Sequence[Any]) -> None:
        """Remember the end offset of each queue written to (see ``_Subscription._start_read``)."""
        for message, receipt in zip(native, receipts, strict=True):
            if message.delivery_timestamp:
                continue  # timer messages sit in the timer's own topic until due
            queue = receipt.message_queue
            name = getattr(queue, "_MessageQueue__broker_name", None)
            queue_id = getattr(queue, "_MessageQueue__queue_id", None)
            offset = getattr(receipt, "offset", None)
            if name is None or queue_id is None or offset is None:
                return  # the client changed shape: rely on the broker's offsets alone
            ends = self._published.setdefault(message.topic, {})
            ends[(name, queue_id)] = max(ends.get((name, queue_id), 0), int(offset) + 1)

    async def _reset_producer(self, producer: Any) -> None:
        async with self._connect_lock:
            if self._producer is producer:
                self._producer = None
                await self._run(_shutdown_quietly, producer)

    def _to_native(self, message: Message) -> Any:
        rmq = _client()
        native = rmq.Message()
        native.topic = message.topic
        native.body = message.body
        for key, value in message.headers.items():
            native.add_property(key, _HEADER_MARK + value)
        if message.key:
            native.keys = message.key
        if message.deliver_at is not None and message.deliver_at > time.time():
            # The broker's timer fires at the start of a timerPrecisionMs slot:
            # round up to a slot boundary so the message is never early.
            step = self.timer_precision.total_seconds()
            due = math.ceil(round(message.deliver_at / step, 6)) * step
            native.delivery_timestamp = math.ceil(due)  # the client sends whole seconds...
            native._nova_due = due  # ...so _precise_timestamps adds the fraction
        return native

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> _Subscription:
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed")
        if window < 1:
            raise ConfigurationError("window must be >= 1")
        await self.connect()
        if self.consumer_model is ConsumerModel.BROADCASTING:
            group = f"{group}-b{uuid.uuid4().hex[:12]}"
        await self._ensure_group(group)
        sub = _Subscription(self, list(dict.fromkeys(topics)), group, window)
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._run(_shutdown_quietly, producer)
        self._executor.shutdown(wait=False)
        if self._admin is not None:
            await self._admin.aclose()


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


class _Unconfirmed(Exception):
    """The client gave no answer for a send in time."""


async def _confirmed(futures: Sequence[Any], within: float) -> list[Any]:
    """The receipts of the client's send futures; _Unconfirmed if they do not all come in time."""
    receipts = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    try:
        return await asyncio.wait_for(receipts, within)
    except TimeoutError as exc:
        if receipts.done() and not receipts.cancelled():
            raise  # a send's own timeout, not ours
        raise _Unconfirmed() from exc


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


def _log_timer_sends(native: Sequence[Any], receipts: Sequence[Any]) -> None:
    """Debug trail of timer messages: when each was confirmed and when it is due.

    With the receive side's record (``_Subscription._wrap``) it tells a late
    timer (the broker held it) from a late receive (nothing polled).
    """
    now = time.time()
    for message, receipt in zip(native, receipts, strict=True):
        due = getattr(message, "_nova_due", None)
        if due is not None:
            log.debug(
                "timer message %s sent to %s, due in %.3f s (at %.3f)",
                getattr(receipt, "message_id", "?"),
                message.topic,
                due - now,
                due,
            )


def _shutdown_quietly(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:
        log.debug("RocketMQ client shutdown failed", exc_info=True)


# ---------------------------------------------------------------- consuming


@dataclass(eq=False)
class _Delivery:
    topic: str
    body: bytes
    headers: Mapping[str, str]
    published_at: float
    _sub: _Subscription
    _native: Any
    _consumer: Any
    _visible_until: float
    _done: bool = False

    async def ack(self) -> None:
        await self._sub._settle(self, ack=True)

    async def nack(self) -> None:
        await self._sub._settle(self, ack=False)

    def __repr__(self) -> str:
        return f"<RocketMQ delivery topic={self.topic} id={self._native.message_id}>"


#: Messages per receive (the proxy hands out at most 32)...
_RECEIVE_BATCH = 32
#: ...and receives in flight per topic while it has a backlog (the second overlaps the first's round trip).
_RECEIVES_IN_FLIGHT = 2
#: Acks ride in AckMessage requests of up to this many entries...
_ACK_BATCH = 64
#: ...with at most this many requests in flight; acks made meanwhile wait and join bigger batches.
_ACKS_IN_FLIGHT = 4
_ACK_ATTEMPTS = 3
_CODE_OK, _CODE_MULTIPLE_RESULTS = 20000, 30000


class _Subscription:
    """SimpleConsumers of one group, one per topic, so each topic has its own window.

    ``ack()`` returns at once: the delivery leaves the window and a background
    task sends the acks in batches (one AckMessage request per topic carries
    many receipt handles). An ack that never reaches the broker only means a
    redelivery after ``consume_timeout``; ``close()`` sends the pending ones first.
    """

    def __init__(self, broker: RocketMQBroker, topics: list[str], group: str, window: int) -> None:
        self._broker = broker
        self.topics = topics
        self.group = group
        self.window = window
        self._invisible = int(broker.consume_timeout.total_seconds())
        self._consumers: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._held: dict[str, set[_Delivery]] = {t: set() for t in topics}
        self._buffered: dict[str, int] = dict.fromkeys(topics, 0)
        # per topic: the group's received offset read before each receive in flight
        self._receive_bases: dict[str, list[int]] = {t: [] for t in topics}
        self._reserved: dict[str, int] = dict.fromkeys(topics, 0)
        self._busy: dict[str, asyncio.Event] = {t: asyncio.Event() for t in topics}
        self._reads_running: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self._reads_queued: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self._ack_pending: list[_Delivery] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self._acks_stop = False
        self._queue: asyncio.Queue[_Delivery | BaseException | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<RocketMQ subscription group={self.group} topics={self.topics}>"

    async def start(self) -> None:
        try:
            for topic in self.topics:
                await self._broker._query_route(self._broker._producer, topic)
                self._consumers[topic] = await self._new_consumer(topic)
            for topic in self._consumers:
                for lane in range(_RECEIVES_IN_FLIGHT):
                    self._tasks.append(asyncio.create_task(self._pump(topic, lane)))
            self._ack_task = asyncio.create_task(self._ack_loop())
            self._tasks.append(asyncio.create_task(self._renew()))
        except BaseException as exc:
            for task in [*self._tasks, *([self._ack_task] if self._ack_task else [])]:
                task.cancel()
            await self._shutdown_consumers()
            if isinstance(exc, NovaError) or not isinstance(exc, Exception):
                raise
            raise self._broker._err(exc, f"subscribe {self.group}") from exc

    async def _new_consumer(self, topic: str) -> Any:
        rmq = _client()
        consumer = rmq.SimpleConsumer(
            self._broker._config,
            self.group,
            {topic: rmq.FilterExpression()},
            await_duration=self._broker.poll_seconds,
        )
        _telemetry_streams_on_the_io_thread(consumer)
        await self._broker._run(consumer.startup)
        # The proxy refuses receives until it has the client's settings (sent on a stream).
        ready = getattr(consumer, "_init_settings_event", None)
        if ready is not None:
            await self._broker._run(ready.wait, float(self._broker.request_timeout))
        return consumer

    async def _receive(self, consumer: Any, count: int) -> list[Any]:
        fut = await self._broker._run(consumer.receive_async, count, self._invisible)
        result: list[Any] = await asyncio.wrap_future(fut)
        return result

    async def _pump(self, topic: str, lane: int) -> None:
        try:
            await self._pump_loop(topic, lane)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer of the subscription
            err = self._broker._err(exc, f"consume {topic}")
            err.__cause__ = exc
            self._queue.put_nowait(err)

    async def _pump_loop(self, topic: str, lane: int) -> None:
        """Receive into the window. Lane 0 always polls; the other lanes only help while
        receives come back full, and leave failures to lane 0."""
        backoff = 0.2
        failures = 0
        held = self._held[topic]
        busy = self._busy[topic]
        bases = self._receive_bases[topic]
        while not self._closing:
            if lane:
                await busy.wait()
            while len(held) + self._reserved[topic] >= self.window and not self._closing:
                self._room.clear()
                await self._room.wait()
            if self._closing:
                break
            count = min(self.window - len(held) - self._reserved[topic], _RECEIVE_BATCH)
            self._reserved[topic] += count
            consumer = self._consumers[topic]
            base: list[int] = []
            started = time.monotonic()
            try:
                if self._broker._admin is not None:
                    # backlog() counts from here while the receive is in flight: the
                    # broker moves the group's offset before the messages reach us.
                    base.append((await self._offsets(topic, fresh=False))[1])
                    bases.extend(base)
                asked = time.monotonic()
                messages = await self._receive(consumer, count)
                if log.isEnabledFor(logging.DEBUG):  # with the timer trail: a stalled pump or a held message
                    log.debug("receive on %s (lane %d): %d of %d in %.3f s, after %.3f s reading offsets",
                              topic, lane, len(messages), count, time.monotonic() - asked, asked - started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried or surfaced below
                if base:
                    bases.remove(base[0])
                if self._closing:
                    break
                if lane:
                    busy.clear()
                    log.debug("RocketMQ receive on %s failed: %s", topic, exc)
                    continue
                text = str(exc)
                if "group not found" in text.lower() or type(exc).__name__ == "NotFoundException":
                    self._queue.put_nowait(
                        ConfigurationError(
                            f"RocketMQ consumer group {self.group!r} or topic {topic!r} does not exist. "
                            "Give RocketMQBroker namesrv= so nova creates them, or run: mqadmin "
                            f"updateSubGroup -n <namesrv> -c <cluster> -g {self.group}"
                        )
                    )
                    return
                if _is_auth_failure(exc):
                    err = self._broker._err(exc, f"receive {topic}")
                    err.__cause__ = exc
                    self._queue.put_nowait(err)
                    return
                failures += 1
                log.warning("RocketMQ receive on %s failed (retrying): %s", topic, self._broker._err(exc, "receive"))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if failures >= 3 or "settings" in text:
                    # After a proxy restart the client's settings stream stays dead for
                    # minutes: start a fresh consumer (the old one still acks what it gave).
                    try:
                        consumer = await self._new_consumer(topic)
                    except Exception as rebuild_exc:  # noqa: BLE001 - retried on the next round
                        log.warning("RocketMQ consumer restart on %s failed: %s", topic, rebuild_exc)
                    else:
                        self._retired.append(self._consumers[topic])
                        self._consumers[topic] = consumer
                        failures = 0
                continue
            finally:
                self._reserved[topic] -= count
                # What the receive did not fill is room again: a lane waiting for room asks
                # for it (the messages it got join `held` before that lane runs). Else a
                # helping lane's short receive left lane 0 waiting for an ack that may never
                # come: a batch waiting for its last task held the rest of the window.
                self._room.set()
            backoff = 0.2
            failures = 0
            if base:
                bases.remove(base[0])  # (the messages are counted in _buffered below)
            if len(messages) >= count:
                busy.set()
            else:
                busy.clear()
            now = time.time()
            for native in messages:
                delivery = self._wrap(topic, native, consumer, now)
                if self._closing:
                    await self._give_back(delivery)
                    continue
                held.add(delivery)
                self._buffered[topic] += 1
                self._queue.put_nowait(delivery)

    def _wrap(self, topic: str, native: Any, consumer: Any, now: float) -> _Delivery:
        props = native.properties or {}
        headers = {k: (v[1:] if v.startswith(_HEADER_MARK) else v) for k, v in props.items()}
        # store_timestamp has no public accessor in the client; born_timestamp is whole seconds.
        # Timer messages are stored again when due, so their store time is the due time.
        stored = None if native.delivery_timestamp else getattr(native, "_Message__store_timestamp", None)
        stamp = stored or native.born_timestamp or now * 1000
        if native.delivery_timestamp and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "timer message %s received on %s by %s, %.3f s after it was due",
                native.message_id,
                topic,
                self.group,
                now - native.delivery_timestamp / 1000.0,
            )
        return _Delivery(
            topic=topic,
            body=bytes(native.body or b""),
            headers=headers,
            published_at=stamp / 1000.0,
            _sub=self,
            _native=native,
            _consumer=consumer,
            _visible_until=now + self._invisible,
        )

    async def _renew(self) -> None:
        """Extend the invisible time of deliveries still held near their deadline."""
        margin = max(self._invisible / 3.0, 3.0)
        while not self._closing:
            now = time.time()
            soonest = now + margin
            for held in self._held.values():
                for d in list(held):
                    if d._done:
                        continue
                    if d._visible_until - now <= margin:
                        try:
                            await self._change(d, self._invisible)
                            d._visible_until = time.time() + self._invisible
                        except Exception as exc:  # noqa: BLE001 - retried on the next round
                            log.warning("RocketMQ could not extend a delivery: %s", self._broker._err(exc, "renew"))
                    soonest = min(soonest, d._visible_until - margin)
            await asyncio.sleep(min(max(soonest - time.time(), 0.5), margin))

    async def _change(self, d: _Delivery, seconds: int) -> None:
        await self._broker._run(d._consumer.change_invisible_duration, d._native, seconds)

    async def _give_back(self, d: _Delivery) -> None:
        try:
            await self._change(d, 0)
        except Exception:
            log.debug("RocketMQ give-back failed", exc_info=True)

    async def _settle(self, d: _Delivery, *, ack: bool) -> None:
        if d._done:
            return
        d._done = True
        held = self._held[d.topic]
        if ack:
            held.discard(d)
            self._room.set()
            if not self._closed.is_set():  # (else already given back at close)
                self._ack_pending.append(d)
                self._ack_wake.set()
            return
        try:
            if self._closed.is_set():
                return  # already given back at close
            await self._change(d, 0)
        except Exception as exc:
            d._done = False
            raise self._broker._err(exc, "nack") from exc
        finally:
            if d._done:
                held.discard(d)
                self._room.set()

    async def _ack_loop(self) -> None:
        """Send pending acks in batches until close() has stopped it and none are left."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._ack_pending:
                    if self._acks_stop:
                        break
                    self._ack_wake.clear()
                    await self._ack_wake.wait()
                    continue
                while len(in_flight) >= _ACKS_IN_FLIGHT:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                pending, self._ack_pending = self._ack_pending, []
                batches: dict[tuple[int, str], list[_Delivery]] = {}
                for d in pending:
                    batches.setdefault((id(d._consumer), d._native.topic), []).append(d)
                for batch in batches.values():
                    for i in range(0, len(batch), _ACK_BATCH):
                        task = asyncio.create_task(self._send_acks(batch[i : i + _ACK_BATCH]))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _send_acks(self, batch: list[_Delivery]) -> None:
        """One AckMessage request for deliveries of one consumer and topic (retried a little)."""
        from rocketmq.grpc_protocol import AckMessageRequest

        consumer, first = batch[0]._consumer, batch[0]._native
        namespace = self._broker.namespace
        req = AckMessageRequest()
        req.group.name = self.group
        req.group.resource_namespace = namespace
        req.topic.name = first.topic
        req.topic.resource_namespace = namespace
        for d in batch:
            entry = req.entries.add()
            entry.message_id = d._native.message_id
            entry.receipt_handle = d._native.receipt_handle
        for attempt in range(1, _ACK_ATTEMPTS + 1):
            try:
                fut = consumer.rpc_client.ack_message_async(
                    first.endpoints, req, metadata=consumer.sign(), timeout=self._broker.request_timeout
                )
                res = await asyncio.wrap_future(fut)
            except Exception as exc:  # noqa: BLE001 - retried, then logged: the broker redelivers
                if attempt == _ACK_ATTEMPTS:
                    log.warning(
                        "RocketMQ did not take %d acks on %s; they will be redelivered: %s",
                        len(batch),
                        first.topic,
                        self._broker._err(exc, "ack"),
                    )
                    return
                await asyncio.sleep(0.2 * attempt)
                continue
            code = res.status.code
            if code == _CODE_MULTIPLE_RESULTS:
                failed = [e for e in res.entries if e.status.code != _CODE_OK]
                if failed:
                    log.warning(
                        "RocketMQ refused %d of %d acks on %s (they will be redelivered): %s",
                        len(failed),
                        len(batch),
                        first.topic,
                        failed[0].status.message,
                    )
            elif code != _CODE_OK:
                log.warning(
                    "RocketMQ refused %d acks on %s (they will be redelivered): %s %s",
                    len(batch),
                    first.topic,
                    code,
                    res.status.message,
                )
            return

    async def _offsets(self, topic: str, *, fresh: bool) -> tuple[int, int]:
        """The admin's ``offsets`` of ``topic``, one read shared by the callers that wait for it.

        ``fresh`` callers only share a read that starts after they asked (so a
        task published before the call is counted); the others take any read
        on its way.
        """
        read = self._reads_running.get(topic)
        if read is None:
            read = self._start_read(topic, None)
        elif fresh:
            read = self._reads_queued.get(topic) or self._start_read(topic, read)
        return await asyncio.shield(read)

    def _start_read(self, topic: str, after: asyncio.Future[tuple[int, int]] | None) -> asyncio.Future[tuple[int, int]]:
        admin = self._broker._admin
        assert admin is not None

        async def read() -> tuple[int, int]:
            if after is not None:
                await asyncio.wait([after])
                if self._reads_queued.get(topic) is task:
                    del self._reads_queued[topic]
                self._reads_running[topic] = task
            by_queue = await admin.queue_offsets(topic, self.group)
            # The broker counts a message in its queue's max offset only once it has
            # dispatched it (a moment after confirming the send): what this process
            # published is counted from the send receipts already.
            published = self._broker._published.get(topic, {})
            written = sum(max(high, published.get(queue, 0)) for queue, (high, _) in by_queue.items())
            return written, sum(received for _, received in by_queue.values())

        task = asyncio.ensure_future(read())
        (self._reads_running if after is None else self._reads_queued)[topic] = task

        def forget(done: asyncio.Future[tuple[int, int]]) -> None:
            for reads in (self._reads_running, self._reads_queued):
                if reads.get(topic) is done:
                    del reads[topic]
            if not done.cancelled():
                done.exception()  # retrieved here; each caller still gets it raised

        task.add_done_callback(forget)
        return task

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            if self._closing and self._queue.empty():
                return
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._buffered[item.topic] -= 1
            if item._done:
                continue
            yield item

    async def backlog(self, topic: str) -> int:
        """Received but not yet handed out, plus (given ``namesrv``) what the group has not popped."""
        local = max(self._buffered.get(topic, 0), 0)
        admin = self._broker._admin
        if admin is None or self._closing or topic not in self._held:
            return local
        try:
            written, received = await self._offsets(topic, fresh=True)
        except NovaError as exc:
            log.debug("RocketMQ backlog of %s unknown: %s", topic, exc)
            return local
        bases = self._receive_bases.get(topic)
        if bases:
            received = min(received, *bases)
        return max(self._buffered.get(topic, 0), 0) + max(written - received, 0)

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._room.set()
        for busy in self._busy.values():
            busy.set()
        # Let in-flight receives finish (at most poll_seconds) so their messages go back too.
        pumps = self._tasks[:-1]
        renew = self._tasks[-1:] if self._tasks else []
        for task in renew:
            task.cancel()
        if pumps:
            _, pending = await asyncio.wait(pumps, timeout=self._broker.poll_seconds + self._broker.request_timeout + 1)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._acks_stop = True  # send what was acked before giving the rest back
        self._ack_wake.set()
        if self._ack_task is not None:
            await asyncio.gather(self._ack_task, return_exceptions=True)
        for read in [*self._reads_running.values(), *self._reads_queued.values()]:
            read.cancel()
        unacked = [d for held in self._held.values() for d in held if not d._done]
        await asyncio.gather(*(self._give_back(d) for d in unacked))
        for held in self._held.values():
            held.clear()
        self._closed.set()
        await self._shutdown_consumers()
        self._queue.put_nowait(None)
        self._broker._subscriptions.discard(self)

    async def _shutdown_consumers(self) -> None:
        consumers = list(self._consumers.values()) + self._retired
        self._consumers.clear()
        self._retired.clear()
        await asyncio.gather(*(self._broker._run(_shutdown_quietly, c) for c in consumers))
