"""KafkaBroker's error translation and settings, without a broker (runs in the sim suite)."""

from __future__ import annotations

import re
import ssl
from datetime import timedelta
from typing import Any

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
import pytest

import nova._errors as errors
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
