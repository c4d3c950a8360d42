"""Fixtures of the sim tests under tests/: a virtual clock and a SimBroker on it."""

from __future__ import annotations

import pytest

from nova.sim import SimBroker, VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def broker(clock: VirtualClock) -> SimBroker:
    return SimBroker(clock=clock, seed=0)
