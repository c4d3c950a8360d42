"""The broker adapters, and the one table that says where each lives.

    from nova.brokers import broker_from_url
    broker = broker_from_url("kafka://127.0.0.1:9092?group_id=shop")

Each adapter is a package (``nova.brokers.kafka``, ``.rabbitmq``, ``.rocketmq``) that
imports its client library on import; this module imports none of them, so
``import nova`` stays free of broker clients. ``nova/__init__`` resolves its lazy
public names (``nova.KafkaBroker``, ...) from ``PUBLIC_NAMES`` and
``TaskQueue.from_url`` resolves URL schemes from ``SCHEMES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nova._errors import ConfigurationError

if TYPE_CHECKING:
    from nova._broker import Broker

__all__ = ["PUBLIC_NAMES", "SCHEMES", "broker_class", "broker_from_url"]

_KAFKA = "nova.brokers.kafka"
_RABBITMQ = "nova.brokers.rabbitmq"
_ROCKETMQ = "nova.brokers.rocketmq"

#: URL scheme -> (module, broker class). Every class has ``from_url(url)``.
SCHEMES: dict[str, tuple[str, str]] = {
    "sim": ("nova.sim", "SimBroker"),
    "kafka": (_KAFKA, "KafkaBroker"),
    "amqp": (_RABBITMQ, "RabbitMQBroker"),
    "amqps": (_RABBITMQ, "RabbitMQBroker"),
    "rocketmq": (_ROCKETMQ, "RocketMQBroker"),
}

#: Public ``nova.<name>`` -> the adapter module that defines it (imported on first use).
PUBLIC_NAMES: dict[str, str] = {
    "KafkaBroker": _KAFKA,
    "KafkaAuth": _KAFKA,
    "KafkaSSL": _KAFKA,
    "RabbitMQBroker": _RABBITMQ,
    "RocketMQBroker": _ROCKETMQ,
    "RocketMQAdmin": _ROCKETMQ,
    "ConsumerModel": _ROCKETMQ,
}


def broker_class(scheme: str) -> type[Any]:
    """The broker class for a URL scheme (imports its adapter, and so its client)."""
    try:
        module, name = SCHEMES[scheme.lower()]
    except KeyError:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(f"unknown broker URL scheme {scheme!r}: use one of {known}") from None
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls


def broker_from_url(url: str) -> Broker:
    """A broker from its URL, e.g. ``kafka://127.0.0.1:9092?group_id=g`` or ``sim://?clock=virtual``."""
    broker: Broker = broker_class(urlsplit(url).scheme).from_url(url)
    return broker
