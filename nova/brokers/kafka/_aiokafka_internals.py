"""Everything nova reads, writes or replaces inside aiokafka, behind named functions.

aiokafka's public API has no way to do these few things nova needs; each function
here reaches into aiokafka at one place, and nowhere else in nova does. An aiokafka
upgrade can break only what is listed below, and ``tests/brokers/test_kafka_internals.py``
(no broker needed) fails naming the attribute when the installed aiokafka is no longer
shaped as expected. Every function is guarded: if aiokafka has changed, nova keeps
working as aiokafka's public API allows (slower, or less precise, as each one says).

==========================  ============================================  ==============================
function                    what it touches                               if aiokafka changed
==========================  ============================================  ==============================
``hand_over_bare_records``  ``consumer._fetcher._records``,               records come wrapped in
                            ``FetchResult._partition_records``,           ConsumerRecords (slower)
                            ``PartitionRecords._consumer_record``
``set_fetch_wait``          ``consumer._fetcher._fetch_max_wait_ms``      a resumed partition waits for
                                                                          the long poll
``fetch_state``             ``consumer._subscription.subscription``       backlog() asks the consumer
                            ``.assignment.state_value(tp)``               (awaits)
``group_generation``        ``consumer._coordinator.generation``          the sticky assignor settles
                                                                          double claims by name only
``nothing_queued``          ``producer._message_accumulator._batches``    publish never builds its own
                                                                          record batch (slower)
``probe``                   ``AIOKafkaConnection``, ``conn._protocol``    a refused TLS socket may close
                                                                          after the caller's loop
``partitions_not_led_yet``  ``admin._client.send``, a hand-built          ensure_topics does not wait
                            ``OffsetRequest`` (ListOffsets)               for new leaders to answer
``cluster_default_topic``   ``NewTopic.replication_factor`` set to -1,    topics get ``min(3, live
                            sent as is by                                 brokers)`` replicas
                            ``admin._convert_new_topic_request``
==========================  ============================================  ==============================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.conn import AIOKafkaConnection  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.protocol.offset import OffsetRequest  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

__all__ = [
    "BareRecordResults",
    "cluster_default_topic",
    "fetch_state",
    "group_generation",
    "hand_over_bare_records",
    "latest_offsets_request",
    "nothing_queued",
    "partitions_not_led_yet",
    "probe",
    "set_fetch_wait",
    "unanswered",
]

log = logging.getLogger("nova.kafka")

_LATEST = -1  # ListOffsets: the offset the next record will get
_CLUSTER_DEFAULT = -1  # CreateTopics: the cluster's default.replication.factor


# --- consumer -------------------------------------------------------------------------------------


def _bare(tp: Any, record: Any) -> Any:
    """The record maker of nova's fetch results: the parsed record itself."""
    return record


class BareRecordResults(OrderedDict[Any, Any]):
    """aiokafka's fetched results by partition, whose records come out as they were parsed.

    aiokafka's consumer wraps every record it hands out in a ConsumerRecord, a dataclass
    of eleven fields built per record: a large share of a drain's CPU. nova reads five of
    them, which the parsed record (aiokafka's DefaultRecord) has under the same names:
    offset, timestamp, key, value, headers (a list instead of a tuple); topic and partition
    come from the partition's state. This dict replaces the fetcher's ``_records`` and gives
    each fetch result stored in it a record maker that returns the record as it is (only for
    this consumer: nothing of aiokafka's is changed for anyone else).
    """

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if records is not None and hasattr(records, "_consumer_record"):
            with contextlib.suppress(AttributeError):  # (read-only: it keeps making ConsumerRecords)
                records._consumer_record = _bare
        super().__setitem__(tp, result)


def hand_over_bare_records(consumer: Any) -> None:
    """Have a started ``consumer`` hand out parsed records as they are (see BareRecordResults)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    results = getattr(fetcher, "_records", None)
    if type(results) is not OrderedDict:
        log.debug("aiokafka's fetcher is not as expected: records come as ConsumerRecords")
        return
    fetcher._records = BareRecordResults(results)  # results fetched already stay as they are


def set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """How long the started ``consumer``'s next fetches wait at the broker for records.

    aiokafka takes it once, as ``fetch_max_wait_ms``; nova shortens it while a partition is
    paused (see ``KafkaSubscription._poll_wait``)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
        fetcher._fetch_max_wait_ms = wait_ms


def fetch_wait(consumer: Any) -> int | None:
    """The started ``consumer``'s current fetch wait (ms) as ``set_fetch_wait`` set it; None
    when aiokafka's fetcher is not where expected."""
    wait = getattr(getattr(consumer, "_fetcher", None), "_fetch_max_wait_ms", None)
    return wait if isinstance(wait, int) else None


