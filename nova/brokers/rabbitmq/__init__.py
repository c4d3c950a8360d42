"""RabbitMQ adapter (aio-pika): ``nova.RabbitMQBroker``."""

from nova.brokers.rabbitmq._broker import RabbitMQBroker

__all__ = ["RabbitMQBroker"]
