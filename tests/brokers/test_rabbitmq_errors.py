"""The RabbitMQ adapter's error table (``nova/brokers/rabbitmq/_errors.py``), without a broker.

The real-broker tests (tests/brokers/test_rabbitmq.py) show each translation at its
boundary; these pin the table itself: which client exception becomes which nova
error, which ones the robust connection recovers from, and that no form of the
password survives into a message.
"""

from __future__ import annotations

import ssl
from datetime import timedelta

import aiormq.exceptions as amqp
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

import nova._errors as errors
from nova.brokers.rabbitmq import RabbitMQBroker
from nova.brokers.rabbitmq._errors import failure

PASSWORD = "pa:ss/w@rd#1"


@pytest.fixture
def broker() -> RabbitMQBroker:
    return RabbitMQBroker("amqp://127.0.0.1:5672/", auth=("app", PASSWORD), exchange="shop")


def _wrapped(cause: BaseException) -> amqp.AMQPConnectionError:
    """As aiormq raises socket and TLS errors: an AMQPConnectionError from the cause."""
    try:
        raise amqp.AMQPConnectionError(*cause.args) from cause
    except amqp.AMQPConnectionError as exc:
        return exc


def _returned(topic: str) -> amqp.PublishError:
    returned = Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="shop", routing_key=topic)
    return amqp.PublishError(DeliveredMessage(returned, ContentHeader(), b"", None), returned)  # type: ignore[arg-type]


