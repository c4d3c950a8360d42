"""Simulation: a faithful in-memory broker on a virtual clock, for tests and fuzzing.

    from nova.sim import SimBroker, VirtualClock

    clock = VirtualClock()
    broker = SimBroker(clock=clock, seed=0)
    async with nova.TaskQueue(broker) as queue:
        await queue.enqueue(nova.Task("email", b"hi"), process_in=timedelta(days=30))
        await queue.start(handle)
        await clock.advance(timedelta(days=30))   # milliseconds of wall time
"""

from nova.sim._broker import SimBroker, SimDelivery, SimSubscription
from nova.sim._clock import VirtualClock

__all__ = ["SimBroker", "SimDelivery", "SimSubscription", "VirtualClock"]
