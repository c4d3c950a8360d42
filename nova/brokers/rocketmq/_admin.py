"""RocketMQ's remoting admin protocol: topics and consumer groups, like ``mqadmin``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import struct
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta

from nova._errors import (
    BrokerError,
    ConfigurationError,
    ConnectionError,  # noqa: A004 - nova.ConnectionError on purpose
    NovaError,
)
from nova.brokers._common import Backoff, duration, split_host_port
from nova.brokers.rocketmq._errors import refusal

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

    ``timeout`` (a timedelta, or seconds) bounds each round trip and the wait for a
    new topic to be routable.
    """

    def __init__(
        self,
        namesrv: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        timeout: timedelta | float = timedelta(seconds=10),
        cluster: str | None = None,
    ) -> None:
        addrs = namesrv.replace(";", ",").split(",") if isinstance(namesrv, str) else list(namesrv)
        self.namesrv = [a.strip() for a in addrs if a.strip()]
        if not self.namesrv:
            raise ConfigurationError("RocketMQAdmin needs at least one name server address host:port")
        for addr in self.namesrv:
            split_host_port(addr, "RocketMQ name server")
        self._auth = auth
        self.timeout = duration("timeout", timeout)
        self._within = self.timeout.total_seconds()
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
                    async with asyncio.timeout(self._within):
                        conn = self._conns.get(addr)
                        if conn is None:
                            host, port = split_host_port(addr, "RocketMQ address")
                            conn = self._conns[addr] = await asyncio.open_connection(host, port)
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
        return refusal(what, code, remark, [self._auth[1]] if self._auth else [])

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
        backoff = Backoff(within=self._within, first=0.05, longest=0.05)
        for topic in topics:
            while not await self.topic_exists(topic):
                if not await backoff.wait():
                    raise BrokerError(f"topic {topic} was created but the name server does not route it")

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
