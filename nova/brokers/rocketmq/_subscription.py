"""Consuming: SimpleConsumers per topic, a window, batched acks, renewed invisibility."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nova._broker import Delivery
from nova._errors import ConfigurationError, NovaError
from nova.brokers.rocketmq import _client_patches as patches
from nova.brokers.rocketmq._errors import is_auth_failure, is_not_found, lost_settings

if TYPE_CHECKING:
    from nova.brokers.rocketmq._broker import RocketMQBroker

log = logging.getLogger("nova.rocketmq")

_HEADER_MARK = "="  # header values are stored as "=value": RocketMQ rejects blank property values


# ---------------------------------------------------------------- consuming


@dataclass(eq=False)
class _Delivery:
    topic: str
    body: bytes
    headers: Mapping[str, str]
    published_at: float
    _sub: _Subscription
    _native: Any
    _consumer: Any
    #: (time.monotonic) the broker gives the message back to the group at this time or later...
    _visible_until: float
    #: ...and is not asked to keep it past this one: consume_timeout after the receive
    _deadline: float
    _done: bool = False
    _renewal: asyncio.Task[None] | None = None
    #: its invisible time ran out: the group gets it again (this receipt handle is spent)
    _lapsed: bool = False

    async def ack(self) -> None:
        await self._sub._settle(self, ack=True)

    async def nack(self) -> None:
        await self._sub._settle(self, ack=False)

    def __repr__(self) -> str:
        return f"<RocketMQ delivery topic={self.topic} id={self._native.message_id}>"


#: Messages per receive (the proxy hands out at most 32)...
_RECEIVE_BATCH = 32
#: ...and receives in flight per topic while it has a backlog (the second overlaps the first's round trip).
_RECEIVES_IN_FLIGHT = 2
#: Acks ride in AckMessage requests of up to this many entries...
_ACK_BATCH = 64
#: ...with at most this many requests in flight; acks made meanwhile wait and join bigger batches.
_ACKS_IN_FLIGHT = 4
_ACK_ATTEMPTS = 3
_CODE_OK, _CODE_MULTIPLE_RESULTS = 20000, 30000
#: A receive keeps its messages from the group's other consumers this long (seconds; less if
#: consume_timeout is shorter), and nova extends that while a message is held, up to
#: consume_timeout: the tasks of a worker that dies come back within this time.
_INVISIBLE_S = 30
#: Held messages with at most this much of it left are extended, by a sweep this often
#: (seconds): a renewal that fails is tried again at least twice before the time runs out.
_RENEW_WHEN_LEFT = 15.0
_RENEW_EVERY = 5.0
#: Renewal requests in flight at once (the protocol has one receipt handle per request).
_RENEWALS_IN_FLIGHT = 32


def _plan_renewals(
    held: Iterable[_Delivery], now: float, invisible: int
) -> tuple[list[tuple[_Delivery, int]], list[_Delivery]]:
    """One renewal sweep at ``now`` (monotonic): (delivery, seconds) to extend, and the
    deliveries whose invisible time ran out (marked lapsed here).

    A delivery is extended once at most ``_RENEW_WHEN_LEFT`` seconds of its invisible
    time are left, to ``invisible`` seconds from now but never past its deadline; once
    that would not gain a second it is left to run out (given back at its deadline).
    """
    extend: list[tuple[_Delivery, int]] = []
    lapsed: list[_Delivery] = []
    for d in held:
        if d._done or d._lapsed or d._renewal is not None:
            continue
        left = d._visible_until - now
        if left <= 0:
            d._lapsed = True
            lapsed.append(d)
        elif left <= _RENEW_WHEN_LEFT:
            seconds = min(invisible, math.floor(d._deadline - now))
            if now + seconds >= d._visible_until + 1:
                extend.append((d, seconds))
    return extend, lapsed


class _Subscription:
    """SimpleConsumers of one group, one per topic, so each topic has its own window.

    ``ack()`` returns at once: the delivery leaves the window and a background
    task sends the acks in batches (one AckMessage request per topic carries
    many receipt handles). An ack that never reaches the broker only means a
    redelivery; ``close()`` sends the pending ones first.

    Receives ask for ``_INVISIBLE_S`` of invisible time; a sweep extends what is
    still held (``_plan_renewals``) up to ``consume_timeout`` after the receive,
    after which the broker gives the task to the group again. Acks, give-backs and
    the next renewal of a message wait for its renewal in flight: each renewal
    gives the message a new receipt handle and spends the old one.
    """

    def __init__(self, broker: RocketMQBroker, topics: list[str], group: str, window: int) -> None:
        self._broker = broker
        self.topics = topics
        self.group = group
        self.window = window
        self._consume_s = broker.consume_timeout.total_seconds()
        self._invisible = min(_INVISIBLE_S, int(self._consume_s))
        self._renewing: set[asyncio.Task[None]] = set()
        self._renew_failures: list[Exception] = []
        self._consumers: dict[str, Any] = {}
        self._retired: list[Any] = []
        self._held: dict[str, set[_Delivery]] = {t: set() for t in topics}
        self._buffered: dict[str, int] = dict.fromkeys(topics, 0)
        # per topic: the group's received offset read before each receive in flight
        self._receive_bases: dict[str, list[int]] = {t: [] for t in topics}
        self._reserved: dict[str, int] = dict.fromkeys(topics, 0)
        self._busy: dict[str, asyncio.Event] = {t: asyncio.Event() for t in topics}
        self._reads_running: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self._reads_queued: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self._ack_pending: list[_Delivery] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self._acks_stop = False
        self._queue: asyncio.Queue[_Delivery | BaseException | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<RocketMQ subscription group={self.group} topics={self.topics}>"

    async def start(self) -> None:
        try:
            for topic in self.topics:
                await self._broker._query_route(self._broker._producer, topic)
                self._consumers[topic] = await self._new_consumer(topic)
            for topic in self._consumers:
                for lane in range(_RECEIVES_IN_FLIGHT):
                    self._tasks.append(asyncio.create_task(self._pump(topic, lane)))
            self._ack_task = asyncio.create_task(self._ack_loop())
            self._tasks.append(asyncio.create_task(self._renew()))
        except BaseException as exc:
            for task in [*self._tasks, *([self._ack_task] if self._ack_task else [])]:
                task.cancel()
            await self._shutdown_consumers()
            if isinstance(exc, NovaError) or not isinstance(exc, Exception):
                raise
            raise self._broker._err(exc, f"subscribe {self.group}") from exc

    async def _new_consumer(self, topic: str) -> Any:
        rmq = patches.client()
        consumer = rmq.SimpleConsumer(
            self._broker._config,
            self.group,
            {topic: rmq.FilterExpression()},
            await_duration=self._broker._poll_s,
        )
        patches.telemetry_streams_on_the_io_thread(consumer)
        await self._broker._run(consumer.startup)
        await self._broker._run(patches.wait_for_settings, consumer, self._broker._request_s)
        return consumer

    async def _receive(self, consumer: Any, count: int) -> list[Any]:
        fut = await self._broker._run(consumer.receive_async, count, self._invisible)
        result: list[Any] = await asyncio.wrap_future(fut)
        return result

    async def _pump(self, topic: str, lane: int) -> None:
        try:
            await self._pump_loop(topic, lane)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer of the subscription
            err = self._broker._err(exc, f"consume {topic}")
            err.__cause__ = exc
            self._queue.put_nowait(err)

    async def _pump_loop(self, topic: str, lane: int) -> None:
        """Receive into the window. Lane 0 always polls; the other lanes only help while
        receives come back full, and leave failures to lane 0."""
        backoff = 0.2
        failures = 0
        held = self._held[topic]
        busy = self._busy[topic]
        bases = self._receive_bases[topic]
        while not self._closing:
            if lane:
                await busy.wait()
            while len(held) + self._reserved[topic] >= self.window and not self._closing:
                self._room.clear()
                await self._room.wait()
            if self._closing:
                break
            count = min(self.window - len(held) - self._reserved[topic], _RECEIVE_BATCH)
            self._reserved[topic] += count
            consumer = self._consumers[topic]
            base: list[int] = []
            started = time.monotonic()
            try:
                if self._broker._admin is not None:
                    # backlog() counts from here while the receive is in flight: the
                    # broker moves the group's offset before the messages reach us.
                    base.append((await self._offsets(topic, fresh=False))[1])
                    bases.extend(base)
                asked = time.monotonic()
                messages = await self._receive(consumer, count)
                if log.isEnabledFor(logging.DEBUG):  # with the timer trail: a stalled pump or a held message
                    log.debug("receive on %s (lane %d): %d of %d in %.3f s, after %.3f s reading offsets",
                              topic, lane, len(messages), count, time.monotonic() - asked, asked - started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried or surfaced below
                if base:
                    bases.remove(base[0])
                if self._closing:
                    break
                if lane:
                    busy.clear()
                    log.debug("RocketMQ receive on %s failed: %s", topic, exc)
                    continue
                if is_not_found(exc):
                    missing = ConfigurationError(
                        f"RocketMQ consumer group {self.group!r} or topic {topic!r} does not exist. "
                        "Give RocketMQBroker namesrv= so nova creates them, or run: mqadmin "
                        f"updateSubGroup -n <namesrv> -c <cluster> -g {self.group}"
                    )
                    missing.__cause__ = exc
                    self._queue.put_nowait(missing)
                    return
                if is_auth_failure(exc):
                    err = self._broker._err(exc, f"receive {topic}")
                    err.__cause__ = exc
                    self._queue.put_nowait(err)
                    return
                failures += 1
                log.warning("RocketMQ receive on %s failed (retrying): %s", topic, self._broker._err(exc, "receive"))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if failures >= 3 or lost_settings(exc):
                    # After a proxy restart the client's settings stream stays dead for
                    # minutes: start a fresh consumer (the old one still acks what it gave).
                    try:
                        consumer = await self._new_consumer(topic)
                    except Exception as rebuild_exc:  # noqa: BLE001 - retried on the next round
                        log.warning("RocketMQ consumer restart on %s failed: %s", topic,
                                    self._broker._err(rebuild_exc, "consumer restart"))
                    else:
                        self._retired.append(self._consumers[topic])
                        self._consumers[topic] = consumer
                        failures = 0
                continue
            finally:
                self._reserved[topic] -= count
                # What the receive did not fill is room again: a lane waiting for room asks
                # for it (the messages it got join `held` before that lane runs). Acks alone
                # would not do: after a helping lane's short receive, lane 0 could wait for
                # an ack that never comes (a batch waiting for its last task holds the rest).
                self._room.set()
            backoff = 0.2
            failures = 0
            if base:
                bases.remove(base[0])  # (the messages are counted in _buffered below)
            if len(messages) >= count:
                busy.set()
            else:
                busy.clear()
            now = time.time()
            for native in messages:
                delivery = self._wrap(topic, native, consumer, now, asked)
                if self._closing:
                    await self._give_back(delivery)
                    continue
                held.add(delivery)
                self._buffered[topic] += 1
                self._queue.put_nowait(delivery)

    def _wrap(self, topic: str, native: Any, consumer: Any, now: float, asked: float) -> _Delivery:
        """``now``: the time of the receive's answer (epoch); ``asked``: of its request (monotonic)."""
        props = native.properties or {}
        headers = {k: (v[1:] if v.startswith(_HEADER_MARK) else v) for k, v in props.items()}
        # store_timestamp has no public accessor in the client; born_timestamp is whole seconds.
        # Timer messages are stored again when due, so their store time is the due time.
        stored = None if native.delivery_timestamp else patches.store_timestamp(native)
        stamp = stored or native.born_timestamp or now * 1000
        if native.delivery_timestamp and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "timer message %s received on %s by %s, %.3f s after it was due",
                native.message_id,
                topic,
                self.group,
                now - native.delivery_timestamp / 1000.0,
            )
        return _Delivery(
            topic=topic,
            body=bytes(native.body or b""),
            headers=headers,
            published_at=stamp / 1000.0,
            _sub=self,
            _native=native,
            _consumer=consumer,
            # counted from the request: the broker starts the time when it answers
            _visible_until=asked + self._invisible,
            _deadline=asked + self._consume_s,
        )

    async def _renew(self) -> None:
        """Extend the invisible time of held deliveries, sweep by sweep (see ``_plan_renewals``)."""
        slots = asyncio.Semaphore(_RENEWALS_IN_FLIGHT)
        while not self._closing:
            if self._renew_failures:
                failures, self._renew_failures = self._renew_failures, []
                log.warning(
                    "RocketMQ could not extend the invisible time of %d held task(s) (tried again while "
                    "time is left): %s", len(failures), self._broker._err(failures[0], "renew"),
                )
            now = time.monotonic()
            held = (d for deliveries in self._held.values() for d in deliveries)
            extend, lapsed = _plan_renewals(held, now, self._invisible)
            self._report_lapsed(lapsed)
            for d, seconds in extend:
                d._renewal = task = asyncio.create_task(self._extend(d, seconds, slots))
                self._renewing.add(task)
                task.add_done_callback(self._renewing.discard)
            await asyncio.sleep(_RENEW_EVERY)

    def _report_lapsed(self, lapsed: list[_Delivery]) -> None:
        timed_out = [d for d in lapsed if d._deadline - d._visible_until < 2]  # ran out at its deadline
        if timed_out:
            log.warning(
                "RocketMQ gives %d task(s) on %s back to group %s: held for consume_timeout (%g s) without an "
                "ack or nack, so the group gets them again (raise consume_timeout for handlers that take longer)",
                len(timed_out), ", ".join(sorted({d.topic for d in timed_out})), self.group, self._consume_s,
            )
        if len(timed_out) < len(lapsed):
            log.warning(
                "RocketMQ gives %d held task(s) back to group %s: their invisible time could not be extended, "
                "so the group gets them again", len(lapsed) - len(timed_out), self.group,
            )

    async def _extend(self, d: _Delivery, seconds: int, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                if d._done:
                    return
                sent = time.monotonic()
                request = patches.change_invisible_request(self.group, self._broker.namespace, d._native, seconds)
                await patches.change_invisible(d._consumer, d._native, request, timeout=self._broker._request_s)
                d._visible_until = sent + seconds
        except Exception as exc:  # noqa: BLE001 - reported by the next sweep, which tries again
            self._renew_failures.append(exc)
        finally:
            d._renewal = None

    async def _change(self, d: _Delivery, seconds: int) -> bool:
        """Change ``d``'s invisible time (0: give it back now); False if it had run out already."""
        if d._renewal is not None:
            await asyncio.wait([d._renewal])
        if d._lapsed or time.monotonic() >= d._visible_until:
            return False  # the group has it again; this receipt handle is spent
        request = patches.change_invisible_request(self.group, self._broker.namespace, d._native, seconds)
        await patches.change_invisible(d._consumer, d._native, request, timeout=self._broker._request_s)
        return True

    async def _give_back(self, d: _Delivery) -> None:
        try:
            await self._change(d, 0)
        except Exception:
            log.debug("RocketMQ give-back failed", exc_info=True)

    async def _settle(self, d: _Delivery, *, ack: bool) -> None:
        if d._done:
            return
        d._done = True
        held = self._held[d.topic]
        if ack:
            held.discard(d)
            self._room.set()
            if not self._closed.is_set():  # (else already given back at close)
                self._ack_pending.append(d)
                self._ack_wake.set()
            return
        try:
            if self._closed.is_set():
                return  # already given back at close
            await self._change(d, 0)  # (False: it ran out; the group has it again anyway)
        except Exception as exc:
            d._done = False
            raise self._broker._err(exc, "nack") from exc
        finally:
            if d._done:
                held.discard(d)
                self._room.set()

    async def _ack_loop(self) -> None:
        """Send pending acks in batches until close() has stopped it and none are left."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._ack_pending:
                    if self._acks_stop:
                        break
                    self._ack_wake.clear()
                    await self._ack_wake.wait()
                    continue
                while len(in_flight) >= _ACKS_IN_FLIGHT:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                pending, self._ack_pending = self._ack_pending, []
                batches: dict[tuple[int, str], list[_Delivery]] = {}
                for d in pending:
                    batches.setdefault((id(d._consumer), d._native.topic), []).append(d)
                for batch in batches.values():
                    for i in range(0, len(batch), _ACK_BATCH):
                        task = asyncio.create_task(self._send_acks(batch[i : i + _ACK_BATCH]))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _send_acks(self, batch: list[_Delivery]) -> None:
        """One AckMessage request for deliveries of one consumer and topic (retried a little)."""
        consumer, first = batch[0]._consumer, batch[0]._native
        renewing = [d._renewal for d in batch if d._renewal is not None]
        if renewing:
            await asyncio.wait(renewing)  # (the ack needs the receipt handle the renewal gives)
        req = patches.ack_request(self.group, self._broker.namespace, [d._native for d in batch])
        for attempt in range(1, _ACK_ATTEMPTS + 1):
            try:
                res = await patches.send_acks(consumer, req, first.endpoints, timeout=self._broker._request_s)
            except Exception as exc:  # noqa: BLE001 - retried, then logged: the broker redelivers
                if attempt == _ACK_ATTEMPTS:
                    log.warning(
                        "RocketMQ did not take %d acks on %s; they will be redelivered: %s",
                        len(batch),
                        first.topic,
                        self._broker._err(exc, "ack"),
                    )
                    return
                await asyncio.sleep(0.2 * attempt)
                continue
            code = res.status.code
            if code == _CODE_MULTIPLE_RESULTS:
                failed = [e for e in res.entries if e.status.code != _CODE_OK]
                now = time.monotonic()
                late = {d._native.message_id for d in batch if d._lapsed or now >= d._visible_until}
                if late and failed:
                    log.info(
                        "RocketMQ refused %d ack(s) on %s made after the task's invisible time ran out "
                        "(consume_timeout or failed renewals): the group gets those tasks again",
                        sum(e.message_id in late for e in failed),
                        first.topic,
                    )
                    failed = [e for e in failed if e.message_id not in late]
                if failed:
                    log.warning(
                        "RocketMQ refused %d of %d acks on %s (they will be redelivered): %s",
                        len(failed),
                        len(batch),
                        first.topic,
                        failed[0].status.message,
                    )
            elif code != _CODE_OK:
                log.warning(
                    "RocketMQ refused %d acks on %s (they will be redelivered): %s %s",
                    len(batch),
                    first.topic,
                    code,
                    res.status.message,
                )
            return

    async def _offsets(self, topic: str, *, fresh: bool) -> tuple[int, int]:
        """The admin's ``offsets`` of ``topic``, one read shared by the callers that wait for it.

        ``fresh`` callers only share a read that starts after they asked (so a
        task published before the call is counted); the others take any read
        on its way.
        """
        read = self._reads_running.get(topic)
        if read is None:
            read = self._start_read(topic, None)
        elif fresh:
            read = self._reads_queued.get(topic) or self._start_read(topic, read)
        return await asyncio.shield(read)

    def _start_read(self, topic: str, after: asyncio.Future[tuple[int, int]] | None) -> asyncio.Future[tuple[int, int]]:
        admin = self._broker._admin
        assert admin is not None

        async def read() -> tuple[int, int]:
            if after is not None:
                await asyncio.wait([after])
                if self._reads_queued.get(topic) is task:
                    del self._reads_queued[topic]
                self._reads_running[topic] = task
            by_queue = await admin.queue_offsets(topic, self.group)
            # The broker counts a message in its queue's max offset only once it has
            # dispatched it (a moment after confirming the send): what this process
            # published is counted from the send receipts already.
            published = self._broker._published.get(topic, {})
            written = sum(max(high, published.get(queue, 0)) for queue, (high, _) in by_queue.items())
            return written, sum(received for _, received in by_queue.values())

        task = asyncio.ensure_future(read())
        (self._reads_running if after is None else self._reads_queued)[topic] = task

        def forget(done: asyncio.Future[tuple[int, int]]) -> None:
            for reads in (self._reads_running, self._reads_queued):
                if reads.get(topic) is done:
                    del reads[topic]
            if not done.cancelled():
                done.exception()  # retrieved here; each caller still gets it raised

        task.add_done_callback(forget)
        return task

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            if self._closing and self._queue.empty():
                return
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._buffered[item.topic] -= 1
            if item._done:
                continue
            yield item

    async def backlog(self, topic: str) -> int:
        """Received but not yet handed out, plus (given ``namesrv``) what the group has not popped."""
        local = max(self._buffered.get(topic, 0), 0)
        admin = self._broker._admin
        if admin is None or self._closing or topic not in self._held:
            return local
        try:
            written, received = await self._offsets(topic, fresh=True)
        except NovaError as exc:
            log.debug("RocketMQ backlog of %s unknown: %s", topic, exc)
            return local
        bases = self._receive_bases.get(topic)
        if bases:
            received = min(received, *bases)
        return max(self._buffered.get(topic, 0), 0) + max(written - received, 0)

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._room.set()
        for busy in self._busy.values():
            busy.set()
        # Let in-flight receives finish (each waits at most poll_seconds) so their messages go back too.
        pumps = self._tasks[:-1]
        renew = self._tasks[-1:] if self._tasks else []
        for task in renew:
            task.cancel()
        if pumps:
            within = self._broker._poll_s + self._broker._request_s + 1
            _, pending = await asyncio.wait(pumps, timeout=within)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, *self._renewing, return_exceptions=True)
        self._acks_stop = True  # send what was acked before giving the rest back
        self._ack_wake.set()
        if self._ack_task is not None:
            await asyncio.gather(self._ack_task, return_exceptions=True)
        for read in [*self._reads_running.values(), *self._reads_queued.values()]:
            read.cancel()
        unacked = [d for held in self._held.values() for d in held if not d._done]
        await asyncio.gather(*(self._give_back(d) for d in unacked))
        for held in self._held.values():
            held.clear()
        self._closed.set()
        await self._shutdown_consumers()
        self._queue.put_nowait(None)
        self._broker._subscriptions.discard(self)

    async def _shutdown_consumers(self) -> None:
        consumers = list(self._consumers.values()) + self._retired
        self._consumers.clear()
        self._retired.clear()
        await asyncio.gather(*(self._broker._shut_down(c) for c in consumers))
