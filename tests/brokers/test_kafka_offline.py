"""KafkaBroker's error translation and settings, without a broker (runs in the sim suite)."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nova._errors as errors
from nova._naming import dead_letter_queue, delay_topic, ready_topic
from nova._task import Priority
from nova.brokers.kafka import KafkaAuth, KafkaBroker, KafkaSSL
from nova.brokers.kafka._errors import ErrorContext, for_code, is_refusal, translate

PASSWORD = "hunter2-secret"
SASL = ErrorContext("SASL_SSL", KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", PASSWORD), KafkaSSL("/ca.pem"), 2.0)
PLAIN = ErrorContext("PLAINTEXT", None, None, 40.0)


def untrusted() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


@pytest.mark.parametrize(
    ("exc", "ctx", "error", "words"),
    [
        (untrusted(), SASL, errors.AuthenticationError, ["not trusted", "self-signed", "'/ca.pem'"]),
        (ssl.SSLError(1, "wrong version number"), SASL, errors.AuthenticationError, ["TLS handshake", "KafkaSSL"]),
        (kafka_errors.SaslAuthenticationFailed("invalid credentials"), SASL, errors.AuthenticationError,
         ["'alice'", "SCRAM-SHA-256", "SASL_SSL", "username and password"]),
        (kafka_errors.SaslAuthenticationFailed("no"), PLAIN, errors.AuthenticationError, ["auth=KafkaAuth"]),
        (kafka_errors.TopicAuthorizationFailedError(), SASL, errors.AuthenticationError, ["not authorized", "ACL"]),
        (TimeoutError(), SASL, errors.ConnectionError, ["no answer within 2 s", "SASL_SSL listener"]),
        (kafka_errors.KafkaTimeoutError(), PLAIN, errors.ConnectionError, ["within 40 s"]),
        (ConnectionRefusedError(111, "refused"), PLAIN, errors.ConnectionError, ["refused", "speaks PLAINTEXT"]),
        (kafka_errors.KafkaConnectionError("gone"), PLAIN, errors.ConnectionError, ["gone", "PLAINTEXT"]),
        (for_code(38, "factor 3 > 1 broker"), PLAIN, errors.BrokerError, ["factor 3", "replication_factor="]),
        (kafka_errors.UnknownTopicOrPartitionError(), PLAIN, errors.BrokerError, ["UnknownTopicOrPartition"]),
    ],
)  # fmt: skip
def test_each_row_names_the_failure_and_what_to_fix(
    exc: BaseException, ctx: ErrorContext, error: type[errors.BrokerError], words: list[str]
) -> None:
    translated = translate(exc, "cannot do it", ctx)
    assert type(translated) is error
    text = str(translated)
    assert text.startswith("cannot do it: ")
    assert [w for w in words if w not in text] == []


def test_a_password_in_a_clients_message_is_scrubbed() -> None:
    exc = kafka_errors.SaslAuthenticationFailed(f"bad password {PASSWORD} for alice")
    text = str(translate(exc, "cannot connect", SASL))
    assert PASSWORD not in text and "***" in text


def test_refusals_stop_the_bootstrap_walk_other_failures_do_not() -> None:
    assert is_refusal(untrusted()) and is_refusal(ssl.SSLError())
    assert is_refusal(kafka_errors.SaslAuthenticationFailed())
    assert not is_refusal(ConnectionRefusedError()) and not is_refusal(TimeoutError())
    assert not is_refusal(kafka_errors.KafkaConnectionError())


def test_error_codes_become_aiokafkas_exceptions() -> None:
    assert type(for_code(29)) is kafka_errors.TopicAuthorizationFailedError
    assert type(translate(for_code(29), "cannot create topic 't'", PLAIN)) is errors.AuthenticationError


# --- settings -------------------------------------------------------------------------------------


def test_durations_are_timedeltas_and_the_seeds_milliseconds_still_work() -> None:
    broker = KafkaBroker("127.0.0.1:9092")
    assert (broker.session_timeout, broker.heartbeat_interval, broker.max_poll_interval) == (
        timedelta(seconds=30), timedelta(seconds=1), timedelta(minutes=5)
    )  # fmt: skip
    assert (broker.commit_interval, broker.request_timeout, broker.connect_timeout) == (
        timedelta(milliseconds=200), timedelta(seconds=40), timedelta(seconds=10)
    )  # fmt: skip
    assert (broker.session_timeout_ms, broker.request_timeout_ms, broker.connect_timeout_s) == (30000, 40000, 10.0)
    new = KafkaBroker(
        "127.0.0.1:9092", session_timeout=timedelta(seconds=6), heartbeat_interval=0.5, max_poll_interval=90,
        commit_interval=timedelta(milliseconds=50), request_timeout=timedelta(seconds=5), connect_timeout=2,
    )  # fmt: skip
    old = KafkaBroker(
        "127.0.0.1:9092", session_timeout_ms=6000, heartbeat_interval_ms=500, max_poll_interval_ms=90000,
        commit_interval_ms=50, request_timeout_ms=5000, connect_timeout_s=2.0,
    )  # fmt: skip
    for broker in (new, old):
        assert (broker.session_timeout, broker.heartbeat_interval, broker.max_poll_interval) == (
            timedelta(seconds=6), timedelta(milliseconds=500), timedelta(seconds=90)
        )  # fmt: skip
        assert (broker.commit_interval, broker.request_timeout, broker.connect_timeout) == (
            timedelta(milliseconds=50), timedelta(seconds=5), timedelta(seconds=2)
        )  # fmt: skip
        assert (broker.session_timeout_ms, broker.heartbeat_interval_ms, broker.max_poll_interval_ms) == (
            6000, 500, 90000
        )  # fmt: skip
        assert (broker.commit_interval_ms, broker.request_timeout_ms, broker.connect_timeout_s) == (50, 5000, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"session_timeout": 6, "session_timeout_ms": 6000}, "session_timeout= or session_timeout_ms="),
        ({"connect_timeout": 2, "connect_timeout_s": 2.0}, "connect_timeout= or connect_timeout_s="),
        ({"session_timeout": "30s"}, "session_timeout must be a timedelta"),
        ({"commit_interval": timedelta(0)}, "commit_interval must be > 0"),
        ({"request_timeout": timedelta(microseconds=10)}, "at least 1 ms"),
        ({"session_timeout_ms": 0}, "session_timeout_ms must be a positive int"),
        ({"commit_interval_ms": 0.5}, "commit_interval_ms must be a positive int"),
        ({"connect_timeout_s": -1}, "connect_timeout_s must be > 0"),
        ({"heartbeat_interval": 30}, "heartbeat_interval must be below session_timeout"),
        ({"partitions": 0}, "partitions must be a positive int"),
        ({"replication_factor": "3"}, "replication_factor must be a positive int"),
        ({"topic_prefix": "a b"}, "topic_prefix"),
        ({"group_id": "a b"}, "group_id"),
        ({"delay_slots": (0, 60)}, "delay_slots"),
    ],
)  # fmt: skip
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=re.escape(problem)):
        KafkaBroker("127.0.0.1:9092", **kwargs)


def test_ready_topics_default_to_twelve_partitions_dead_letters_and_tiers_one() -> None:
    from nova.brokers.kafka._broker import DEFAULT_PARTITIONS

    broker = KafkaBroker("127.0.0.1:9092")
    assert broker.partitions == DEFAULT_PARTITIONS == 12
    assert KafkaBroker("127.0.0.1:9092", partitions=2).partitions == 2
    tiers = [delay_topic("app", 0), delay_topic("app", 1)]
    broker.declare_delay_tiers({tiers[0]: 3600.0, tiers[1]: timedelta(minutes=30)})
    for level in Priority:
        assert broker.partitions_for(ready_topic("app", "default", level)) == 12
        assert broker.partitions_for(ready_topic("app", dead_letter_queue("default"), level)) == 1
        assert broker.partitions_for(ready_topic("app", "my_dlq_of_sorts", level)) == 12
    assert [broker.partitions_for(t) for t in tiers] == [1, 1]
    assert broker.partitions_for(delay_topic("app", 2)) == 12  # not declared: not known to be a tier


@pytest.mark.parametrize("servers", ["", " , ", [], "nohostport", "127.0.0.1:99999", ["127.0.0.1:9092", "x"]])
def test_bad_bootstrap_servers_are_configuration_errors(servers: str | list[str]) -> None:
    with pytest.raises(errors.ConfigurationError, match="bootstrap server"):
        KafkaBroker(servers)


def test_url_options_and_overrides() -> None:
    broker = KafkaBroker.from_url("kafka://a:9092,b:9093?session_timeout_ms=6000&auto_commit=yes&partitions=3")
    assert broker.bootstrap_servers == ["a:9092", "b:9093"]
    assert (broker.session_timeout, broker.auto_commit, broker.partitions) == (timedelta(seconds=6), True, 3)
    # Either name of a duration given as a keyword overrides the URL's.
    assert KafkaBroker.from_url("kafka://a:9092?session_timeout_ms=6000", session_timeout=9).session_timeout_ms == 9000
    with pytest.raises(errors.ConfigurationError, match="auto_commit must be true or false"):
        KafkaBroker.from_url("kafka://a:9092?auto_commit=maybe")
    with pytest.raises(errors.ConfigurationError, match="not a kafka:// URL") as info:
        KafkaBroker.from_url(f"amqp://u:{PASSWORD}@a:9092")
    assert PASSWORD not in str(info.value)


# --- the sticky assignor --------------------------------------------------------------------------


class _Cluster:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.partitions.get(topic)
        return None if count is None else set(range(count))


def _meta(topics: list[str], owned: Sequence[tuple[str, int]] = (), busy: Sequence[tuple[str, int, int]] = (),
          generation: int | None = None) -> Any:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata  # type: ignore[import-untyped]

    claims: dict[str, Any] = {"owned": [list(tp) for tp in owned], "busy": [list(b) for b in busy]}
    if generation is not None:
        claims["generation"] = generation
    return ConsumerProtocolMemberMetadata(0, topics, json.dumps(claims).encode())


def _assign(cluster: _Cluster, members: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    from nova.brokers.kafka._assignor import _StickyAssignor

    result = _StickyAssignor.assign(cluster, members)
    return {m: sorted((t, p) for t, ps in a.assignment for p in ps) for m, a in result.items()}


def test_sticky_assignor_keeps_owners_and_balances_idle_partitions() -> None:
    cluster = _Cluster({"t": 4})
    everything = [("t", p) for p in range(4)]
    got = _assign(cluster, {"a": _meta(["t"], everything, [("t", 0, 5), ("t", 1, 1)]), "b": _meta(["t"])})
    assert got == {"a": [("t", 0), ("t", 1)], "b": [("t", 2), ("t", 3)]}  # busy 0 and 1 stay; idle ones move
    all_busy = [("t", 0, 9), ("t", 1, 1), ("t", 2, 7), ("t", 3, 2)]
    got = _assign(cluster, {"a": _meta(["t"], everything, all_busy), "b": _meta(["t"])})
    # All busy: the newcomer still gets work, the partitions with the fewest in flight.
    assert got == {"a": [("t", 0), ("t", 2)], "b": [("t", 1), ("t", 3)]}
    got = _assign(cluster, {"a": _meta(["t"], everything[:2]), "b": _meta(["t"], everything[2:]), "c": _meta(["t"])})
    assert got["a"] == everything[:2] or got["b"] == everything[2:]  # only one partition moves to the newcomer
    assert sorted(len(v) for v in got.values()) == [1, 1, 2]
    got = _assign(cluster, {"a": _meta(["t"]), "b": _meta(["t"])})
    assert sorted(len(v) for v in got.values()) == [2, 2]


def test_a_joining_member_gets_a_partition_of_every_topic() -> None:
    """Per topic, not per member's total: the member that held everything keeps one partition
    of each priority level and the newcomer gets the other (before, it got both of 'high' and
    one of 'low', and 'normal' stayed with the first: 20 normal tasks split 20/0)."""
    levels = ["q_high", "q_normal", "q_low"]
    cluster = _Cluster(dict.fromkeys(levels, 2))
    everything = [(t, p) for t in levels for p in range(2)]
    got = _assign(cluster, {"a": _meta(levels, everything, generation=1), "b": _meta(levels)})
    for member in ("a", "b"):
        assert sorted(t for t, _ in got[member]) == sorted(levels), got


def test_single_partition_topics_spread_by_total_idle_ones_first() -> None:
    """Delay tiers: one partition each, all busy but two; a second forwarder takes half, the
    idle ones among them."""
    tiers = [f"p__delay{i:02d}" for i in range(6)]
    cluster = _Cluster(dict.fromkeys(tiers, 1))
    busy = [(t, 0, 3) for t in tiers[:4]]
    got = _assign(cluster, {"a": _meta(tiers, [(t, 0) for t in tiers], busy), "b": _meta(tiers)})
    assert len(got["a"]) == len(got["b"]) == 3
    assert {t for t, _ in got["b"]} >= set(tiers[4:])


def test_a_partition_two_members_claim_stays_with_the_later_generation() -> None:
    cluster = _Cluster({"t": 2})
    got = _assign(cluster, {"old": _meta(["t"], [("t", 0), ("t", 1)], generation=3),
                            "new": _meta(["t"], [("t", 0)], generation=5)})
    assert got == {"new": [("t", 0)], "old": [("t", 1)]}


_NAMES = st.sampled_from(["t0", "t1", "t2", "t3"])


@st.composite
def _groups(draw: st.DrawFn) -> tuple[_Cluster, dict[str, Any]]:
    partitions = draw(st.dictionaries(_NAMES, st.integers(1, 7), min_size=1))
    topics = sorted(partitions)
    members: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 5))):
        subscribed = draw(st.lists(st.sampled_from(topics), min_size=1, unique=True))
        everything = [(t, p) for t in topics for p in range(partitions[t])]
        owned = draw(st.lists(st.sampled_from(everything), unique=True))
        busy = [(t, p, draw(st.integers(1, 9))) for t, p in owned if draw(st.booleans())]
        members[f"m{i}"] = _meta(subscribed, owned, busy, generation=draw(st.integers(-1, 3)))
    return _Cluster(partitions), members


@settings(max_examples=300, deadline=None)
@given(_groups())
def test_every_partition_has_one_subscriber_each_topic_is_even_and_a_second_round_moves_nothing(
    group: tuple[_Cluster, dict[str, Any]],
) -> None:
    cluster, members = group
    got = _assign(cluster, members)
    for topic, count in cluster.partitions.items():
        subscribers = [m for m, meta in members.items() if topic in meta.subscription]
        holders = [m for m, tps in got.items() for t, _ in tps if t == topic]
        if not subscribers:
            assert holders == []
            continue
        assert sorted(p for tps in got.values() for t, p in tps if t == topic) == list(range(count))
        assert set(holders) <= set(subscribers)
        counts = [holders.count(m) for m in subscribers]
        assert max(counts) - min(counts) <= 1, (topic, counts)
    if all(set(meta.subscription) == set(cluster.partitions) for meta in members.values()):
        totals = [len(tps) for tps in got.values()]
        assert max(totals) - min(totals) <= 1, totals  # and the members' totals are even too
    # The group as it now stands asks again (same busy counts): nothing moves.
    again = {
        m: _meta(list(meta.subscription), got[m],
                 [b for b in json.loads(meta.user_data)["busy"] if (b[0], b[1]) in got[m]], generation=9)
        for m, meta in members.items()
    }
    assert _assign(cluster, again) == got
