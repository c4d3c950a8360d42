"""How many nodes a harness cluster may have, and has: the count its ``up`` recorded in a file.

    SIZE = ClusterSize("kafka", RUN / "nodes", least=3, most=9)
    SIZE.check_count(nodes)        # SystemExit unless 3 <= nodes <= 9
    count = SIZE.check_node(node)  # SystemExit unless a cluster is set up and has node ``node``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClusterSize"]


@dataclass(frozen=True)
class ClusterSize:
    broker: str
    #: Where ``up`` records the node count; its folder is the cluster's (named in the messages).
    file: Path
    least: int
    most: int
    #: What a node is called in the messages ("broker" for RocketMQ's).
    noun: str = "node"

    def check_count(self, nodes: int) -> None:
        if not self.least <= nodes <= self.most:
            raise SystemExit(f"a {self.broker} cluster here has {self.least} to {self.most} {self.noun}s, not {nodes}")

    def recorded(self) -> int | None:
        """The node count ``up`` recorded; None if no cluster is set up."""
        try:
            return int(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def record(self, nodes: int) -> None:
        self.file.write_text(str(nodes))

    def check_node(self, node: int) -> int:
        """The recorded count, once a cluster is set up and ``node`` is one of its nodes."""
        count = self.recorded()
        if count is None:
            raise SystemExit(f"no {self.broker} cluster is set up in {self.file.parent}: "
                             f"`python tools/brokers.py up {self.broker} --nodes {self.least}`")
        if not 1 <= node <= count:
            raise SystemExit(f"the {self.broker} cluster has {self.noun}s 1 to {count}, not {node}")
        return count

    def check_up(self, nodes: int) -> int | None:
        """The recorded count (None: none yet), after checking that ``up`` may start ``nodes``."""
        self.check_count(nodes)
        recorded = self.recorded()
        if recorded is not None and recorded != nodes:
            raise SystemExit(
                f"a {recorded}-{self.noun} {self.broker} cluster is set up in {self.file.parent}: "
                f"`python tools/brokers.py down {self.broker} --nodes {recorded}` first"
            )
        return recorded

    def check_restart(self, nodes: int | None) -> int | None:
        """The recorded count (None: nothing to restart, start it), after checking it is ``nodes`` if given."""
        count = self.recorded()
        if count is not None and nodes is not None and nodes != count:
            raise SystemExit(f"the {self.broker} cluster in {self.file.parent} has {count} {self.noun}s, not {nodes}")
        return count
