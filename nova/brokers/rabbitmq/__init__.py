"""RabbitMQ adapter (aio-pika): ``nova.RabbitMQBroker``.

How nova's broker contract maps onto AMQP, quorum queues and several nodes
included, is the docstring of ``_broker``. The files: ``_broker`` (options,
connection, topology, publishing), ``_config`` (the nodes from the URL or URLs,
and the queue type), ``_subscription`` (a subscription's stream of deliveries and
each topic's backlog), ``_settler`` (acks and nacks written once per event-loop
turn), ``_errors`` (the one table from client exceptions to nova's errors) and
``_aiormq_internals`` (everything taken from aiormq/pamqp/aio-pika beyond their
documented API: the settler's frames, and the robust connection's attempts moved
round the nodes).
"""

from nova.brokers.rabbitmq._broker import RabbitMQBroker

__all__ = ["RabbitMQBroker"]
