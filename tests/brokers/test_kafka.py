"""KafkaBroker against a real Kafka (``--broker kafka``).

    python tools/brokers.py up kafka
    eval "$(python tools/brokers.py env kafka)"
    pytest tests/brokers/test_kafka.py --broker kafka

Waits are conditions with deadlines, never fixed sleeps for the code under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiokafka.admin as aiokafka_admin  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nova._errors as errors
from nova._broker import Message
from nova.brokers.kafka import KafkaAuth, KafkaBroker, KafkaSSL
from nova.brokers.kafka._aiokafka_internals import (
    fetch_wait,
    group_generation,
    latest_offsets_request,
    send_to_node,
)
from nova.brokers.kafka._subscription import KafkaDelivery, KafkaSubscription

pytestmark = pytest.mark.broker("kafka")

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 30.0

Factory = Callable[..., KafkaBroker]
Names = Callable[[str], str]


async def take(sub: KafkaSubscription, n: int = 1, within: float = PATIENCE) -> list[KafkaDelivery]:
    """The next ``n`` deliveries, failing if they do not come in time."""
    it = sub.__aiter__()
    got: list[KafkaDelivery] = []
    for _ in range(n):
        delivery = await asyncio.wait_for(it.__anext__(), within)
        assert isinstance(delivery, KafkaDelivery)
        got.append(delivery)
    return got


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = PATIENCE) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(0.05)


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The offset group ``group`` committed on partition 0 of ``topic`` (None: none)."""
    admin = aiokafka_admin.AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    for tp, meta in offsets.items():
        if tp.topic == topic and tp.partition == 0:
            return int(meta.offset)
    return None


