"""KafkaBroker's error translation and settings, without a broker (runs in the sim suite)."""

from __future__ import annotations

import ssl

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
import pytest

import nova._errors as errors
from nova.brokers.kafka import KafkaAuth, KafkaSSL
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