def fetch_state(consumer: Any, tp: Any) -> Any:
    """aiokafka's fetch state of an assigned partition (``has_valid_position``, ``position``,
    ``highwater``), read without awaiting; None if it is not where expected."""
    try:
        return consumer._subscription.subscription.assignment.state_value(tp)
    except (AttributeError, KeyError, TypeError):
        return None


def group_generation(consumer: Any) -> int:
    """The consumer group generation ``consumer`` last joined (-1: none, or not known)."""
    return int(getattr(getattr(consumer, "_coordinator", None), "generation", -1))


# --- producer -------------------------------------------------------------------------------------


def nothing_queued(producer: Any, topic: str, partition: int) -> bool:
    """No record batch for this partition waits in the producer (False when aiokafka's
    queue is not where expected, which only means the slower path)."""
    try:
        return not producer._message_accumulator._batches.get(TopicPartition(topic, partition))
    except AttributeError:
        return False


# --- connections ----------------------------------------------------------------------------------


async def probe(host: str, port: int, timeout: float, client_kwargs: dict[str, Any]) -> None:
    """Open one connection to ``host:port`` (TLS and SASL as in ``client_kwargs``) and close it;
    raises what the connect raised (OSError, KafkaError, TimeoutError after ``timeout`` s).

    aiokafka's own bootstrap only logs a failed connect and says "Unable to bootstrap";
    a connection of our own surfaces the real error (refused credentials, untrusted
    certificate, wrong protocol).
    """
    conn = AIOKafkaConnection(host, port, **client_kwargs)
    try:
        await asyncio.wait_for(conn.connect(), timeout)
    finally:
        await _closed(conn)


async def _closed(conn: Any) -> None:
    """Close a probe connection and wait (up to a second) until its socket is closed.

    A TLS connection closes only after its close_notify exchange: left to finish in the
    background, its socket outlives a caller that stops the event loop right after a
    refused connect (an "unclosed transport" when collected later)."""
    closing = conn.close()
    if getattr(conn, "_protocol", None) is None or closing is None:  # no socket was ever opened
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 1.0)


# --- admin ----------------------------------------------------------------------------------------


def latest_offsets_request(partitions: list[tuple[str, int]]) -> Any:
    """A ListOffsets request for the latest offset of each (topic, partition)."""
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append((partition, _LATEST))
    return OffsetRequest(-1, 0, list(by_topic.items()))  # replica -1 (a client), read uncommitted


def unanswered(response: Any) -> list[tuple[str, int]]:
    """The (topic, partition)s a ListOffsets response answers with an error code."""
    return [(topic, answer[0]) for topic, answers in response.topics for answer in answers if answer[1]]


async def send_to_node(admin: Any, node: int, request: Any) -> Any:
    """``request`` sent to broker ``node`` over the admin client's connection; its response
    (the admin client has no public call for a request it does not know)."""
    return await admin._client.send(node, request)


async def partitions_not_led_yet(admin: Any, node: int, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The partitions whose leader ``node`` does not answer for yet: one ListOffsets request
    through the admin client's connection to ``node`` (anything unexpected counts as answered)."""
    try:
        return unanswered(await send_to_node(admin, node, latest_offsets_request(partitions)))
    except (KafkaError, OSError, AttributeError, TypeError, IndexError) as exc:
        log.debug("asking the leaders of new partitions failed: %r", exc)
        return []


def cluster_default_topic(name: str, partitions: int) -> Any:
    """A NewTopic with ``partitions`` partitions and the cluster's ``default.replication.factor``
    (-1 in CreateTopics); None if aiokafka no longer sends the attribute as it is.

    NewTopic's constructor refuses -1 unless replicas are assigned by hand (it predates
    Kafka 2.4, whose brokers read -1 as "the cluster's default"), but create_topics copies the
    attribute into the request without checking it again. aiokafka sends CreateTopics v3 at
    most; Kafka 4.1 brokers read -1 there as they do in v4+ (brokers older than 2.4 refuse it).
    """
    convert = getattr(AIOKafkaAdminClient, "_convert_new_topic_request", None)
    topic = NewTopic(name, partitions, 1)
    if convert is None or not hasattr(topic, "replication_factor"):
        return None
    topic.replication_factor = _CLUSTER_DEFAULT
    try:
        request = convert(topic)
    except Exception:  # noqa: BLE001 - aiokafka changed: the caller chooses a factor itself
        return None
    if not (isinstance(request, tuple) and len(request) > 2 and request[2] == _CLUSTER_DEFAULT):
        return None
    return topic
