"""Start and stop real brokers as local processes (no Docker needed).

    python tools/brokers.py up kafka|rabbitmq|rocketmq|all
    python tools/brokers.py down kafka|rabbitmq|rocketmq|all
    python tools/brokers.py restart kafka|rabbitmq|rocketmq
    python tools/brokers.py env [kafka|rabbitmq|rocketmq|all]   # prints `export NOVA_...=...` lines

Clusters, beside the single nodes, on other ports and run directories (RocketMQ: N brokers,
one name server, one proxy):

    python tools/brokers.py up|down|restart|env kafka|rabbitmq|all --nodes 3
    python tools/brokers.py up|down|restart|env rocketmq --nodes 2
    python tools/brokers.py stop-node kafka|rabbitmq|rocketmq N [--kill]   # stop (or kill -9) node N (1-based)
    python tools/brokers.py start-node kafka|rabbitmq|rocketmq N           # start it again; returns once it rejoined
    python tools/brokers.py leader kafka TOPIC [PARTITION]        # prints the number of the leading node
    python tools/brokers.py leader rabbitmq QUEUE                 # the node leading a quorum queue

Downloads are cached under ``~/.cache/nova/`` keyed by version; state (data,
logs, pids, certificates) lives under ``~/.cache/nova/run/<broker>/``
(clusters: ``<broker>-cluster/``). Everything binds to 127.0.0.1. Each broker's
logic lives in ``tools/harness/<broker>.py`` exposing ``up() -> None``,
``down() -> None``, ``restart() -> None`` and ``env() -> dict[str, str]``; a
cluster's in ``tools/harness/<broker>_cluster.py`` (the same four taking the node
count, plus ``stop_node``, ``start_node`` and, for Kafka and RabbitMQ, ``leader``).
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType

BROKERS = ("kafka", "rabbitmq", "rocketmq")
CLUSTERED = ("kafka", "rabbitmq", "rocketmq")
LEADERS = ("kafka", "rabbitmq")
VERBS = ("up", "down", "restart", "env")
NODE_VERBS = ("stop-node", "start-node", "leader")


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(f"harness.{name}")


def _take_nodes(argv: list[str]) -> tuple[list[str], int | None] | str:
    """``argv`` without ``--nodes N`` (or ``--nodes=N``), and N; a string is an error."""
    rest: list[str] = []
    nodes: int | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--nodes" or arg.startswith("--nodes="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if not value.isdigit() or int(value) < 1:
                return f"--nodes needs a node count, not {value!r}"
            nodes = int(value)
        else:
            rest.append(arg)
    return rest, nodes


def _node_verb(verb: str, args: list[str]) -> int:
    kill = "--kill" in args
    args = [a for a in args if a != "--kill"]
    if not args or args[0] not in CLUSTERED:
        print(f"{verb} needs a clustered broker: {' or '.join(CLUSTERED)}", file=sys.stderr)
        return 2
    name, args = args[0], args[1:]
    cluster = _module(f"{name}_cluster")
    if verb == "leader":
        if name not in LEADERS:
            print(f"leader is for {' and '.join(LEADERS)}", file=sys.stderr)
            return 2
        wanted = 2 if name == "kafka" else 1
        if not 1 <= len(args) <= wanted or (len(args) == 2 and not args[1].isdigit()):
            what = "TOPIC [PARTITION]" if name == "kafka" else "QUEUE"
            print(f"usage: python tools/brokers.py leader {name} {what}", file=sys.stderr)
            return 2
        print(cluster.leader(args[0], *(int(a) for a in args[1:])))
        return 0
    if len(args) != 1 or not args[0].isdigit():
        print(f"usage: python tools/brokers.py {verb} {name} NODE (a number from 1)", file=sys.stderr)
        return 2
    if verb == "stop-node":
        cluster.stop_node(int(args[0]), kill=kill)
    elif kill:
        print("--kill goes with stop-node", file=sys.stderr)
        return 2
    else:
        cluster.start_node(int(args[0]))
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in NODE_VERBS:
        return _node_verb(argv[0], argv[1:])
    taken = _take_nodes(argv)
    if isinstance(taken, str):
        print(taken, file=sys.stderr)
        return 2
    argv, nodes = taken
    if nodes == 1:
        nodes = None  # one node is the single-node harness
    if not argv or argv[0] not in VERBS:
        print(__doc__, file=sys.stderr)
        return 2
    verb, names = argv[0], argv[1:] or (["all"] if argv[0] == "env" else [])
    if not names:
        print(f"say which broker: {', '.join(BROKERS)} or all", file=sys.stderr)
        return 2
    targets = list(BROKERS) if names == ["all"] else names
    for name in targets:
        if name not in BROKERS:
            print(f"unknown broker {name!r}; choose from {', '.join(BROKERS)}", file=sys.stderr)
            return 2
    for name in targets:
        if nodes is not None:
            _cluster_verb(_module(f"{name}_cluster"), verb, nodes)
            continue
        module = _module(name)
        if verb == "env":
            for key, value in module.env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif verb == "up":
            module.up()
        elif verb == "down":
            module.down()
        else:
            module.restart()
    return 0


def _cluster_verb(cluster: ModuleType, verb: str, nodes: int) -> None:
    if verb == "env":
        for key, value in cluster.env(nodes).items():
            print(f"export {key}={shlex.quote(value)}")
    elif verb == "up":
        cluster.up(nodes)
    elif verb == "down":
        cluster.down(nodes)
    else:
        cluster.restart(nodes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