def open_sockets() -> int:
    """How many sockets this process holds open (Linux: /proc/self/fd)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue  # closed while we looked
    return count


def bodies(deliveries: list[KafkaDelivery]) -> list[bytes]:
    return [d.body for d in deliveries]


# --- how Kafka keeps the contract (the contract itself: conformance/contract/) ---------------------


async def test_records_come_out_of_aiokafka_as_parsed_not_wrapped(kafka_broker: Factory, kafka_name: Names) -> None:
    """The subscription takes aiokafka's parsed records as they are, without the
    ConsumerRecord aiokafka makes of each (see nova.brokers.kafka._aiokafka_internals.BareRecordResults).
    This relies on aiokafka internals: if an upgrade moves them, this fails (nova still works, slower)."""
    from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

    broker = kafka_broker()
    topic = kafka_name("t")
    await broker.publish([Message(topic, f"m{i}".encode(), {"nova-id": f"id{i}"}, key=f"k{i}") for i in range(3)])
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=10)
    got = await take(sub, 3)
    assert not [d for d in got if isinstance(d._record, ConsumerRecord)]
    assert [(d.topic, d.partition, d.offset, d.body, dict(d.headers), d.key) for d in got] == [
        (topic, 0, i, f"m{i}".encode(), {"nova-id": f"id{i}"}, f"k{i}") for i in range(3)
    ]
    for delivery in got:
        await delivery.ack()
    await sub.close()


async def test_out_of_order_acks_commit_only_below_the_lowest_unfinished(
    kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str]
) -> None:
    broker = kafka_broker(commit_interval_ms=50)
    topic, group = kafka_name("t"), kafka_name("g")
    await broker.publish([Message(topic, f"m{i}".encode()) for i in range(5)])
    sub = await broker.subscribe([topic], group=group, window=10)
    got = await take(sub, 5)
    for i in (1, 2, 4):  # 0 and 3 still running
        await got[i].ack()
    await sub._commit(limit_s=10)  # force the batched commit now rather than waiting for the timer
    assert await committed(kafka_env["NOVA_KAFKA_BOOTSTRAP"], group, topic) in (None, 0)
    await got[0].ack()
    await eventually(lambda: _is(committed(kafka_env["NOVA_KAFKA_BOOTSTRAP"], group, topic), 3))
    await sub.close()  # 3 was never acked: the next member gets 3 and 4 (4 is after the gap)
    again = await broker.subscribe([topic], group=group, window=10)
    redelivered = await take(again, 2)
    assert bodies(redelivered) == [b"m3", b"m4"]
    for d in redelivered:
        await d.ack()
    await again.close()
    assert await committed(kafka_env["NOVA_KAFKA_BOOTSTRAP"], group, topic) == 5


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return (await value) == expected


async def test_concurrent_small_and_large_publishes_all_land(kafka_broker: Factory, kafka_name: Names) -> None:
    # Large calls build their own record batch; many concurrent small calls must still
    # share the producer's batches instead of queueing one batch each behind the others
    # (which timed out after request_timeout_ms with thousands of callers).
    broker = kafka_broker()
    topic = kafka_name("t")
    singles = [broker.publish([Message(topic, f"s{i}".encode())]) for i in range(3000)]
    bulks = [broker.publish([Message(topic, f"b{j}-{i}".encode()) for i in range(500)]) for j in range(10)]
    await asyncio.gather(*singles, *bulks)
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=10_000)
    seen = {d.body for d in await take(sub, 8000)}
    assert len(seen) == 8000
    await sub.close()


async def test_prefetch_is_bounded_and_resumes_as_records_are_taken(
    kafka_broker: Factory, kafka_name: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nova.brokers.kafka._subscription as kafka_module

    monkeypatch.setattr(kafka_module, "_PREFETCH_RECORDS", 3)
    broker = kafka_broker()
    topic = kafka_name("t")
    big = b"x" * 100_000  # a fetch returns ~1 MB: about ten of these
    await broker.publish([Message(topic, f"m{i}".encode() + big) for i in range(40)])
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=1)
    state = next(iter(sub._parts.values()))

    async def paused() -> bool:
        return state.paused

    await eventually(paused)
    # One fetch may overshoot the bound, then fetching stops: far from all 40 records.
    assert 3 <= len(state.buffer) < 40
    # While paused, the other fetches come back quickly so a resume is not kept waiting.
    assert fetch_wait(sub._consumer) == kafka_module._SHORT_POLL_MS
    got = []
    for _ in range(40):
        (delivery,) = await take(sub)
        got.append(delivery.body)
        await delivery.ack()
    assert got == [f"m{i}".encode() + big for i in range(40)]  # resumed as the buffer drained
    assert not state.paused and fetch_wait(sub._consumer) == kafka_module._LONG_POLL_MS
    await sub.close()


async def test_prefetch_is_bounded_per_topic_over_all_its_partitions(
    kafka_broker: Factory, kafka_name: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's fetched, not yet delivered records are bounded per topic, however many
    partitions it has: with 12 partitions of 3 records each and a bound of 6, no partition
    alone reaches the bound, yet the topic's partitions all pause far short of all 36."""
    import nova.brokers.kafka._subscription as kafka_module

    monkeypatch.setattr(kafka_module, "_PREFETCH_RECORDS", 6)
    broker = kafka_broker(partitions=12)
    topic = kafka_name("t")
    big = b"x" * 200_000
    await broker.publish([Message(topic, b"m%02d" % i + big) for i in range(36)])
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=1)
    assert len(sub._parts) == 12
    window = sub._windows[topic]

    def buffered() -> int:
        return sum(len(s.buffer) + len(s.retry) for s in sub._parts.values())

    # Either the topic's partitions all pause, or (unbounded per topic) every record comes in.
    await eventually(lambda: _now(len(sub._consumer.paused()) == 12 or buffered() == 36))
    assert sub._consumer.paused() == set(sub._parts)
    # Records of a paused partition that arrive are dropped by aiokafka (fetched again on
    # resume), so the count stays where the last fetch response before the pause left it:
    # the bound plus at most one response's worth: fetch_max_bytes, 2 MiB, ten of these.
    assert 6 <= buffered() == window.buffered <= 6 + 11
    got = []
    for _ in range(36):
        (delivery,) = await take(sub)
        got.append(delivery.body)
        await delivery.ack()
    assert sorted(got) == [b"m%02d" % i + big for i in range(36)]  # resumed as they were taken
    assert window.buffered == buffered() == 0 and not sub._consumer.paused()
    await sub.close()


