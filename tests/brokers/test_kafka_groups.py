"""Kafka consumer groups with several members (``--broker kafka``): joining, settling, and how
the partitions of each topic spread over the members.

Members that must start at the same moment run in subprocesses (``GroupMembers``): each
process holds one member of every group under test, reports what it owns as JSON lines,
and subscribes when the test says "go" on its stdin. Waits are conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nova.brokers.kafka import _aiokafka_internals as aiokafka_internals
from nova.brokers.kafka._subscription import KafkaSubscription
from tests.brokers.test_kafka import PATIENCE, Factory, Names, _now, eventually

pytestmark = pytest.mark.broker("kafka")

ROOT = Path(__file__).resolve().parents[2]

MEMBER = '''\
"""One member of each group in argv; reports its assignments until stdin closes."""
import asyncio, json, os, sys
from nova.brokers.kafka import KafkaBroker
from nova.brokers.kafka import _aiokafka_internals as internals

groups, topics, partitions = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])


async def main():
    broker = KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"], partitions=partitions)
    await broker.ensure_topics([t for ts in topics.values() for t in ts])
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    subs = await asyncio.gather(*(broker.subscribe(topics[g], group=g, window=16) for g in groups))
    closed = loop.run_in_executor(None, sys.stdin.readline)  # EOF: stop
    while not closed.done():
        report = {sub.group: {"synced": sub._generation, "joined": internals.group_generation(sub._consumer),
                              "owned": sorted([tp.topic, tp.partition] for tp, s in sub._parts.items() if s.assigned)}
                  for sub in subs}
        print(json.dumps(report), flush=True)
        await asyncio.wait([closed], timeout=0.1)
    await broker.close()

asyncio.run(main())
'''


class GroupMembers:
    """``count`` processes, each one member of every group in ``topics`` (group -> its topics)."""

    def __init__(self, directory: Path, count: int, topics: dict[str, list[str]], partitions: int) -> None:
        script = directory / "kafka_member.py"
        script.write_text(MEMBER)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.topics = topics
        self.partitions = partitions
        self.procs = [
            subprocess.Popen([sys.executable, str(script), json.dumps(list(topics)), json.dumps(topics),
                              str(partitions)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            for _ in range(count)
        ]
        self.last: list[dict[str, Any]] = [{} for _ in self.procs]
        self.reports = [0 for _ in self.procs]
        self.ready = [False for _ in self.procs]
        self.partial = [b"" for _ in self.procs]

    def read(self, within: float) -> None:
        """Take in every line the members have printed, waiting up to ``within`` s for one."""
        fds = {p.stdout.fileno(): i for i, p in enumerate(self.procs) if p.stdout is not None}
        ready, _, _ = select.select(list(fds), [], [], within)
        for fd in ready:
            i = fds[fd]
            chunk = os.read(fd, 1 << 16)
            assert chunk, f"member {i} exited ({self.procs[i].wait()})"
            *lines, self.partial[i] = (self.partial[i] + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    self.last[i] = json.loads(line)
                    self.reports[i] += 1
                elif line == b"ready":
                    self.ready[i] = True

    def wait_until(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: not within {within:g} s; last reports {self.last}"
            self.read(0.2)

    def go(self) -> None:
        """Wait until every member is connected, then let all of them join at once."""
        self.wait_until(lambda: all(self.ready), PATIENCE * 2, "every member connected")
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def settled(self, group: str) -> bool:
        """Every member synced the generation it joined, the same one, and the group's
        partitions are each owned by exactly one member."""
        reports = [last.get(group) for last in self.last]
        if any(r is None for r in reports):
            return False
        generations = {(r["synced"], r["joined"]) for r in reports if r is not None}
        owned = [tuple(tp) for r in reports if r is not None for tp in r["owned"]]
        everything = {(t, p) for t in self.topics[group] for p in range(self.partitions)}
        return len(generations) == 1 and len(owned) == len(set(owned)) and set(owned) == everything

    def generation(self, group: str) -> int:
        return int(self.last[0][group]["synced"])

    def owned(self, group: str) -> list[list[tuple[str, int]]]:
        return [[(t, p) for t, p in last[group]["owned"]] for last in self.last]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def kafka_members(tmp_path: Path, kafka_env: dict[str, str]) -> Any:
    made: list[GroupMembers] = []

    def start(count: int, topics: dict[str, list[str]], partitions: int) -> GroupMembers:
        members = GroupMembers(tmp_path, count, topics, partitions)
        made.append(members)
        return members

    yield start
    for members in made:
        members.close()


def levels(prefix: str) -> list[str]:
    return [f"{prefix}_q_{level}" for level in ("high", "normal", "low")]


async def test_a_lone_member_joins_in_one_generation(kafka_broker: Factory, kafka_name: Names) -> None:
    """One JoinGroup per join: a member that sent one per assignor (each with another protocol
    list) made Kafka start a second rebalance right after the first, on every join."""
    topic, group = kafka_name("t"), kafka_name("g")
    sub = await kafka_broker().subscribe([topic], group=group, window=1)
    assert aiokafka_internals.group_generation(sub._consumer) == 1
    assert sub._generation == 1


def test_members_joining_at_the_same_moment_settle_and_stay_settled(kafka_members: Any) -> None:
    """Three processes, each a member of eight groups (three two-partition topics each), all
    subscribing at once: every group settles (one generation synced by all, each partition
    owned once) and stays at that generation while the members report ~20 more times."""
    run = uuid.uuid4().hex[:8]
    topics = {f"settle-{run}-{i}": levels(f"settle-{run}-{i}") for i in range(8)}
    members = kafka_members(3, topics, 2)
    members.go()
    members.wait_until(lambda: all(members.settled(g) for g in topics), 2 * PATIENCE, "every group settled")
    generations = {g: members.generation(g) for g in topics}
    seen = list(members.reports)
    members.wait_until(lambda: all(n >= s + 20 for n, s in zip(members.reports, seen, strict=True)),
                       PATIENCE, "twenty more reports from every member")
    assert {g: members.generation(g) for g in topics} == generations
    assert all(members.settled(g) for g in topics)
    for group in topics:  # two partitions per topic, three members: no member holds both of one
        for owned in members.owned(group):
            assert len(owned) == 2 and len({t for t, _ in owned}) == 2, members.owned(group)


async def test_a_second_member_gets_a_partition_of_every_level(kafka_broker: Factory, kafka_name: Names) -> None:
    """The first member holds all six partitions of three levels; once a second one joins,
    each holds one partition of each level."""
    topics, group = levels(kafka_name("lv")), kafka_name("g")
    first = await kafka_broker(partitions=2).subscribe(topics, group=group, window=1)
    assert sorted(tp.topic for tp in first._parts) == sorted(topics * 2)
    second = await kafka_broker(partitions=2).subscribe(topics, group=group, window=1)

    def one_of_each(sub: KafkaSubscription) -> bool:
        return sorted(tp.topic for tp, state in sub._parts.items() if state.assigned) == sorted(topics)

    await eventually(lambda: _now(one_of_each(first) and one_of_each(second)))


async def test_ready_topics_get_twelve_partitions_by_default_delay_tiers_and_dead_letters_one(
    kafka_env: dict[str, str], kafka_name: Names
) -> None:
    import nova

    prefix = kafka_name("dflt").replace("_", "-")
    broker = nova.KafkaBroker(kafka_env["NOVA_KAFKA_BOOTSTRAP"])  # the library's default
    queue = nova.TaskQueue(broker, topic_prefix=prefix, close_broker=True)
    try:
        await queue.enqueue(nova.Task("t", b"x"), process_in=3600)  # ensures the ready and tier topics
        assert await broker.partitions_of(f"{prefix}_default_normal") == 12
        assert {await broker.partitions_of(t) for t in queue.router.tier_topics} == {1}
        await broker.ensure_topics([f"{prefix}_default_dlq_normal"])
        assert await broker.partitions_of(f"{prefix}_default_dlq_normal") == 1
        assert await broker.partitions_of(f"{prefix}_no_such_topic") is None
    finally:
        await queue.stop()
    url = nova.KafkaBroker.from_url(f"kafka://{kafka_env['NOVA_KAFKA_BOOTSTRAP']}?partitions=3")
    try:
        topic = kafka_name("three")
        await url.ensure_topics([topic])
        assert await url.partitions_of(topic) == 3
    finally:
        await url.close()
