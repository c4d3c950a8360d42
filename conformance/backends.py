"""How the conformance suite reaches each backend.

``Backend`` says how to make brokers, how time moves, and what a backend can
promise. Real backends read their endpoints from the ``NOVA_*`` variables that
``python tools/brokers.py env`` prints; a missing variable is a failure, never
a skip.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from nova._broker import Broker
from nova._clock import Clock, SystemClock
from nova.sim import SimBroker, VirtualClock


def _require(var: str, broker: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"--broker {broker} needs {var}: run `python tools/brokers.py up {broker}` and "
            f'`eval "$(python tools/brokers.py env {broker})"` first',
            pytrace=False,
        )
    return value


@dataclass
class Backend:
    name: str
    clock: Clock
    make_broker: Callable[[], Broker]
    #: delay_slots used by the suite on this backend (seconds-scale on real brokers).
    delay_slots: tuple[int, timedelta]
    #: True when competing workers of one group each get part of the work.
    shares_work: bool = True
    #: Allowed lateness of a delayed task (0 on sim: exact).
    lateness: timedelta = timedelta(0)
    #: Upper bound for waiting on a condition.
    patience: timedelta = timedelta(seconds=30)
    brokers: list[Broker] = field(default_factory=list)

    @property
    def is_sim(self) -> bool:
        return self.name == "sim"

    def broker(self) -> Broker:
        b = self.make_broker()
        self.brokers.append(b)
        return b

    async def advance(self, delta: timedelta) -> None:
        """Move virtual time (sim only: real-broker tests wait on conditions instead)."""
        assert isinstance(self.clock, VirtualClock), "advance() is for the sim backend only"
        await self.clock.advance(delta)

    async def settle(self) -> None:
        if isinstance(self.clock, VirtualClock):
            await self.clock.advance(timedelta(0))

    async def wait_for(self, predicate: Callable[[], bool], within: timedelta | None = None) -> None:
        """Wait until ``predicate()`` holds; fail the test if it does not in time."""
        within = within or self.patience
        if isinstance(self.clock, VirtualClock):
            ok = await self.clock.run_until(predicate, within=within)
        else:
            deadline = time.monotonic() + within.total_seconds()
            # Any predicate, polled against a deadline (never a fixed sleep).
            while not (ok := predicate()) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert ok, f"condition not met within {within}"


def make_backend(name: str) -> Backend:
    if name == "sim":
        clock = VirtualClock()
        shared = SimBroker(clock=clock, seed=0)
        return Backend("sim", clock, lambda: shared, delay_slots=(24, timedelta(hours=1)),
                       patience=timedelta(hours=1))
    real_slots = (6, timedelta(seconds=4))
    if name == "kafka":
        from nova.brokers.kafka import KafkaBroker

        bootstrap = _require("NOVA_KAFKA_BOOTSTRAP", "kafka")
        # One partition per topic: the suite makes hundreds of topics on a broker that keeps them
        # (each partition costs it an open file and two memory maps), and with one partition
        # a group's members do not share a topic (shares_work=False).
        return Backend("kafka", SystemClock(), lambda: KafkaBroker(bootstrap, partitions=1), delay_slots=real_slots,
                       shares_work=False, lateness=timedelta(seconds=1))
    if name == "rabbitmq":
        from nova.brokers.rabbitmq import RabbitMQBroker

        url = _require("NOVA_RABBITMQ_URL", "rabbitmq")
        return Backend("rabbitmq", SystemClock(), lambda: RabbitMQBroker(url), delay_slots=real_slots,
                       lateness=timedelta(seconds=1))
    if name == "rocketmq":
        from nova.brokers.rocketmq import RocketMQBroker

        endpoints = _require("NOVA_ROCKETMQ_ENDPOINTS", "rocketmq")
        kwargs: dict[str, Any] = {"namesrv": _require("NOVA_ROCKETMQ_NAMESRV", "rocketmq")}
        if os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY"):
            kwargs["auth"] = (os.environ["NOVA_ROCKETMQ_ACCESS_KEY"], os.environ["NOVA_ROCKETMQ_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"):
            kwargs["admin_auth"] = (os.environ["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"],
                                    os.environ["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS"):  # the broker's timerPrecisionMs
            kwargs["timer_precision"] = timedelta(milliseconds=int(os.environ["NOVA_ROCKETMQ_TIMER_PRECISION_MS"]))
        return Backend("rocketmq", SystemClock(), lambda: RocketMQBroker(endpoints, **kwargs),
                       delay_slots=real_slots, lateness=timedelta(milliseconds=1500))
    raise ValueError(f"unknown backend {name!r}")
