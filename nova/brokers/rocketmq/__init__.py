"""RocketMQ 5.x adapter (rocketmq-python-client): ``nova.RocketMQBroker``, ``nova.RocketMQAdmin``,
``nova.ConsumerModel``."""

from nova.brokers.rocketmq._broker import ConsumerModel, RocketMQAdmin, RocketMQBroker

__all__ = ["ConsumerModel", "RocketMQAdmin", "RocketMQBroker"]