async def test_the_window_counts_a_topics_deliveries_over_all_its_partitions(
    kafka_broker: Factory, kafka_name: Names
) -> None:
    """As on every broker: ``window`` unacked deliveries per topic, however many partitions it
    has (a worker holds ``prefetch`` tasks of a level, not that many per partition), and the
    other topics go on meanwhile."""
    broker = kafka_broker(partitions=3)
    topic, other = kafka_name("t"), kafka_name("o")
    await broker.publish([Message(topic, b"m%d" % i) for i in range(9)] + [Message(other, b"o")])
    sub = await broker.subscribe([topic, other], group=kafka_name("g"), window=2)
    await eventually(lambda: _now(sum(len(s.buffer) for s in sub._parts.values()) == 10))
    held = await take(sub, 3)
    assert sorted(d.topic for d in held) == sorted([topic, topic, other])
    assert sub.take_nowait() is None  # the topic's window is full though its partitions hold more
    await next(d for d in held if d.topic == topic).ack()
    (next_one,) = await take(sub)
    assert next_one.topic == topic
    assert sub.take_nowait() is None
    await sub.close()


async def test_unacked_delivery_held_past_max_poll_interval_keeps_membership(
    kafka_broker: Factory, kafka_name: Names
) -> None:
    # A delay-tier delivery may stay unacked for minutes: the poll loop must keep calling
    # getmany so the member is not thrown out after max_poll_interval_ms.
    broker = kafka_broker(max_poll_interval_ms=1500, session_timeout_ms=6000)
    topic = kafka_name("t")
    await broker.publish([Message(topic, b"held"), Message(topic, b"next")])
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=1)
    (held,) = await take(sub)
    generation = group_generation(sub._consumer)
    await asyncio.sleep(3.0)  # the scenario itself: a handler holding a delivery for 2x the limit
    assert generation >= 0 and group_generation(sub._consumer) == generation  # no rebalance: still a member
    await held.ack()
    (nxt,) = await take(sub)
    assert nxt.body == b"next"  # and "held" is not redelivered
    await nxt.ack()
    await sub.close()


