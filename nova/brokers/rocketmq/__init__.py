"""RocketMQ 5 adapter on Apache's ``rocketmq-python-client`` (gRPC, through the proxy):
``nova.RocketMQBroker``, ``nova.RocketMQAdmin``, ``nova.ConsumerModel``.

    broker = RocketMQBroker(
        "127.0.0.1:8081",                  # proxy gRPC endpoint(s)
        namesrv="127.0.0.1:9876",          # lets nova create topics and groups itself
        auth=("nova-app", "secret"),       # ACL 2.0 user, if the cluster has ACL on
    )
    queue = TaskQueue(broker)

Credentials: ``auth=(access_key, secret_key)`` (``credentials=`` is the same, under
the seed's name; in a URL, ``rocketmq://ak:sk@host:8081``); ``admin_auth=`` signs
the admin requests instead when another user may create topics and groups.

Topics and consumer groups. gRPC clients cannot create either, and the proxy
refuses unknown ones. Given ``namesrv=`` (or ``rocketmq://...?namesrv=...``),
``ensure_topics`` and ``subscribe`` create them through RocketMQ's remoting admin
protocol (the same requests as ``mqadmin updateTopic`` / ``updateSubGroup``,
signed with ``admin_auth`` or else ``auth``), which takes milliseconds. Without
it they only check that the topics exist and raise ``ConfigurationError`` naming
the ``mqadmin`` commands to run. :class:`RocketMQAdmin` does the same by hand::

    await RocketMQAdmin("127.0.0.1:9876").create_topics(["myapp_default_normal"])
    await RocketMQAdmin("127.0.0.1:9876").create_groups(["myapp_workers"])

Topics carry normal and timer messages alike, so nova creates them with
``message.type=MIXED`` (the broker needs ``enableMixedMessageType=true``), or use
``topic_message_type=`` with a proxy running ``enableTopicMessageTypeCheck=false``.

Delays: ``Message.deliver_at`` becomes the message's delivery timestamp (a timer
message, rounded up to ``timer_precision`` — the broker's ``timerPrecisionMs`` —
so never early) when it fits ``max_delay`` (the proxy's ``maxDelayTimeMills``,
1 day by default); the engine cascades longer delays.

Redelivery. A receive keeps its messages invisible to the group's other consumers
for 30 s, and nova extends that (ChangeInvisibleDuration, one request per held
message every 10-15 s, none for the many acked sooner) for as long as the task is
held, up to ``consume_timeout`` (5 minutes by default, counted from the receive: the
longest a task may wait in the worker's prefetch and run in its handler). So the
tasks of a worker that dies (``kill -9``, OOM) reach another worker within about
30 s; a task held past ``consume_timeout`` is given back to the group (a warning
says so) and its late ack is refused.
``max_reconsume_times`` (the seed's option) is kept as an attribute for the
engine's retry policy; RocketMQ's own redelivery limit (the group's
``retryMaxTimes``, after which the broker moves a message to ``%DLQ%<group>``
where nova never sees it) is set very high, so failed tasks reach nova's
dead-letter queue instead.
Acks: ``Delivery.ack()`` returns at once and a background task sends the acks
of each topic in batches (one AckMessage request carries up to 64 receipt
handles); ``close()`` sends the pending ones first. An ack that never reaches
the broker means a redelivery within 30 s, never a lost task.
``ConsumerModel.BROADCASTING`` gives each subscription its own group
(``<group>-b<random>``), so every worker sees every task published while it runs.

Files: ``_broker`` (RocketMQBroker: connect, topics, publish), ``_subscription``
(consuming), ``_admin`` (RocketMQAdmin, the remoting protocol), ``_errors`` (the one
error translation table), ``_client_patches`` (everything taken from the client
beyond its public API).
"""

from nova.brokers.rocketmq._admin import RocketMQAdmin
from nova.brokers.rocketmq._broker import ConsumerModel, RocketMQBroker

__all__ = ["ConsumerModel", "RocketMQAdmin", "RocketMQBroker"]
