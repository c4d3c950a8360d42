"""The scheme table and the helpers the adapters share."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

import nova
from nova.brokers import PUBLIC_NAMES, SCHEMES, broker_class, broker_from_url
from nova.brokers._common import (
    Backoff,
    delay_slots,
    duration,
    optional_group,
    optional_prefix,
    parse_bool,
    quietly,
    redact_url,
    scrub,
    split_host_port,
)
from nova.sim import SimBroker, VirtualClock


def test_every_public_adapter_name_is_exported_lazily() -> None:
    for name in PUBLIC_NAMES:
        assert name in nova.__all__


def test_every_scheme_names_a_broker_class() -> None:
    for scheme, (module, name) in SCHEMES.items():
        assert module.startswith("nova.") and name.endswith("Broker"), scheme
    assert broker_class("KAFKA").__name__ == "KafkaBroker"


def test_sim_urls() -> None:
    assert isinstance(broker_from_url("sim://?clock=virtual&seed=2").clock, VirtualClock)
    assert not isinstance(SimBroker.from_url("sim://").clock, VirtualClock)
    with pytest.raises(nova.ConfigurationError, match="clock must be system or virtual"):
        broker_from_url("sim://?clock=wall")
    with pytest.raises(nova.ConfigurationError, match="unknown sim URL option"):
        broker_from_url("sim://?speed=2")


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(nova.ConfigurationError, match=r"unknown broker URL scheme 'redis'.*kafka://"):
        nova.TaskQueue.from_url("redis://127.0.0.1")


def test_host_port() -> None:
    assert split_host_port("127.0.0.1:9092") == ("127.0.0.1", 9092)
    assert split_host_port("[::1]:5672") == ("::1", 5672)
    for bad in ("127.0.0.1", ":9092", "host:port", "host:70000"):
        with pytest.raises(nova.ConfigurationError, match="is not host:port"):
            split_host_port(bad, "bootstrap server")


def test_bool_options() -> None:
    assert parse_bool("auto_commit", "Yes", "kafka") is True
    assert parse_bool("auto_commit", "0", "kafka") is False
    with pytest.raises(nova.ConfigurationError, match="kafka URL option auto_commit must be true or false"):
        parse_bool("auto_commit", "maybe", "kafka")


def test_secrets_are_redacted() -> None:
    assert redact_url("amqp://bob:p%40ss@host:5672/") == "amqp://bob:***@host:5672/"
    assert redact_url("amqp://host:5672/") == "amqp://host:5672/"
    assert scrub("login bob/p@ss p%40ss failed", ["p@ss", None]) == "login bob/*** *** failed"


def test_prefix_group_and_durations_are_validated_alike() -> None:
    assert optional_prefix(None) is None and optional_group("g-1") == "g-1"
    with pytest.raises(nova.ConfigurationError, match="no '_'"):
        optional_prefix("a_b")
    with pytest.raises(nova.ConfigurationError, match="group_id"):
        optional_group("a b")
    assert duration("consume_timeout", 1.5) == timedelta(seconds=1.5)
    assert duration("x", timedelta(0), allow_zero=True) == timedelta(0)
    with pytest.raises(nova.ConfigurationError, match="consume_timeout must be > 0"):
        duration("consume_timeout", 0)
    with pytest.raises(nova.ConfigurationError, match="must be a timedelta"):
        duration("consume_timeout", "5m")  # type: ignore[arg-type]
    assert delay_slots((6, 4)) == (6, timedelta(seconds=4))
    assert delay_slots(None) is None
    with pytest.raises(nova.ConfigurationError, match="delay_slots"):
        delay_slots((0, timedelta(hours=1)))


async def test_quietly_logs_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise OSError("socket gone")

    caplog.set_level(logging.DEBUG, logger="nova.test")
    await quietly(fails(), logging.getLogger("nova.test"), "closing the probe")
    assert "closing the probe failed: OSError('socket gone')" in caplog.text


async def test_backoff_stops_at_its_deadline() -> None:
    backoff = Backoff(within=0.0)
    assert await backoff.wait() is False
    backoff = Backoff(within=5.0, first=0.001, longest=0.002)
    assert await backoff.wait() is True
    assert backoff.pause == 0.002
    backoff.restart()
    assert backoff.pause == 0.001