async def test_created_topics_have_leaders_before_they_are_used(
    kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    broker = kafka_broker(partitions=2)
    topics = [kafka_name(f"fresh{i}") for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        await broker.ensure_topics(topics)
        admin = aiokafka_admin.AIOKafkaAdminClient(bootstrap_servers=kafka_env["NOVA_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
            # Each partition's leader answers for it at once (KRaft shows the leader in the
            # metadata ~10-40 ms before the broker takes the partition; asked in that gap, it
            # says NOT_LEADER_OR_FOLLOWER and aiokafka logs a warning before retrying).
            def latest(topic: str, part: dict[str, Any]) -> Awaitable[Any]:
                return send_to_node(admin, part["leader"], latest_offsets_request([(topic, part["partition"])]))

            answers = [await latest(t["topic"], part) for t in described for part in t["partitions"]]
        finally:
            await admin.close()
        sub = await broker.subscribe(topics, group=kafka_name("g"), window=4)
        await sub.close()
    assert sorted(t["topic"] for t in described) == sorted(topics)
    assert all(t["error_code"] == 0 and len(t["partitions"]) == 2 for t in described)
    assert all(part["leader"] >= 0 for t in described for part in t["partitions"])
    assert [answer[1] for a in answers for _, part_answers in a.topics for answer in part_answers] == [0] * 12
    # aiokafka logs an error for a topic it is told is unknown ("not found in cluster metadata"),
    # or a partition without a leader. (A fresh broker's first group join logs its own warning.)
    about_ours = [r.getMessage() for r in caplog.records if any(t in r.getMessage() for t in topics)]
    assert about_ours == []


async def test_two_members_share_partitions(kafka_broker: Factory, kafka_name: Names) -> None:
    broker = kafka_broker(partitions=2)
    topic, group = kafka_name("t"), kafka_name("g")
    one = await broker.subscribe([topic], group=group, window=100)
    two = await kafka_broker(partitions=2).subscribe([topic], group=group, window=100)
    await eventually(lambda: _is(_sizes(one, two), (1, 1)))
    await broker.publish([Message(topic, f"m{i}".encode(), key=f"k{i}") for i in range(40)])
    seen: list[bytes] = []

    async def drain(sub: KafkaSubscription) -> None:
        async for d in sub:
            seen.append(d.body)
            await d.ack()

    tasks = [asyncio.create_task(drain(one)), asyncio.create_task(drain(two))]
    await eventually(lambda: _now(len(seen) >= 40))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(40))
    await one.close()
    await two.close()


async def _sizes(*subs: KafkaSubscription) -> tuple[int, ...]:
    return tuple(sum(s.assigned for s in sub._parts.values()) for sub in subs)


async def _now(value: bool) -> bool:
    return value


async def test_publish_refused_raises_enqueue_error_with_cause(kafka_broker: Factory, kafka_name: Names) -> None:
    broker = kafka_broker(max_message_bytes=5_000_000)  # over what Kafka takes: the broker refuses
    with pytest.raises(errors.EnqueueError) as info:
        await broker.publish([Message(kafka_name("t"), b"x" * 3_000_000)])
    assert info.value.__cause__ is not None
    assert "MessageSizeTooLarge" in repr(info.value.__cause__)


async def test_publish_each_refuses_only_the_message_over_max_message_bytes_and_sends_the_rest(
    kafka_broker: Factory, kafka_name: Names
) -> None:
    broker = kafka_broker()
    topic = kafka_name("t")
    # Enough for record batches of nova's making, with the one too large in the middle.
    messages = [Message(topic, b"a%d" % i) for i in range(20)] + [Message(topic, b"x" * 1_000_001)]
    messages += [Message(topic, b"b%d" % i) for i in range(20)]
    outcomes = await broker.publish_each(messages)
    assert [i for i, o in enumerate(outcomes) if o is not None] == [20]
    assert isinstance(outcomes[20], errors.EnqueueError)
    assert "max_message_bytes" in str(outcomes[20])
    with pytest.raises(errors.EnqueueError, match="1 of 3 message"):  # publish: the first refusal, counted
        await broker.publish([Message(topic, b"c0"), Message(topic, b"x" * 1_000_001), Message(topic, b"c1")])
    sub = await broker.subscribe([topic], group=kafka_name("g"), window=100)
    got = [d.body for d in await take(sub, 42)]
    assert got == [m.body for i, m in enumerate(messages) if i != 20] + [b"c0", b"c1"]  # in order, nothing lost


# --- auth and TLS --------------------------------------------------------------------------------


async def _round_trip(broker: KafkaBroker, names: Names) -> None:
    topic = names("t")
    await broker.publish([Message(topic, b"secret payload", {"h": "v"})])
    sub = await broker.subscribe([topic], group=names("g"), window=5)
    (d,) = await take(sub)
    assert (d.body, dict(d.headers)) == (b"secret payload", {"h": "v"})
    await d.ack()
    await sub.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_plaintext_round_trip(
    kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str], mechanism: str
) -> None:
    auth = KafkaAuth("SASL_PLAINTEXT", mechanism, kafka_env["NOVA_KAFKA_USER"], kafka_env["NOVA_KAFKA_PASSWORD"])  # type: ignore[arg-type]
    await _round_trip(kafka_broker(kafka_env["NOVA_KAFKA_SASL_BOOTSTRAP"], auth=auth), kafka_name)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_ssl_round_trip(
    kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str], mechanism: str
) -> None:
    auth = KafkaAuth("SASL_SSL", mechanism, kafka_env["NOVA_KAFKA_USER"], kafka_env["NOVA_KAFKA_PASSWORD"])  # type: ignore[arg-type]
    ssl = KafkaSSL(ca_file=kafka_env["NOVA_KAFKA_CA_FILE"])
    await _round_trip(kafka_broker(kafka_env["NOVA_KAFKA_SASL_SSL_BOOTSTRAP"], auth=auth, ssl=ssl), kafka_name)


async def test_ssl_round_trip(kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str]) -> None:
    ssl = KafkaSSL(ca_file=kafka_env["NOVA_KAFKA_CA_FILE"])
    await _round_trip(kafka_broker(kafka_env["NOVA_KAFKA_SSL_BOOTSTRAP"], ssl=ssl), kafka_name)


async def test_mutual_tls_round_trip(kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str]) -> None:
    ssl = KafkaSSL(
        ca_file=kafka_env["NOVA_KAFKA_CA_FILE"],
        cert_file=kafka_env["NOVA_KAFKA_CLIENT_CERT_FILE"],
        key_file=kafka_env["NOVA_KAFKA_CLIENT_KEY_FILE"],
    )
    await _round_trip(kafka_broker(kafka_env["NOVA_KAFKA_SSL_BOOTSTRAP"], ssl=ssl), kafka_name)


