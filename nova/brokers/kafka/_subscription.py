"""A consumer-group member (``KafkaSubscription``) and its deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiokafka  # type: ignore[import-untyped]
import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from nova._broker import Delivery
from nova._errors import (
    BrokerError,
    ConnectionError,  # noqa: A004 - nova's, a subclass of the builtin
)
from nova.brokers import _common
from nova.brokers.kafka import _aiokafka_internals as aiokafka_internals
from nova.brokers.kafka._assignor import _StickyAssignor
from nova.brokers.kafka._headers import _PackedHeaders

if TYPE_CHECKING:
    from nova.brokers.kafka._broker import KafkaBroker

__all__ = ["KafkaDelivery", "KafkaSubscription"]

log = logging.getLogger("nova.kafka")

_PREFETCH_RECORDS = 4096  # fetched, not yet delivered records per topic before pausing its partitions
# A fetch response's size over all partitions (aiokafka's default is 50 MiB: up to 1 MiB per
# partition, so with many partitions one response could bring a hundred thousand records
# past the prefetch bound; nova keeps a worker's memory that of a one-partition topic).
_FETCH_MAX_BYTES = 2 * 1024 * 1024
_LONG_POLL_MS = 100  # how long a fetch waits at the broker for records to arrive
_SHORT_POLL_MS = 10  # the same while one of the member's partitions is paused (see _poll_wait)


class KafkaDelivery:
    """One consumed record. ``partition`` and ``offset`` say where it came from."""

    __slots__ = ("_headers", "_record", "_settled", "_state", "_sub", "topic")

    def __init__(self, sub: KafkaSubscription, state: _PartitionState, record: Any) -> None:
        self._sub = sub
        self._state = state
        self._record = record
        self._settled = False
        self._headers: dict[str, str] | None = None
        self.topic: str = state.tp.topic

    # Read from the record when asked: the engine only reads topic, headers and body.
    @property
    def partition(self) -> int:
        return int(self._state.tp.partition)

    @property
    def offset(self) -> int:
        return int(self._record.offset)

    @property
    def key(self) -> str | None:
        key: bytes | None = self._record.key
        return None if key is None else key.decode("utf-8", "replace")

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = self._sub._packed.decode(self._record.headers)
        return headers

    @property
    def published_at(self) -> float:
        return float(self._record.timestamp) / 1000

    @property
    def owned(self) -> bool:
        """False once a rebalance gave this record's partition to another member, which
        will deliver it again: a holder (like the delay forwarder) should nack and drop it."""
        return self._state.current

    @property
    def body(self) -> bytes:
        value: bytes | None = self._record.value
        return b"" if value is None else value

    async def ack(self) -> None:
        """Done: the offset may be committed once everything below it is done too."""
        if not self._settled:
            self._settled = True
            self._sub._settle(self._state, self._record, done=True)

    async def nack(self) -> None:
        """Give it back: this member delivers it again (the offset stays uncommitted)."""
        if not self._settled:
            self._settled = True
            self._sub._settle(self._state, self._record, done=False)

    def __repr__(self) -> str:
        return f"KafkaDelivery(topic={self.topic!r}, partition={self.partition}, offset={self.offset})"


# What became of a delivered offset (values of _PartitionState.entries).
_HELD = 1  # a handler has it
_DONE = 2  # acked (or, with auto_commit, handed out)
_BACK = 0  # nacked: to deliver again


class _TopicWindow:
    """One topic's counts over all its partitions: deliveries handlers hold (``window`` caps
    it) and records fetched but not handed out (the prefetch bound caps it)."""

    __slots__ = ("buffered", "held")

    def __init__(self) -> None:
        self.held = 0
        self.buffered = 0  # the sum of its partitions' len(buffer) + len(retry)


class _PartitionState:
    __slots__ = ("assigned", "buffer", "commit_to", "committed", "current", "entries", "fetch", "held",
                 "order", "paused", "retry", "topic", "tp")  # fmt: skip

    def __init__(self, tp: Any, topic: _TopicWindow) -> None:
        self.tp = tp
        self.topic = topic
        self.assigned = True
        self.current = True  # False once dropped from the subscription (its acks do nothing)
        self.paused = False
        self.fetch: Any = None  # aiokafka's fetch state (position, highwater), set on assignment
        self.buffer: deque[Any] = deque()  # fetched, never delivered, in offset order
        self.retry: dict[int, Any] = {}  # nacked records to deliver again, by offset
        self.entries: dict[int, int] = {}  # delivered offsets not yet below the commit point
        self.order: deque[int] = deque()  # the same offsets, lowest first
        self.held = 0  # deliveries of this partition a handler holds (counted in topic.held too)
        self.commit_to: int | None = None  # everything below is done
        self.committed: int | None = None

    def advance(self) -> None:
        # A deque, not the dict's first key: a dict used as a FIFO leaves a trail of
        # deleted slots that every "first key" lookup walks again.
        order, entries = self.order, self.entries
        while order and entries[order[0]] == _DONE:
            offset = order.popleft()
            del entries[offset]
            self.commit_to = offset + 1


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._sub._on_assigned(assigned)


class KafkaSubscription:
    """A consumer-group member; iterate it for deliveries (see the package docstring).

    >>> async for delivery in sub:  # doctest: +SKIP
    ...     await delivery.ack()
    """

    def __init__(self, broker: KafkaBroker, topics: list[str], group: str, window: int) -> None:
        self._broker = broker
        self.topics = topics
        self.group = group
        self.window = window
        self._parts: dict[Any, _PartitionState] = {}
        self._rotation = 0
        self._wake = asyncio.Event()
        self._assigned = asyncio.Event()
        self._closing = False
        self._error: BrokerError | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._end_offsets: dict[Any, int] = {}
        self._end_offsets_at = 0.0
        self._by_topic: dict[str, list[_PartitionState]] = {}  # backlog() reads it per task
        self._states: list[_PartitionState] = []  # _parts' values, for take_nowait
        self._windows: dict[str, _TopicWindow] = {}
        # backlog_nowait's answers until something they count changes: records fetched, handed
        # out or given back, own sends, end offsets, assignment. (A partition's highwater can
        # also move in aiokafka's fetcher, but records past it come through _poll, and a paused
        # partition's topic has a full buffer: its answer is not 0 either way.)
        self._known_backlog: dict[str, int] = {}
        self._packed = _PackedHeaders()
        self._auto_commit = broker.auto_commit
        # Fetched records kept per topic before pausing its partitions: several fetches' worth,
        # so the next fetch is in flight long before the handlers run dry (pausing at one
        # window's worth would leave them idle for a fetch round trip at every pause).
        self._buffer_limit = max(window, _PREFETCH_RECORDS)
        self._generation = -1
        self._refresh_task: asyncio.Task[None] | None = None
        b = broker
        self._consumer = aiokafka.AIOKafkaConsumer(
            **b._client_kwargs(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group reads what was sent before it joined
            session_timeout_ms=b.session_timeout_ms,
            heartbeat_interval_ms=b.heartbeat_interval_ms,
            max_poll_interval_ms=b.max_poll_interval_ms,
            # Short long-polls: a resumed partition is fetched again within 100 ms.
            fetch_max_wait_ms=_LONG_POLL_MS,
            fetch_max_bytes=_FETCH_MAX_BYTES,
            # One strategy only: aiokafka sends one JoinGroup per configured strategy on every
            # (re)join, each with a longer protocol list, and Kafka takes the changed list as a
            # member's new metadata and starts another rebalance. Members joining at about the
            # same time then keep failing each other's SyncGroup, generation after generation
            # (a group that rebalances every ~100 ms for good). A client of another kind in a
            # nova group is refused (InconsistentGroupProtocol) instead of sharing its topics.
            partition_assignment_strategy=(_StickyAssignor(self),),
        )

    async def _start(self) -> None:
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        try:
            await self._consumer.start()
            aiokafka_internals.hand_over_bare_records(self._consumer)
        except (kafka_errors.KafkaError, OSError) as exc:
            await _common.quietly(self._consumer.stop(), log, "stopping the Kafka consumer")
            raise self._broker._translate(exc, "cannot start the Kafka consumer") from exc
        self._poll_task = asyncio.create_task(self._poll(), name=f"nova-kafka-poll-{self.group}")
        self._commit_task = asyncio.create_task(self._commit_loop(), name=f"nova-kafka-commit-{self.group}")
        join_timeout = max(30.0, 2 * self._broker.session_timeout.total_seconds())
        assigned = asyncio.ensure_future(self._assigned.wait())
        try:
            await asyncio.wait({assigned, self._poll_task}, timeout=join_timeout, return_when="FIRST_COMPLETED")
        finally:
            assigned.cancel()
        if not self._assigned.is_set():
            error = self._error
            await self.close()
            if error is not None:
                raise error
            raise ConnectionError(f"consumer group {self.group!r} gave no assignment within {join_timeout:g} s")

    # --- iteration ------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._closing:
                raise StopAsyncIteration
            delivery = self.take_nowait()
            if delivery is not None:
                return delivery
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()

    def header_run(self, delivery: Delivery) -> tuple[Mapping[str, str], str] | None:
        """The delivery's headers as one parse per run of records and its id (see HeaderRuns)."""
        return self._packed.run(delivery._record.headers)  # type: ignore[attr-defined]  # (ours: a KafkaDelivery)

    def take_nowait(self) -> KafkaDelivery | None:
        """The next delivery if one is fetched and the window allows it (see InstantDeliveries)."""
        if self._closing:
            return None
        states = self._states
        count = len(states)
        window = self.window
        start = self._rotation if self._rotation < count else 0  # the assignment may have shrunk
        for i in range(count):
            index = start + i
            if index >= count:
                index -= count
            state = states[index]
            if not (state.buffer or state.retry) or state.topic.held >= window or not state.assigned:
                continue
            record = self._next_record(state)
            if record is None:
                continue
            self._rotation = index  # looked at first next time (fewer empty ones scanned)
            state.held += 1
            state.topic.held += 1
            self._known_backlog.pop(state.tp.topic, None)
            if self._auto_commit:  # at-most-once: done as soon as it is handed out
                state.entries[record.offset] = _DONE
                state.advance()
            if state.paused:
                self._update_pause(state)
            return KafkaDelivery(self, state, record)
        return None

    @staticmethod
    def _next_record(state: _PartitionState) -> Any:
        """The next record to hand out (marked held), nacked ones first; None if none."""
        entries = state.entries
        while state.retry:  # nacked records first, lowest offset first
            record = state.retry.pop(min(state.retry))
            state.topic.buffered -= 1
            if entries.get(record.offset) == _BACK:
                entries[record.offset] = _HELD
                return record
        if state.buffer:
            record = state.buffer.popleft()
            state.topic.buffered -= 1
            entries[record.offset] = _HELD
            state.order.append(record.offset)
            return record
        return None

    def _settle(self, state: _PartitionState, record: Any, *, done: bool) -> None:
        if not state.current:
            return  # the partition moved to another member, which delivers it again
        if self._auto_commit:  # already done when handed out; only the window is freed
            state.held -= 1
            state.topic.held -= 1
            self._wake.set()
            return
        offset = record.offset
        if state.entries.get(offset) != _HELD:
            return  # settled already
        state.held -= 1
        state.topic.held -= 1
        if done:
            state.entries[offset] = _DONE
            state.advance()
        else:
            state.entries[offset] = _BACK
            state.retry[offset] = record
            state.topic.buffered += 1
            self._known_backlog.pop(state.tp.topic, None)
            self._update_pause(state)
        self._wake.set()

    def _update_pause(self, state: _PartitionState) -> None:
        """Fetch a topic's partitions only while fewer than ``_buffer_limit`` fetched records
        of the topic wait to be handed out: bounded prefetch, per topic however many partitions
        it has (memory stays that of one partition's worth). Deliveries a handler holds do not
        count (``window`` caps those in ``take_nowait``); pausing on them would flip the
        partitions on every ack."""
        if not state.assigned:
            return
        full = state.topic.buffered >= self._buffer_limit
        if full != state.paused:
            self._pause_topic(state.tp.topic, full)

    def _pause_topic(self, topic: str, pause: bool) -> None:
        for state in self._by_topic.get(topic, ()):
            if state.assigned and state.paused != pause:
                (self._consumer.pause if pause else self._consumer.resume)(state.tp)
                state.paused = pause
        self._poll_wait()

    def _poll_wait(self) -> None:
        """Short long-polls while a partition is paused.

        aiokafka keeps one fetch in flight per broker. While a partition is paused that fetch
        asks only for the others, and when they have nothing new the broker holds it for the
        whole fetch_max_wait_ms; a partition resumed meanwhile waits for it to come back, and
        its handlers, having drained the buffer, sit idle. A short wait while one is paused
        bounds that.
        """
        paused = any(state.paused for state in self._states)
        aiokafka_internals.set_fetch_wait(self._consumer, _SHORT_POLL_MS if paused else _LONG_POLL_MS)

    # --- background -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        # Never blocks on handlers: it only fills buffers, so getmany runs every ~100 ms
        # and max_poll_interval_ms is never exceeded however long deliveries stay unacked.
        while not self._closing:
            try:
                batch = await self._consumer.getmany(timeout_ms=100)
            except Exception as exc:  # noqa: BLE001 - whatever kills polling must reach the iterator
                if isinstance(exc, kafka_errors.KafkaError) and exc.retriable:
                    log.warning("kafka poll failed, retrying: %r", exc)
                    await asyncio.sleep(0.5)
                    continue
                self._error = self._broker._translate(exc, f"consumer group {self.group!r} failed")
                self._error.__cause__ = exc
                log.error("kafka consumer stopped: %r", exc)
                self._wake.set()
                return
            woke = False
            if batch:
                log.debug("fetched %s", {tp: len(r) for tp, r in batch.items()})
            for tp, records in batch.items():
                state = self._parts.get(tp)
                if state is None or not state.assigned or not records:
                    continue
                self._known_backlog.pop(tp.topic, None)
                first = records[0].offset
                if (not state.order or first > state.order[-1]) and (
                    state.commit_to is None or first >= state.commit_to
                ):  # the common case: all new (past every delivered offset and the commit point)
                    state.buffer.extend(records)
                    state.topic.buffered += len(records)
                    woke = True
                else:
                    for record in records:
                        if state.commit_to is not None and record.offset < state.commit_to:
                            continue
                        entry = state.entries.get(record.offset)
                        if entry is None:
                            state.buffer.append(record)
                            state.topic.buffered += 1
                        elif entry == _BACK and record.offset not in state.retry:
                            state.retry[record.offset] = record  # re-fetched after a rebalance
                            state.topic.buffered += 1
                        woke = True
                self._update_pause(state)
            if woke:
                self._wake.set()

    async def _commit_loop(self) -> None:
        interval = self._broker.commit_interval.total_seconds()
        while not self._closing:
            await asyncio.sleep(interval)
            await self._commit(limit_s=interval * 10 + 5)

    async def _commit(self, *, limit_s: float, only: Any = None) -> None:
        async with self._commit_lock:
            offsets = {
                tp: state.commit_to
                for tp, state in self._parts.items()
                if state.assigned
                and state.commit_to is not None
                and state.commit_to != state.committed
                and (only is None or tp in only)
            }
            if not offsets:
                return
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), limit_s)
            except Exception as exc:  # noqa: BLE001 - a failed commit is retried, never fatal
                # Nothing is lost: the offsets stay pending and are committed next time.
                log.warning("kafka commit of %s failed, will retry: %r", self.group, exc)
                return
            for tp, offset in offsets.items():
                state = self._parts.get(tp)
                if state is not None:
                    state.committed = offset

    async def _on_revoked(self, revoked: Any) -> None:
        await self._commit(limit_s=10.0, only=set(revoked))
        self._known_backlog.clear()
        for tp in revoked:
            state = self._parts.get(tp)
            if state is not None:
                # Undelivered records are dropped; the next owner reads from the commit point.
                state.assigned = False
                state.paused = False
                state.topic.buffered -= len(state.buffer) + len(state.retry)
                state.buffer.clear()
                state.retry.clear()
        self._poll_wait()

    async def _on_assigned(self, assigned: Any) -> None:
        assigned = set(assigned)
        log.debug("group %s assigned %s", self.group, sorted(assigned))
        for tp in list(self._parts):
            if tp not in assigned:
                dropped = self._parts.pop(tp)
                dropped.current = False
                dropped.topic.held -= dropped.held  # their settles do nothing now: the window is free
        for tp in assigned:
            state = self._parts.get(tp)
            if state is None:
                window = self._windows.get(tp.topic)
                if window is None:
                    window = self._windows[tp.topic] = _TopicWindow()
                self._parts[tp] = _PartitionState(tp, window)
            else:
                # Kept across the rebalance: in-flight deliveries stay tracked; the pause is
                # gone (aiokafka resets it), so it is re-applied below.
                state.assigned = True
                state.paused = False
                state.committed = None
                state.fetch = None  # a new assignment has new fetch states
        self._by_topic = {}
        for tp, state in self._parts.items():
            self._by_topic.setdefault(tp.topic, []).append(state)
        for topic, states in self._by_topic.items():
            if states[0].topic.buffered >= self._buffer_limit:
                self._pause_topic(topic, True)
        self._states = list(self._parts.values())
        self._known_backlog.clear()
        self._generation = aiokafka_internals.group_generation(self._consumer)
        self._assigned.set()
        self._wake.set()

    def _note_end_offset(self, topic: str, partition: int, end: int) -> None:
        for tp, state in self._parts.items():
            if tp.partition == partition and tp.topic == topic and state.assigned:
                self._end_offsets[tp] = max(end, self._end_offsets.get(tp, 0))
                self._known_backlog.pop(topic, None)

    # --- public ---------------------------------------------------------------------------------

    def backlog_nowait(self, topic: str) -> int | None:
        """Records of ``topic`` in Kafka not yet delivered to this member (best effort), from
        what the member already knows; None if a partition's position must be asked first.

        End offsets are refreshed in the background (highwater marks from fetches go stale
        while a partition is paused).
        """
        known = self._known_backlog.get(topic)
        if known is not None and not self._closing:
            return known
        states = self._by_topic.get(topic)
        if not states or self._closing:
            return 0
        now = time.monotonic()
        if now - self._end_offsets_at > 0.25 and self._refresh_task is None:
            self._end_offsets_at = now
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_end_offsets())
        total = 0
        for state in states:
            if not state.assigned:
                continue
            fetch = state.fetch
            if fetch is None:
                fetch = state.fetch = aiokafka_internals.fetch_state(self._consumer, state.tp)
            if fetch is None or not fetch.has_valid_position:
                return None
            end = max(fetch.highwater or 0, self._end_offsets.get(state.tp, 0))
            total += len(state.buffer) + len(state.retry) + max(0, end - int(fetch.position))
        self._known_backlog[topic] = total
        return total

    async def backlog(self, topic: str) -> int:
        """Records of ``topic`` in Kafka not yet delivered to this member (best effort).

        Answers from what the member already knows without yielding to the event loop
        (the caller compares it with deliveries it holds, and a yield would let one move
        from here to there unseen), unless a partition has no position yet.
        """
        known = self.backlog_nowait(topic)
        if known is not None:
            return known
        total = 0
        for state in self._by_topic.get(topic, ()):
            if not state.assigned:
                continue
            total += len(state.buffer) + len(state.retry)
            try:
                position = int(await asyncio.wait_for(self._consumer.position(state.tp), 1))
            except (kafka_errors.KafkaError, TimeoutError, AssertionError):
                continue
            fetched_high = self._consumer.highwater(state.tp) or 0
            total += max(0, max(fetched_high, self._end_offsets.get(state.tp, 0)) - position)
        return total

    async def _refresh_end_offsets(self) -> None:
        try:
            tps = [s.tp for s in self._parts.values() if s.assigned]
            if tps:
                fresh = await asyncio.wait_for(self._consumer.end_offsets(tps), 5)
                for tp, end in fresh.items():
                    self._end_offsets[tp] = max(end, self._end_offsets.get(tp, 0))
                self._known_backlog.clear()
        except Exception as exc:  # noqa: BLE001 - best effort: the next call tries again
            log.debug("kafka end offsets refresh failed: %r", exc)
        finally:
            self._end_offsets_at = time.monotonic()
            self._refresh_task = None

    async def close(self) -> None:
        """Commit what is done and leave the group; unacked deliveries go to other members."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        for task in (self._poll_task, self._commit_task, self._refresh_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._commit(limit_s=10.0)
        for state in self._parts.values():
            state.assigned = state.current = False
        try:
            await asyncio.wait_for(self._consumer.stop(), 15)
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            log.warning("kafka consumer %s did not stop cleanly: %r", self.group, exc)
        self._parts.clear()
        self._states = []
        self._broker._subscriptions.discard(self)
