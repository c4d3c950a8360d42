"""Kafka adapter on aiokafka: ``nova.KafkaBroker``, ``nova.KafkaAuth``, ``nova.KafkaSSL``.

    broker = KafkaBroker("127.0.0.1:9092", group_id="billing", topic_prefix="shop")
    broker = KafkaBroker.from_url("kafka://127.0.0.1:9092?group_id=billing&topic_prefix=shop")
    broker = KafkaBroker(
        "kafka1:9096",
        auth=KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", "s3cret"),
        ssl=KafkaSSL(ca_file="/etc/kafka/ca.pem"),
    )

How the broker contract maps onto Kafka:

- **publish**: an idempotent producer with ``acks=all``; ``publish`` returns once
  every record is acknowledged, else raises ``EnqueueError`` from the cause.
  Messages are spread round robin over a topic's partitions; a call with many
  messages for a partition builds its own record batch, small calls share the
  producer's batches. A message's headers travel together as one Kafka header,
  ``nova``, holding a JSON object with nova's header names shortened to one letter
  (``{"i": "<nova-id>", "t": "<nova-type>", ...}``; the format is in ``_headers``):
  aiokafka builds and parses each header of a record separately, so one header
  costs much less than seven on both ends, and short names keep records small.
  Packed headers with the full names are read too, and so are records with
  ordinary Kafka headers (another producer's), their values as utf-8 text.
  ``key`` is the record key (not used for partitioning: task ids buy no ordering).
- **topics**: created with the admin client (``ensure_topics``; ``publish`` and
  ``subscribe`` also ensure the topics they touch, once per process), with
  ``partitions`` partitions (default 12: up to 12 worker processes of a group
  share each priority level of a queue) and the cluster's
  ``default.replication.factor`` unless ``replication_factor`` is given (a
  topic created while a broker is down still gets a replica there, which
  catches up when it returns). Delay tiers
  (``declare_delay_tiers``) and dead-letter topics get one partition
  (``partitions_for``). Existing topics are left as they are; ``partitions_of``
  says how many a topic has.
- **consume**: manual commits only. Each partition tracks its delivered offsets;
  the committed offset is the lowest one not yet acked, so out-of-order acks
  from concurrent handlers never commit past unfinished work. Commits are
  batched (every ``commit_interval``, on partition revoke and on close).
- **window**: at most ``window`` unacked deliveries per topic, over all its
  partitions (as on every broker: a worker holds ``prefetch`` tasks of a level,
  however many partitions the level has). Fetching is bounded apart, per topic
  too: the partitions of a topic with ``max(window, 4096)`` fetched records not
  yet handed out are ``pause()``d while the poll loop keeps calling ``getmany``
  for the others, so a delivery may stay unacked for as long as it likes without
  exceeding ``max_poll_interval``. Pauses are re-applied after a rebalance.
- **nack**: the record goes back to the front of its partition's local queue
  and is delivered again by this member (its offset stays uncommitted, so if
  the partition moves to another member first, that member gets it instead).
- **rebalance**: on revoke the records fetched but not yet delivered are
  dropped and the acked prefix is committed; a partition that comes back keeps
  its bookkeeping, so in-flight deliveries are not handed out twice. A sticky
  assignor (the only strategy a nova consumer offers) keeps partitions with their
  owners, spreads each topic's partitions evenly over the members (every worker
  gets work of every priority level), then evens out the members' totals. It moves
  a partition with unacked deliveries only when no idle one can even things out
  (fewest in flight first), so a worker or delay forwarder joining the group rarely
  duplicates what another one holds; a moved delivery reports ``owned`` False.
- ``auto_commit=True`` is an explicit **at-most-once** mode: an offset counts as
  done as soon as it is delivered, whatever the handler does; ``nack`` then
  does not redeliver.

Where things are: ``_broker`` (KafkaBroker: connect, topics, publish), ``_config``
(KafkaAuth, KafkaSSL, durations, URLs), ``_headers`` (the packed header),
``_subscription`` (KafkaSubscription, KafkaDelivery, offsets and pauses), ``_assignor``
(the sticky assignor), ``_errors`` (the one aiokafka -> nova error table) and
``_aiokafka_internals`` (everything that reaches into aiokafka's private parts; what an
aiokafka upgrade can break).
"""

try:
    import aiokafka  # type: ignore[import-untyped]  # noqa: F401
    import orjson  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nova.KafkaBroker needs aiokafka and orjson: pip install 'nova-taskqueue[kafka]'") from exc

from nova.brokers.kafka._broker import KafkaBroker
from nova.brokers.kafka._config import KafkaAuth, KafkaSSL

__all__ = ["KafkaAuth", "KafkaBroker", "KafkaSSL"]