async def test_from_url_with_credentials_round_trip(kafka_name: Names, kafka_env: dict[str, str]) -> None:
    user, password = kafka_env["NOVA_KAFKA_USER"], kafka_env["NOVA_KAFKA_PASSWORD"]
    url = (
        f"kafka://{user}:{password}@{kafka_env['NOVA_KAFKA_SASL_SSL_BOOTSTRAP']}"
        f"?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512&ca_file={kafka_env['NOVA_KAFKA_CA_FILE']}"
        "&group_id=g1&topic_prefix=p1&partitions=2"
    )
    broker = KafkaBroker.from_url(url)
    try:
        assert (broker.group_id, broker.topic_prefix, broker.partitions) == ("g1", "p1", 2)
        assert password not in repr(broker)
        await _round_trip(broker, kafka_name)
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
async def test_wrong_password_is_refused_quickly_and_clearly(
    kafka_broker: Factory, kafka_env: dict[str, str], listener: str, mechanism: str
) -> None:
    wrong = "definitely-not-the-password-93c1"
    auth = KafkaAuth(listener, mechanism, kafka_env["NOVA_KAFKA_USER"], wrong)  # type: ignore[arg-type]
    if listener == "SASL_SSL":
        broker = kafka_broker(
            kafka_env["NOVA_KAFKA_SASL_SSL_BOOTSTRAP"], auth=auth, ssl=KafkaSSL(kafka_env["NOVA_KAFKA_CA_FILE"])
        )
    else:
        broker = kafka_broker(kafka_env["NOVA_KAFKA_SASL_BOOTSTRAP"], auth=auth)
    sockets, started = open_sockets(), time.monotonic()
    with pytest.raises(errors.AuthenticationError) as info:
        await broker.connect()
    assert time.monotonic() - started < 10
    assert open_sockets() == sockets  # the refused connection is closed, not left closing
    text = str(info.value)
    assert kafka_env["NOVA_KAFKA_USER"] in text and mechanism in text and "password" in text
    assert wrong not in text and wrong not in repr(info.value.__cause__) and wrong not in repr(broker)
    assert info.value.__cause__ is not None


async def test_untrusted_certificate_is_refused_quickly_and_clearly(
    kafka_broker: Factory, kafka_env: dict[str, str]
) -> None:
    other_ca = str(Path(kafka_env["NOVA_KAFKA_CA_FILE"]).with_name("other-ca.pem"))
    broker = kafka_broker(kafka_env["NOVA_KAFKA_SSL_BOOTSTRAP"], ssl=KafkaSSL(ca_file=other_ca))
    sockets, started = open_sockets(), time.monotonic()
    with pytest.raises(errors.AuthenticationError, match="not trusted") as info:
        await broker.connect()
    assert time.monotonic() - started < 10
    assert open_sockets() == sockets
    assert "other-ca.pem" in str(info.value)
    assert info.value.__cause__ is not None


async def test_plaintext_client_on_tls_listener_fails_within_the_connect_timeout(
    kafka_broker: Factory, kafka_env: dict[str, str]
) -> None:
    broker = kafka_broker(kafka_env["NOVA_KAFKA_SSL_BOOTSTRAP"], connect_timeout_s=2.0)
    sockets, started = open_sockets(), time.monotonic()
    with pytest.raises(errors.ConnectionError, match="PLAINTEXT"):
        await broker.connect()
    assert time.monotonic() - started < 10
    assert open_sockets() == sockets


async def test_unreachable_broker_is_a_connection_error(kafka_broker: Factory) -> None:
    with pytest.raises(errors.ConnectionError, match=r"127\.0\.0\.1:1"):
        await kafka_broker("127.0.0.1:1").connect()


