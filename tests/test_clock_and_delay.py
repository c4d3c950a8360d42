"""VirtualClock behaviour and the delay-tier cascade."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nova
from nova._broker import Message
from nova._delay import DelayTiers, Router
from nova._envelope import H
from nova.sim import SimBroker, VirtualClock
from tests.fuzzing import FUZZ_SCALE


async def test_virtual_clock_wakes_sleepers_in_order_at_their_deadlines() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []
    t0 = clock.time()

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.time() - t0))

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("c", 30), ("a", 1), ("b", 7.5))]
    await clock.advance(timedelta(seconds=10))
    assert woke == [("a", 1), ("b", 7.5)]
    await clock.advance(timedelta(days=1))
    assert woke[-1] == ("c", 30)
    assert clock.time() - t0 == 86410
    await asyncio.gather(*tasks)


async def test_virtual_clock_refuses_to_go_back_and_naive_starts() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="aware"):
        VirtualClock(datetime(2030, 1, 1))
    assert VirtualClock(datetime(2031, 5, 1, tzinfo=UTC)).now() == datetime(2031, 5, 1, tzinfo=UTC)


async def test_advance_waits_for_threads_started_through_run_sync() -> None:
    clock = VirtualClock()
    done: list[int] = []

    def blocking() -> int:
        time.sleep(0.05)  # real work in a thread; advance must wait for it
        return 7

    async def job() -> None:
        done.append(await clock.run_sync(blocking))

    fut = asyncio.ensure_future(job())
    await clock.advance(timedelta(0))
    assert done == [7]
    await fut


async def test_handlers_sleeping_in_virtual_time_take_no_wall_time() -> None:
    clock = VirtualClock()
    broker = SimBroker(clock=clock)
    queue = nova.TaskQueue(broker)
    finished: list[float] = []

    async def handler(task: nova.Task) -> None:
        await clock.sleep(3600)
        finished.append(clock.time())

    await queue.enqueue(nova.Task("t", b""))
    await queue.start(handler)
    wall = time.monotonic()
    await clock.advance(timedelta(hours=1))
    assert len(finished) == 1
    assert time.monotonic() - wall < 5
    await queue.stop()


@given(remaining=st.floats(min_value=0.0005, max_value=90 * 86400).filter(lambda r: r < 1e6),
       count=st.integers(min_value=1, max_value=30),
       longest=st.integers(min_value=1, max_value=7200))
@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
def test_cascade_reaches_eta_exactly_never_early(remaining: float, count: int, longest: int) -> None:
    if longest / 2 ** (count - 1) < 0.0001:
        with pytest.raises(nova.ConfigurationError, match=r"at least 0\.1 ms"):
            DelayTiers(count, timedelta(seconds=longest))
        return
    tiers = DelayTiers(count, timedelta(seconds=longest))
    if remaining / longest > 2000:  # keep the walk short; long delays are just more longest-tier hops
        remaining = remaining % (2000 * longest) + 0.0005
    now = 1.9e9  # epoch-sized times, as in production
    eta = now + remaining
    hops = 0
    while True:
        left = eta - now
        if left <= 0:
            break
        tier = tiers.pick(left)
        hold = min(now + tiers.seconds(tier), eta)
        assert hold > now  # always progress
        assert hold <= eta  # a hop never carries a task past its eta
        now = hold
        hops += 1
        assert hops <= count + int(remaining // longest) + 2
    assert now == pytest.approx(eta)


async def test_router_uses_the_largest_tier_that_fits() -> None:
    clock = VirtualClock()
    broker = SimBroker(clock=clock)
    router = Router(broker, clock, "p", DelayTiers(4, timedelta(seconds=8)))  # 8, 4, 2, 1
    now = clock.time()
    msg = router.route("p_q_normal", b"", {H.ETA: "0"}, None, now + 5)
    assert msg.topic == "p__delay01"  # 4 s tier
    assert float(msg.headers[H.HOLD_UNTIL]) == now + 4
    assert msg.headers[H.TARGET] == "p_q_normal"
    ready = router.route("p_q_normal", b"", {H.TARGET: "x", H.HOLD_UNTIL: "1"}, None, now)
    assert ready.topic == "p_q_normal" and H.TARGET not in ready.headers
    tiny = router.route("p_q_normal", b"", {}, None, now + 0.1)
    assert tiny.topic == "p__delay03" and float(tiny.headers[H.HOLD_UNTIL]) == now + 0.1
    await broker.close()


async def test_a_broker_bound_on_holds_keeps_longer_tiers_out_of_the_cascade() -> None:
    clock = VirtualClock()
    broker = SimBroker(clock=clock, delay_hold_max=timedelta(minutes=15))
    router = Router(broker, clock, "p", DelayTiers())  # 1 h, 30 min, 15 min, ...
    now = clock.time()
    long = router.route("p_q_normal", b"", {}, None, now + 7200)
    assert long.topic == "p__delay02" and float(long.headers[H.HOLD_UNTIL]) == now + 900
    assert router.route("p_q_normal", b"", {}, None, now + 600).topic == "p__delay03"  # 7.5 min
    queue = nova.TaskQueue(broker, topic_prefix="q")
    assert len(broker.delay_tiers) == 24  # told, as RabbitMQ is
    ran: list[float] = []

    async def handler(task: nova.Task) -> None:
        ran.append(clock.time())

    await queue.start(handler)
    result = await queue.enqueue(nova.Task("t", b""), process_in=timedelta(hours=2))
    assert result.eta is not None
    for _ in range(8):  # eight 15-min hops
        assert broker.depth("q__delay00") == broker.depth("q__delay01") == 0
        assert broker.depth("q__delay02") == 1
        await clock.advance(timedelta(minutes=15))
    await clock.settle()
    assert ran == [result.eta.timestamp()]
    await queue.stop()


async def test_a_tier_message_arriving_behind_later_ones_goes_out_at_its_own_time() -> None:
    # What a dead forwarder held comes again behind messages due later (RabbitMQ requeues it).
    clock = VirtualClock()
    broker = SimBroker(clock=clock)
    queue = nova.TaskQueue(broker, topic_prefix="o", delay_slots=(4, timedelta(seconds=8)))
    ran: dict[bytes, float] = {}

    async def handler(task: nova.Task) -> None:
        ran[task.payload] = clock.time()

    await queue.start(handler)
    now = clock.time()
    tier = "o__delay00"  # the 8 s tier

    def hop(payload: bytes, due: float) -> Message:
        headers = {H.ID: payload.decode(), H.TYPE: "t", H.QUEUE: "default", H.PRIORITY: "1",
                   H.ATTEMPT: "1", H.ETA: str(int(due * 1000)), H.TARGET: "o_default_normal",
                   H.HOLD_UNTIL: repr(due), H.CONTENT_TYPE: "application/octet-stream"}
        return Message(tier, payload, headers)

    await broker.publish([hop(b"late", now + 8)])
    await clock.advance(timedelta(seconds=1))
    await broker.publish([hop(b"early", now + 2)])  # a redelivery: due before the one ahead of it
    await clock.advance(timedelta(seconds=10))
    assert ran == {b"early": now + 2, b"late": now + 8}
    await queue.stop()


async def test_a_start_that_fails_leaves_nothing_consuming_and_may_be_retried() -> None:
    class ForwarderRefused(SimBroker):
        refuse = True

        async def subscribe(self, topics, *, group, window):  # type: ignore[no-untyped-def]
            if self.refuse and group.endswith("__forwarder"):
                raise nova.ConnectionError("the forwarder's group cannot be joined")
            return await super().subscribe(topics, group=group, window=window)

    clock = VirtualClock()
    broker = ForwarderRefused(clock=clock)
    queue = nova.TaskQueue(broker)
    handled: list[str] = []

    async def handle(task: nova.Task) -> None:
        handled.append(task.type)

    await queue.enqueue(nova.Task("early", b""))
    with pytest.raises(nova.ConnectionError, match="forwarder"):
        await queue.start(handle)
    assert queue.worker is None
    await clock.advance(timedelta(seconds=5))
    assert handled == []  # the worker that did join was stopped: the task waits
    broker.refuse = False
    await queue.start(handle)  # and start() can be called again
    await clock.advance(timedelta(seconds=5))
    assert handled == ["early"]
    await queue.stop()