def test_connect_failures(broker: RabbitMQBroker) -> None:
    untrusted = broker._error(
        _wrapped(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")),
        "connecting", connecting=True,
    )
    assert type(untrusted) is errors.AuthenticationError
    assert "is not trusted" in str(untrusted) and "cafile" in str(untrusted)
    handshake = broker._error(_wrapped(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")), "connecting", connecting=True)
    assert type(handshake) is errors.AuthenticationError
    assert "TLS handshake with amqp://app:***@127.0.0.1:5672/ failed" in str(handshake)
    refused = broker._error(amqp.ProbableAuthenticationError("ACCESS_REFUSED"), "connecting", connecting=True)
    assert type(refused) is errors.AuthenticationError
    assert "refused the credentials of user 'app'" in str(refused)
    slow = broker._error(TimeoutError(), "connecting", connecting=True)
    assert type(slow) is errors.ConnectionError
    assert str(slow).endswith("timed out after 10.0 s")
    refused_port = broker._error(_wrapped(ConnectionRefusedError(111, "Connect call failed")), "connecting",
                                 connecting=True)
    assert type(refused_port) is errors.ConnectionError
    assert "cannot connect to RabbitMQ at amqp://app:***@127.0.0.1:5672/" in str(refused_port)


def test_failures_on_an_open_connection(broker: RabbitMQBroker) -> None:
    unroutable = broker._error(_returned("t1"), "publishing to 't1'", topic="t1")
    assert type(unroutable) is errors.EnqueueError
    assert "topic 't1' as unroutable (exchange 'shop'" in str(unroutable)
    nacked = broker._error(amqp.DeliveryError(None, Basic.Nack(delivery_tag=1)), "publishing to 't1'", topic="t1")
    assert type(nacked) is errors.EnqueueError
    assert "refused (nacked) a message for topic 't1'" in str(nacked)
    mismatch = broker._error(amqp.ChannelPreconditionFailed("inequivalent arg 'x-message-ttl'"),
                             "declaring queues ['t1']", queue="t1")
    assert type(mismatch) is errors.ConfigurationError
    assert "declaring queues ['t1'] failed: queue 't1' already exists in RabbitMQ with other arguments" in str(mismatch)
    assert str(mismatch).endswith("wait until it and t1_due are empty, then delete both "
                                  "(rabbitmqctl delete_queue t1)")
    assert "an earlier nova declared as a TTL queue" in str(mismatch)
    other_arg = broker._error(amqp.ChannelPreconditionFailed("inequivalent arg 'x-max-length'"),
                              "declaring queues ['t1']", queue="t1")
    assert str(other_arg).endswith("delete it, or keep the delay tiers it was declared with")
    lost = broker._error(amqp.ChannelInvalidStateError("closed"), "subscribing to ['t1']")
    assert type(lost) is errors.ConnectionError
    assert str(lost) == "RabbitMQ connection lost while subscribing to ['t1']: ChannelInvalidStateError: closed"
    forbidden = broker._error(amqp.ChannelAccessRefused("ACCESS_REFUSED - write access to exchange 'shop' "
                                                        "in vhost '/' refused for user 'app'"),
                              "publishing to 't1'", topic="t1")
    assert type(forbidden) is errors.AuthenticationError
    assert "RabbitMQ refused publishing to 't1' to user 'app' (" in str(forbidden)
    assert "rabbitmqctl set_permissions -p <vhost> app '.*' '.*' '.*'" in str(forbidden)
    other = broker._error(KeyError("x"), "subscribing to ['t1']")
    assert type(other) is errors.BrokerError
    assert "RabbitMQ failed while subscribing to ['t1']: KeyError" in str(other)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(104, "reset"),
        TimeoutError(),
        amqp.AMQPConnectionError("gone"),
        amqp.ConnectionClosed(320, "CONNECTION_FORCED"),
        amqp.ChannelInvalidStateError("closed"),
        amqp.ChannelClosed(404, "NOT_FOUND"),
        amqp.ChannelNotFoundEntity("NOT_FOUND"),
        amqp.ChannelPreconditionFailed("PRECONDITION_FAILED"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_what_the_robust_connection_recovers_from(exc: BaseException) -> None:
    assert failure(exc).recovers  # publish resends; a failed settle is a redelivery, not an error


@pytest.mark.parametrize(
    "exc",
    [_returned("t1"), amqp.DeliveryError(None, Basic.Nack(delivery_tag=1)), amqp.ChannelAccessRefused("x"),
     KeyError("x"), ValueError("x")],
    ids=lambda exc: type(exc).__name__,
)
def test_what_it_does_not_recover_from(exc: BaseException) -> None:
    assert not failure(exc).recovers


@pytest.mark.parametrize(
    ("exc", "resend"),
    [
        (OSError(104, "reset"), True),
        (TimeoutError(), True),  # no confirm in time: sent again (on a new channel if the connection lives)
        (amqp.ConnectionClosed(320, "CONNECTION_FORCED"), True),
        (amqp.ChannelInvalidStateError("closed"), True),
        (amqp.DeliveryError(None, Basic.Nack(delivery_tag=1)), True),  # nacked: RabbitMQ could not store it
        (_returned("t1"), False),  # unroutable: sending again cannot help
        (amqp.ChannelPreconditionFailed("PRECONDITION_FAILED"), False),
        (amqp.ChannelAccessRefused("ACCESS_REFUSED"), False),  # a missing permission: at once, clearly
        (KeyError("x"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_what_a_publish_sends_again(exc: BaseException, resend: bool) -> None:
    assert failure(exc).resend is resend


def test_no_form_of_the_password_survives(broker: RabbitMQBroker) -> None:
    leaky = [
        amqp.AMQPConnectionError(f"amqp://app:{PASSWORD}@127.0.0.1/"),
        amqp.AMQPConnectionError("amqp://app:pa%3Ass%2Fw%40rd%231@127.0.0.1/"),
        KeyError(PASSWORD),
        _wrapped(ssl.SSLError(1, f"[SSL] {PASSWORD}")),
    ]
    for exc in leaky:
        for connecting in (True, False):
            text = str(broker._error(exc, "connecting", connecting=connecting))
            assert "pa:ss" not in text and "pa%3Ass" not in text, text
            assert "***" in text


# -- bad options are refused before anything is sent ----------------------------------------


def test_durations_are_timedeltas_and_numbers_are_seconds() -> None:
    broker = RabbitMQBroker(connect_timeout=timedelta(seconds=3), publish_timeout=90, reconnect_interval=0.25)
    assert broker.connect_timeout == timedelta(seconds=3)
    assert broker.publish_timeout == timedelta(seconds=90)
    assert broker.reconnect_interval == timedelta(milliseconds=250)
    assert RabbitMQBroker().publish_timeout == timedelta(seconds=30)
    with pytest.raises(errors.ConfigurationError, match="reconnect_interval must be > 0"):
        RabbitMQBroker(reconnect_interval=0)
    with pytest.raises(errors.ConfigurationError, match="publish_timeout must be a timedelta"):
        RabbitMQBroker(publish_timeout="30")  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="delay tier 'app__delay00' must be > 0"):
        RabbitMQBroker().declare_delay_tiers({"app__delay00": timedelta(0)})


def test_prefix_group_and_delay_slots_are_checked_like_every_adapters() -> None:
    broker = RabbitMQBroker(topic_prefix="app", group_id="workers", delay_slots=(6, 4))
    assert (broker.topic_prefix, broker.group_id, broker.delay_slots) == ("app", "workers", (6, timedelta(seconds=4)))
    with pytest.raises(errors.ConfigurationError, match=r"topic_prefix .* is invalid"):
        RabbitMQBroker(topic_prefix="a b")
    with pytest.raises(errors.ConfigurationError, match=r"group_id .* is invalid"):
        RabbitMQBroker.from_url("amqp://u:p@127.0.0.1/?group_id=a.b")
    with pytest.raises(errors.ConfigurationError, match="delay_slots"):
        RabbitMQBroker(delay_slots=(0, timedelta(seconds=1)))


def test_a_bad_port_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="invalid port"):
        RabbitMQBroker("amqp://u:p@127.0.0.1:99999/")


@pytest.mark.parametrize(("ours", "theirs"), [("quorum", "classic"), ("classic", "quorum")])
def test_a_queue_of_the_other_type_says_its_type_cannot_change(ours: str, theirs: str) -> None:
    broker = RabbitMQBroker(queue_type=ours)
    # RabbitMQ 3.10's reply when the queue exists with the other type
    refused = amqp.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'app__q_high' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is none"
    )
    error = broker._error(refused, "declaring queues ['app__q_high']", queue="app__q_high")
    assert type(error) is errors.ConfigurationError
    text = str(error)
    assert "queue 'app__q_high' already exists in RabbitMQ with other arguments" in text
    assert f"it is a {theirs} queue and this broker declares {ours} queues (queue_type={ours!r})" in text
    assert "a queue's type cannot change" in text
    assert f"or use queue_type={theirs!r}" in text