def test_secrets_stay_out_of_reprs() -> None:
    auth = KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", "hunter2-secret")
    ssl = KafkaSSL(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem", password="keypass-secret")
    broker = KafkaBroker("127.0.0.1:9096", auth=auth, ssl=ssl)
    for text in (repr(auth), repr(ssl), repr(broker), str(broker)):
        assert "hunter2-secret" not in text and "keypass-secret" not in text
    assert "alice" in repr(broker)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:9092", "not a kafka://"),
        ("kafka://127.0.0.1:9092?colour=red", "unknown kafka URL option"),
        ("kafka://127.0.0.1:9092?partitions=many", "integer"),
        ("kafka://127.0.0.1:9092?group_id=a%20b", "group_id"),
        ("kafka://u:pw-secret@127.0.0.1:9092?security_protocol=SSL", "credentials"),
        ("kafka://nohostport", "host:port"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, problem: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=problem) as info:
        KafkaBroker.from_url(url)
    assert "pw-secret" not in str(info.value)


# --- restart ------------------------------------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing(
    kafka_broker: Factory, kafka_name: Names, restart_broker: Callable[[], Awaitable[None]]
) -> None:
    broker = kafka_broker()
    topic, group = kafka_name("t"), kafka_name("g")
    sub = await broker.subscribe([topic], group=group, window=50)
    confirmed: set[bytes] = set()
    received: set[bytes] = set()
    restarted = asyncio.Event()

    async def produce() -> None:
        i = 0
        while not restarted.is_set() or i < 600:
            batch = [f"m{j}".encode() for j in range(i, i + 20)]
            try:
                await broker.publish([Message(topic, b) for b in batch])
            except errors.EnqueueError:
                continue  # refused while Kafka was down: the caller retries the same batch
            confirmed.update(batch)
            i += 20

    async def consume() -> None:
        async for d in sub:
            received.add(d.body)
            await d.ack()

    tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
    try:
        await eventually(lambda: _now(len(received) >= 100))
        await restart_broker()
        restarted.set()
        await asyncio.wait_for(tasks[0], 120)
        await eventually(lambda: _now(confirmed <= received), within=120)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(confirmed) >= 600
    assert confirmed <= received
    await sub.close()


# --- optional extra -------------------------------------------------------------------------------


def test_missing_aiokafka_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['aiokafka'] = None\n"
        "try:\n    import nova.brokers.kafka\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pip install 'nova-taskqueue[kafka]'" in out.stdout


async def test_joining_member_gets_the_idle_partition_not_the_busy_one(
    kafka_broker: Factory, kafka_name: Names
) -> None:
    busy, idle, group = kafka_name("busy"), kafka_name("idle"), kafka_name("g")
    broker = kafka_broker()
    await broker.publish([Message(busy, b"held"), Message(idle, b"i")])
    first = await broker.subscribe([busy, idle], group=group, window=1)
    (held,) = await take(first)  # the next take may come from either topic; keep only this one
    assert held.topic == busy or held.topic == idle
    held_topic = held.topic
    second = await kafka_broker().subscribe([busy, idle], group=group, window=1)
    await eventually(lambda: _is(_sizes(first, second), (1, 1)))
    # The partition with a delivery in flight stayed with its owner; the other one moved.
    assert [tp.topic for tp in first._parts] == [held_topic]
    assert [tp.topic for tp in second._parts] == [idle if held_topic == busy else busy]
    await held.ack()
    (other,) = await take(second)
    assert other.topic != held_topic
    await other.ack()
    await first.close()
    await second.close()


async def test_auto_commit_is_at_most_once(kafka_broker: Factory, kafka_name: Names) -> None:
    broker = kafka_broker(auto_commit=True, commit_interval_ms=50)
    topic, group = kafka_name("t"), kafka_name("g")
    await broker.publish([Message(topic, b"a"), Message(topic, b"b"), Message(topic, b"c")])
    sub = await broker.subscribe([topic], group=group, window=5)
    a, _b = await take(sub, 2)
    await a.nack()  # at-most-once: not redelivered
    (c,) = await take(sub)
    assert c.body == b"c"
    await sub.close()  # b was never acked, yet it counts as done
    again = await broker.subscribe([topic], group=group, window=1)
    await broker.publish([Message(topic, b"d"), Message(topic, b"e"), Message(topic, b"f")])
    for body in (b"d", b"e", b"f"):  # each ack frees the window of one (a done offset is still held)
        (got,) = await take(again)
        assert got.body == body
        await got.ack()
    await again.close()


async def test_public_names_and_task_queue_url(kafka_env: dict[str, str]) -> None:
    import nova

    assert nova.KafkaBroker is KafkaBroker and nova.KafkaAuth is KafkaAuth and nova.KafkaSSL is KafkaSSL
    queue = nova.TaskQueue.from_url(f"kafka://{kafka_env['NOVA_KAFKA_BOOTSTRAP']}?group_id=gq&topic_prefix=pq")
    assert isinstance(queue.broker, KafkaBroker)
    assert (queue.broker.group_id, queue.broker.topic_prefix) == ("gq", "pq")


