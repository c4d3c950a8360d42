"""nova on a two-broker RocketMQ cluster while a broker fails (``--broker rocketmq --cluster``).

    python tools/brokers.py up rocketmq --nodes 2
    eval "$(python tools/brokers.py env rocketmq --nodes 2)"
    pytest tests/brokers/test_rocketmq_cluster.py --broker rocketmq --cluster

The brokers do not replicate each other: while one is down, producers go on with the
other (after the proxy's next route refresh; until then nova refuses the enqueues that
would land on it, and the caller retries), and what the stopped broker holds waits for
its return. Nothing confirmed is lost. Waits are conditions with deadlines.
"""

from __future__ import annotations

import os

import pytest

import nova
from tests.brokers._cluster import Stream, eventually, harness, require_cluster

pytestmark = [pytest.mark.broker("rocketmq"), pytest.mark.cluster]


@pytest.fixture
def cluster() -> dict[str, str]:
    return require_cluster("rocketmq", ("NOVA_ROCKETMQ_ENDPOINTS", "NOVA_ROCKETMQ_NAMESRV"), nodes=2)


def make_broker() -> nova.RocketMQBroker:
    env = os.environ
    kwargs: dict[str, object] = {"namesrv": env["NOVA_ROCKETMQ_NAMESRV"]}
    if env.get("NOVA_ROCKETMQ_ACCESS_KEY"):
        kwargs["auth"] = (env["NOVA_ROCKETMQ_ACCESS_KEY"], env["NOVA_ROCKETMQ_SECRET_KEY"])
        kwargs["admin_auth"] = (env["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"], env["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"])
    return nova.RocketMQBroker(env["NOVA_ROCKETMQ_ENDPOINTS"], **kwargs)  # type: ignore[arg-type]


async def masters(cluster: dict[str, str]) -> list[str]:
    auth = None
    if os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"):
        auth = (os.environ["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"], os.environ["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"])
    admin = nova.RocketMQAdmin(cluster["NOVA_ROCKETMQ_NAMESRV"], auth=auth)
    try:
        return await admin.master_brokers()
    finally:
        await admin.aclose()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_stopping_a_broker_mid_stream_loses_nothing(cluster: dict[str, str], how: str) -> None:
    count = int(cluster["NOVA_ROCKETMQ_NODES"])
    assert len(await masters(cluster)) == count  # the topics get queues on every broker
    stream = Stream(make_broker)
    try:
        await stream.start()
        await eventually(lambda: len(stream.handled) >= 200, "the worker handles the first 200 tasks")
        await harness("stop-node", "rocketmq", "2", *(["--kill"] if how == "kill" else []))
        try:
            mark = len(stream.confirmed)
            await eventually(lambda: len(stream.confirmed) >= mark + 300,
                             "the producer goes on enqueueing on the other broker")
            assert len(await masters(cluster)) == count - 1
        finally:
            await harness("start-node", "rocketmq", "2")
        mark = len(stream.confirmed)
        await eventually(lambda: len(stream.confirmed) >= mark + 100, "enqueueing goes on after the broker's return")
        await stream.stop_producing()
        # Including what waited on the stopped broker.
        await eventually(lambda: not stream.lost(), "the worker handles every confirmed task")
    finally:
        await stream.close()
    duplicates = sum(n - 1 for n in stream.handled.values())
    print(f"{how}: {len(stream.confirmed)} confirmed, {len(stream.handled)} handled, {duplicates} duplicates, "
          f"{stream.refused} refused enqueue calls, slowest enqueue {stream.longest_wait:.1f} s")
    assert not stream.lost()
