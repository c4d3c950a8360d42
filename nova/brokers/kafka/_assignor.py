"""The sticky partition assignor of nova's consumer groups."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

if TYPE_CHECKING:
    from nova.brokers.kafka._subscription import KafkaSubscription


class _StickyAssignor:
    """Keeps partitions with their owners across rebalances, spreads each topic's partitions
    over the members, and moves busy partitions last.

    aiokafka rebalances eagerly: a member joining makes every member give back all its
    partitions, and round-robin may hand a partition to a new member while the old owner
    still holds deliveries from it (the delay forwarder holds them until due). The new
    owner would read them again from the committed offset: duplicates. Here each member
    sends what it owned and how many unacked deliveries each has (``user_data``), and the
    leader, in this order:

    1. keeps every partition with its owner;
    2. gives each unowned partition to the subscriber holding the fewest of its topic
       (then the fewest in all);
    3. evens out each topic: its subscribers' counts of its partitions differ by at most
       one (a topic is a priority level of a queue: every member gets work of every level);
    4. evens out the members' totals where step 3 leaves a choice (single-partition topics,
       like the delay tiers, go to the least loaded).

    Steps 3 and 4 move idle partitions first and busy ones (fewest in flight first) only
    when idle ones cannot even things out, so a new member still gets work when every
    partition is busy.

    >>> from types import SimpleNamespace as NS
    >>> cluster = NS(partitions_for_topic=lambda topic: {0, 1})
    >>> meta = NS(subscription=["high", "low"], user_data=b"")
    >>> got = _StickyAssignor.assign(cluster, {"a": meta, "b": meta})
    >>> {m: a.assignment for m, a in sorted(got.items())}
    {'a': [('high', [0]), ('low', [0])], 'b': [('high', [1]), ('low', [1])]}
    """

    name = "nova-sticky"
    version = 0

    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    def metadata(self, topics: Any) -> Any:
        parts = self._sub._parts
        data = {
            # The generation settles a partition two members both claim (one was expelled).
            "generation": self._sub._generation,
            "owned": [[tp.topic, tp.partition] for tp in parts],
            "busy": [[tp.topic, tp.partition, state.held] for tp, state in parts.items() if state.held > 0],
        }
        return ConsumerProtocolMemberMetadata(self.version, list(topics), json.dumps(data).encode())

    def on_assignment(self, assignment: Any) -> None:
        pass

    @classmethod
    def assign(cls, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        plan = _Plan(cluster, members)
        plan.keep_owners()
        plan.place_unowned()
        plan.even_out_topics()
        plan.even_out_totals()
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, plan.by_topic(member), b"")
            for member in plan.members
        }


TP = tuple[str, int]


class _Plan:
    """One assignment being worked out (see ``_StickyAssignor``): who holds what, counted
    per member and per topic."""

    def __init__(self, cluster: Any, members: Mapping[str, Any]) -> None:
        self.members = sorted(members)
        self.subscribed = {m: set(members[m].subscription) for m in self.members}
        self.owner: dict[TP, str] = {}  # claimed owners (a claim of the latest generation wins)
        self.busy: dict[TP, int] = {}  # unacked deliveries the owner holds
        claims: dict[str, Any] = {}
        for member in self.members:
            try:
                claims[member] = json.loads(members[member].user_data or b"{}")
            except ValueError:
                claims[member] = {}
        for member in sorted(self.members, key=lambda m: (-int(claims[m].get("generation", -1)), m)):
            data = claims[member]
            for topic, partition in data.get("owned", ()):
                if topic in self.subscribed[member]:
                    self.owner.setdefault((topic, partition), member)
            for topic, partition, held in data.get("busy", ()):
                if self.owner.get((topic, partition)) == member:
                    self.busy[topic, partition] = int(held)
        self.topics = sorted(set().union(*self.subscribed.values())) if self.members else []
        self.partitions = {t: sorted(cluster.partitions_for_topic(t) or ()) for t in self.topics}
        self.subscribers = {t: [m for m in self.members if t in self.subscribed[m]] for t in self.topics}
        self.load: dict[str, set[TP]] = {m: set() for m in self.members}
        self.count: dict[str, dict[str, int]] = {t: dict.fromkeys(self.subscribers[t], 0) for t in self.topics}
        self.unowned: list[TP] = []

    def total(self, member: str) -> int:
        return len(self.load[member])

    def give(self, tp: TP, member: str, previous: str | None = None) -> None:
        if previous is not None:
            self.load[previous].discard(tp)
            self.count[tp[0]][previous] -= 1
        self.load[member].add(tp)
        self.count[tp[0]][member] += 1

    def keep_owners(self) -> None:
        for topic in self.topics:
            for partition in self.partitions[topic]:
                member = self.owner.get((topic, partition))
                if member is not None:
                    self.give((topic, partition), member)
                else:
                    self.unowned.append((topic, partition))

    def place_unowned(self) -> None:
        for tp in self.unowned:
            counts = self.count[tp[0]]
            self.give(tp, min(counts, key=lambda m: (counts[m], self.total(m), m)))

    def even_out_topics(self) -> None:
        for topic in self.topics:
            counts = self.count[topic]
            while counts:
                low = min(counts.values())
                if max(counts.values()) - low <= 1:
                    break
                top = max(counts.values())
                # The least busy partition any of the fullest members holds, to the emptiest
                # member (fewest in all first).
                tp, heavy = min(
                    ((tp, m) for m in counts if counts[m] == top for tp in self.load[m] if tp[0] == topic),
                    key=lambda pair: (self.busy.get(pair[0], 0), -self.total(pair[1]), pair[1], pair[0]),
                )
                light = min((m for m in counts if counts[m] == low), key=lambda m: (self.total(m), m))
                self.give(tp, light, heavy)

    def even_out_totals(self) -> None:
        # Each move lowers the sum of squared totals, so this ends; the bound is a backstop.
        for _ in range(sum(len(p) for p in self.partitions.values()) * max(1, len(self.members))):
            move = self._best_move()
            if move is None:
                return
            tp, heavy, light = move
            self.give(tp, light, heavy)

    def _best_move(self) -> tuple[TP, str, str] | None:
        """A partition to move from a member to one with at least two fewer, keeping every
        topic even (a topic's counts are k or k+1: only a member with k+1 gives to one with k);
        idle partitions first, from the most loaded member."""
        for heavy in sorted(self.members, key=lambda m: (-self.total(m), m)):
            candidates = [
                (self.busy.get(tp, 0), self.total(light), light, tp)
                for tp in self.load[heavy]
                for light in self.subscribers[tp[0]]
                if self.total(light) + 2 <= self.total(heavy)
                and self.count[tp[0]][heavy] > self.count[tp[0]][light]
            ]
            if candidates:
                _, _, light, tp = min(candidates)
                return tp, heavy, light
        return None

    def by_topic(self, member: str) -> list[tuple[str, list[int]]]:
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(self.load[member]):
            by_topic.setdefault(topic, []).append(partition)
        return sorted(by_topic.items())