async def test_busy_partition_moves_when_needed_and_old_delivery_knows(
    kafka_broker: Factory, kafka_name: Names
) -> None:
    broker = kafka_broker(partitions=2)
    topic, group = kafka_name("t"), kafka_name("g")
    await broker.publish([Message(topic, f"m{i}".encode(), key=f"key-{i}") for i in range(20)])
    first = await broker.subscribe([topic], group=group, window=20)
    held = await take(first, 20)  # everything: both partitions busy
    assert {d.partition for d in held} == {0, 1}
    assert all(d.owned for d in held)
    second = await kafka_broker(partitions=2).subscribe([topic], group=group, window=20)
    await eventually(lambda: _is(_sizes(first, second), (1, 1)))  # a newcomer gets work even if all is busy
    moved = [d for d in held if not d.owned]
    assert len(moved) == 10 and len({d.partition for d in moved}) == 1
    assert first._windows[topic].held == 10  # the moved ones no longer count in the old owner's window
    again = await take(second, 10)
    assert sorted((d.partition, d.offset, d.body) for d in again) == sorted(
        (d.partition, d.offset, d.body) for d in moved)
    await moved[0].nack()  # what a holder does with a moved delivery: harmless no-op here
    for d in (*held, *again):
        await d.ack()
    await first.close()
    await second.close()


def test_header_values_decode_leniently() -> None:
    from nova.brokers.kafka._headers import _decode_headers

    assert _decode_headers([("a", b"x"), ("b", b"caf\xc3\xa9")]) == {"a": "x", "b": "café"}
    assert _decode_headers([("a", b"x"), ("b", b"\xff")]) == {"a": "x", "b": "\ufffd"}
    assert _decode_headers([("a", b"x"), ("c", None)]) == {"a": "x", "c": ""}
    assert _decode_headers(None) == {} and _decode_headers(()) == {}


def test_headers_travel_packed_in_one_kafka_header() -> None:
    from nova.brokers.kafka._headers import _decode_headers, _headers

    headers = {"nova-id": "t1", "nova-type": "email", "nova-queue": "défaut", "other": "x"}
    (packed,) = _headers(Message("t", b"", headers))
    # The wire format: nova's names shortened, others as they are.
    assert packed[0] == "nova" and json.loads(packed[1]) == {"i": "t1", "t": "email", "q": "défaut", "other": "x"}
    assert _decode_headers([packed]) == headers
    assert _decode_headers([("nova", json.dumps(headers).encode())]) == headers  # full names (older nova)
    assert _headers(Message("t", b"")) == []
    # Another producer's headers next to the packed one are kept; nova's win a clash.
    assert _decode_headers([packed, ("trace", b"abc"), ("nova-id", b"other")]) == {**headers, "trace": "abc"}
    # A "nova" header that is not a JSON object of strings is an ordinary header.
    for odd in (b"not json", b'["a"]', b'{"nova-id": 1}', b'{"a": "x", "b": null}', None):
        assert _decode_headers([("nova", odd)]) == {"nova": (odd or b"").decode()}


def test_packed_headers_of_one_batch_are_parsed_once_and_decode_the_same() -> None:
    from nova.brokers.kafka._headers import _decode_headers, _headers, _PackedHeaders

    def packed(headers: dict[str, str]) -> list[tuple[str, bytes]]:
        return _headers(Message("t", b"", headers))

    shared = {"nova-type": "email", "nova-queue": "q", "nova-priority": "2"}
    decoder = _PackedHeaders()
    first = decoder.decode(packed({"nova-id": "a1", **shared}))
    assert decoder.decode(packed({"nova-id": "b2", **shared})) == {"nova-id": "b2", **shared}
    assert list(decoder.decode(packed({"nova-id": "c3", **shared}))) == list(first)  # the id stays first
    # Whatever the previous record was, each decodes as it would alone.
    odd = [
        {"nova-id": "d4", **shared, "nova-attempt": "2"},  # another rest
        {"nova-id": "e-5", **shared},  # not a plain id
        {"nova-id": "caf\u00e9", **shared},
        {"nova-id": 'x"y', **shared},
        {"nova-id": "f6", **shared},
    ]
    for headers in odd:
        assert decoder.decode(packed(headers)) == headers
    # A second "nova-id" after the first (not nova's writing; the last one wins) is never cached.
    for twice, again in [
        (b'{"i":"g7","t":"email","i":"g7"}', b'{"i":"h8","t":"email","i":"g7"}'),
        (b'{"i":"g7","t":"email","nova-id":"g7"}', b'{"i":"h8","t":"email","nova-id":"g7"}'),
        (b'{"nova-id":"g7","nova-type":"email","nova-id":"g7"}',
         b'{"nova-id":"h8","nova-type":"email","nova-id":"g7"}'),
    ]:
        assert decoder.decode([("nova", twice)]) == _decode_headers([("nova", twice)])
        assert decoder.decode([("nova", again)]) == _decode_headers([("nova", again)]) == {
            "nova-id": "g7", "nova-type": "email"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a1", "b2", "c", "9\u00e9", "d\"", ""]), st.integers(0, 4), st.booleans()),
                max_size=12))
