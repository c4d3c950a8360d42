"""RabbitMQ adapter (aio-pika): ``nova.RabbitMQBroker``."""

from nova._rabbitmq import RabbitMQBroker

__all__ = ["RabbitMQBroker"]
