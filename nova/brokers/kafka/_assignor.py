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
    """Keeps partitions with their owners across rebalances; moves busy ones last.

    aiokafka rebalances eagerly: a member joining makes every member give back all its
    partitions, and round-robin may hand a partition to a new member while the old owner
    still holds deliveries from it (the delay forwarder holds them until due). The new
    owner would read them again from the committed offset: duplicates. Here each member
    sends what it owned and how many unacked deliveries each has (``user_data``); the
    leader keeps every partition with its owner, gives unowned ones to the least loaded
    subscriber, then evens out counts moving idle partitions first and busy ones (fewest
    in flight first) only when idle ones cannot balance the load, so a new member still
    gets work when every partition is busy.
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
        subscribed = {m: set(meta.subscription) for m, meta in members.items()}
        owned: dict[tuple[str, int], str] = {}
        busy: dict[tuple[str, int], int] = {}
        claims: dict[str, Any] = {}
        for member in members:
            try:
                claims[member] = json.loads(members[member].user_data or b"{}")
            except ValueError:
                claims[member] = {}
        for member in sorted(members, key=lambda m: (-int(claims[m].get("generation", -1)), m)):
            data = claims[member]
            for topic, partition in data.get("owned", ()):
                if topic in subscribed[member]:
                    owned.setdefault((topic, partition), member)
            for topic, partition, held in data.get("busy", ()):
                if owned.get((topic, partition)) == member:
                    busy[topic, partition] = int(held)
        everything: list[tuple[str, int]] = []
        for topic in sorted(set().union(*subscribed.values())):
            everything += [(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        load: dict[str, list[tuple[str, int]]] = {m: [] for m in members}
        unowned = []
        for tp in everything:
            if tp in owned:
                load[owned[tp]].append(tp)
            else:
                unowned.append(tp)
        for tp in unowned:
            candidates = [m for m in sorted(members) if tp[0] in subscribed[m]]
            load[min(candidates, key=lambda m: len(load[m]))].append(tp)
        # Even out, from the most to the least loaded member: idle partitions first.
        for _ in range(len(everything)):
            heavy = max(sorted(load), key=lambda m: len(load[m]))
            movable = [
                (tp, m)
                for tp in load[heavy]
                for m in sorted(load)
                if tp[0] in subscribed[m] and len(load[m]) + 1 < len(load[heavy])
            ]
            if not movable:
                break
            tp, light = min(movable, key=lambda pair: (busy.get(pair[0], 0), len(load[pair[1]])))
            load[heavy].remove(tp)
            load[light].append(tp)
        result = {}
        for member, tps in load.items():
            by_topic: dict[str, list[int]] = {}
            for topic, partition in sorted(tps):
                by_topic.setdefault(topic, []).append(partition)
            result[member] = ConsumerProtocolMemberAssignment(cls.version, sorted(by_topic.items()), b"")
        return result
