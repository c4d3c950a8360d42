"""RocketMQ 5.x adapter (rocketmq-python-client): ``nova.RocketMQBroker``, ``nova.RocketMQAdmin``,
``nova.ConsumerModel``."""

from nova._rocketmq import ConsumerModel, RocketMQAdmin, RocketMQBroker

__all__ = ["ConsumerModel", "RocketMQAdmin", "RocketMQBroker"]