def test_packed_headers_decode_as_a_full_parse_would(records: list[tuple[str, int, bool]]) -> None:
    from nova.brokers.kafka._headers import _decode_headers, _PackedHeaders

    # nova's short names, and the full ones (records of an older nova)
    rests = [b',"t":"t"}', b',"t":"u","a":"2"}', b"}", b',"nova-type":"t"}', b',"x":"i","nova-id":"z"}']
    decoder, runs = _PackedHeaders(), _PackedHeaders()
    last: tuple[int, dict[str, str]] | None = None
    for task_id, rest, full in records:
        raw = [("nova", (b'{"nova-id":"' if full else b'{"i":"') + task_id.encode() + b'"' + rests[rest])]
        assert decoder.decode(raw) == _decode_headers(raw)
        run = runs.run(raw)  # what the worker reads instead: the run's parse (one dict) and the id
        if run is not None:
            shared, run_id = run
            assert {**shared, "nova-id": run_id} == _decode_headers(raw)
            if last is not None and last[0] == rest:
                assert shared is last[1]  # parsed once per run
            last = (rest, shared)


_names = st.sampled_from(["nova-id", "nova-type", "nova-error", "i", "h", "=h", "==i", "=", "", "trace", "nova-x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names | st.text(max_size=5), st.text(max_size=5), max_size=6))
def test_any_header_names_pack_and_unpack(headers: dict[str, str]) -> None:
    """nova's names are packed as one letter; any other name comes back as it was."""
    from nova.brokers.kafka._headers import _decode_headers, _headers

    assert _decode_headers(_headers(Message("t", b"", headers))) == headers


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a1", "b2", "c", "9\u00e9", 'd"', "", None]), st.integers(0, 3),
                          st.booleans()), max_size=12))
def test_packed_runs_pack_as_each_message_alone(messages: list[tuple[str | None, int, bool]]) -> None:
    """The producer packs a run's headers once: every message still packs to its own headers."""
    from nova.brokers.kafka._headers import _decode_headers, _headers, _Packer

    others = [{"nova-type": "t"}, {"nova-type": "u", "nova-attempt": "2"}, {}, {"nova-type": "t", "extra": "i"}]
    packer = _Packer()
    for task_id, rest, id_first in messages:
        headers = dict(others[rest])
        if task_id is not None:
            headers = {"nova-id": task_id, **headers} if id_first else {**headers, "nova-id": task_id}
        message = Message("t", b"", headers)
        packed = packer.headers(message)
        assert _decode_headers(packed) == headers
        assert [json.loads(value) for _, value in packed] == [json.loads(value) for _, value in _headers(message)]


async def test_a_record_with_plain_kafka_headers_is_a_task(
    kafka_broker: Factory, kafka_name: Names, kafka_env: dict[str, str]
) -> None:
    """Records another producer wrote with one Kafka header per nova header decode as tasks."""
    import aiokafka

    import nova

    prefix = kafka_name("p")
    queue = nova.TaskQueue(kafka_broker(), topic_prefix=prefix)
    await queue.enqueue(nova.Task("first", b"1"))  # creates the topics
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_env["NOVA_KAFKA_BOOTSTRAP"])
    await producer.start()
    try:
        headers = {"nova-id": "plain-1", "nova-type": "second", "nova-priority": "2", "nova-attempt": "1",
                   "nova-content-type": "application/json"}
        await producer.send_and_wait(f"{prefix}_default_normal", b'{"type":"second","payload":"2"}',
                                     headers=[(k, v.encode()) for k, v in headers.items()])
    finally:
        await producer.stop()
    seen: list[tuple[str | None, str, bytes]] = []

    async def handle(task: nova.Task) -> None:
        seen.append((task.id, task.type, task.payload))

    async def both() -> bool:
        return len(seen) == 2

    await queue.start(handle)
    await eventually(both)
    await queue.stop()
    assert seen[1] == ("plain-1", "second", b"2") and seen[0][1:] == ("first", b"1")
