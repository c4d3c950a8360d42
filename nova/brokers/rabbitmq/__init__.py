"""RabbitMQ adapter (aio-pika): ``nova.RabbitMQBroker``.

How nova's broker contract maps onto AMQP is the docstring of ``_broker``. The files:
``_broker`` (configuration, connection, topology, publishing), ``_subscription``
(a subscription's stream of deliveries and each topic's backlog), ``_settler``
(acks and nacks written once per event-loop turn), ``_errors`` (the one table from
client exceptions to nova's errors) and ``_aiormq_internals`` (everything taken from
aiormq/pamqp beyond their documented API).
"""

from nova.brokers.rabbitmq._broker import RabbitMQBroker

__all__ = ["RabbitMQBroker"]
