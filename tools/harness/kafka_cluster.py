"""A Kafka 4.x cluster of N KRaft nodes (each broker+controller) as local processes.

    python tools/brokers.py up kafka --nodes 3       # configure, start, wait until all N serve
    eval "$(python tools/brokers.py env kafka --nodes 3)"
    python tools/brokers.py leader kafka TOPIC [PARTITION]   # prints the leading node's number
    python tools/brokers.py stop-node kafka 2 [--kill]       # TERM (controlled shutdown) or KILL
    python tools/brokers.py start-node kafka 2               # returns once it is back in the cluster
    python tools/brokers.py restart kafka --nodes 3          # all nodes, keeping the data
    python tools/brokers.py down kafka --nodes 3             # stop every node, delete the data

It runs beside the single node of ``kafka.py`` and shares nothing with it but the
downloaded jars: its own ports, run directory (``~/.cache/nova/run/kafka-cluster/``),
certificates and cluster id. Node ``i`` (1-9) has node.id ``i`` and the single node's
listeners moved to ``19000 + 100*i + (port - 9000)``:

    node 1: 19192 PLAINTEXT, 19193 controller, 19194 SASL_PLAINTEXT, 19195 SSL, 19196 SASL_SSL
    node 2: 19292 ...                          node 3: 19392 ...

The controllers form a static quorum (``controller.quorum.voters``), so any one node of
three may be down. Topics created without a replication factor get 3 replicas
(``default.replication.factor``; ``min(3, N)``), ``min.insync.replicas=2``, and the
internal topics (consumer offsets, transactions, share groups) are replicated the same
way. Users, passwords and the listeners' TLS set-up are the single node's, so the
conformance suite and the broker tests run unchanged against ``env --nodes 3``, which
prints the same ``NOVA_KAFKA_*`` variables with every node in the bootstrap lists, plus
``NOVA_KAFKA_NODES``.

Each node gets a small heap (384 MiB) and fewer threads than Kafka's defaults: the
cluster shares two cores with everything else.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import kafka as single
from .cluster_size import ClusterSize
from .processes import owned_pid, port_open, stop_pids

__all__ = ["down", "env", "leader", "ports", "restart", "start_node", "stop_node", "up"]

HOST = single.HOST
DEFAULT_NODES = 3
MAX_NODES = 9
PORT_BASE = 19000
RUN = single.CACHE / "run" / "kafka-cluster"
CERTS = RUN / "certs"
LOG4J_CONFIG = RUN / "log4j2.properties"
SIZE = ClusterSize("kafka", RUN / "nodes", least=3, most=MAX_NODES)
CLUSTER_ID_FILE = RUN / "cluster.id"
SERVER_JVM = ("-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
# Fewer threads than the defaults (8 I/O, 3 network, 10 background): three nodes on two cores.
THREADS = (
    "num.io.threads=2",
    "num.network.threads=2",
    "background.threads=4",
    "num.replica.fetchers=1",
    "log.cleaner.threads=1",
    "num.recovery.threads.per.data.dir=1",
)
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def ports(node: int) -> dict[str, int]:
    """Node ``node``'s listeners: the single node's ports moved to ``19000 + 100*node + (port - 9000)``."""
    return {name: PORT_BASE + 100 * node + (port - 9000) for name, port in single.PORTS.items()}


def env(nodes: int = DEFAULT_NODES) -> dict[str, str]:
    """The single node's ``NOVA_KAFKA_*`` variables for the cluster, plus ``NOVA_KAFKA_NODES``."""
    SIZE.check_count(nodes)

    def servers(listener: str) -> str:
        return ",".join(f"{HOST}:{ports(i)[listener]}" for i in range(1, nodes + 1))

    return {**single.client_env(servers, CERTS), "NOVA_KAFKA_NODES": str(nodes)}


def up(nodes: int = DEFAULT_NODES) -> None:
    """Start every node that is not running; return once all ``nodes`` serve as one cluster."""
    SIZE.check_up(nodes)
    started = time.monotonic()
    single._fetch_jars()
    single._make_certs(CERTS)
    RUN.mkdir(parents=True, exist_ok=True)
    SIZE.record(nodes)
    _write_configs(nodes)
    _format_storage(nodes)
    waiting = [i for i in range(1, nodes + 1) if _running_pid(i) is None]
    _check_ports_free(waiting)
    processes = {i: _spawn(i) for i in waiting}
    try:
        _wait(lambda: _cluster_serves(nodes), "the cluster", processes)
    except BaseException:
        for i in processes:
            _stop_nodes([i], kill=True)
        raise
    state = "ready" if waiting else "already running"
    print(
        f"kafka {single.KAFKA_VERSION} cluster of {nodes} {state} on {env(nodes)['NOVA_KAFKA_BOOTSTRAP']} "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )


def down(nodes: int | None = None) -> None:
    """Stop every node (whatever ``nodes`` says) and delete the cluster's data."""
    # The data goes too, so there is no need for a controlled shutdown.
    _stop_nodes(range(1, MAX_NODES + 1), kill=True)
    shutil.rmtree(RUN, ignore_errors=True)
    print("kafka cluster stopped, data removed", file=sys.stderr)


def restart(nodes: int | None = None) -> None:
    """Stop every node, then start them all again with the same data."""
    count = SIZE.check_restart(nodes)
    if count is None:  # never started: a restart is a plain start
        up(nodes or DEFAULT_NODES)
        return
    started = time.monotonic()
    _stop_nodes(range(1, count + 1), kill=False)
    up(count)
    print(f"kafka cluster restarted in {time.monotonic() - started:.1f} s", file=sys.stderr)


def stop_node(node: int, *, kill: bool = False) -> None:
    """Stop one node: TERM (a controlled shutdown: it hands its leaderships over first) or KILL."""
    SIZE.check_node(node)
    started = time.monotonic()
    if _running_pid(node) is None:
        print(f"kafka node {node} is not running", file=sys.stderr)
        return
    _stop_nodes([node], kill=kill)
    how = "killed" if kill else "stopped"
    print(f"kafka node {node} {how} ({time.monotonic() - started:.1f} s)", file=sys.stderr)


def start_node(node: int) -> None:
    """Start one node of a set-up cluster; return once the cluster lists it as a live broker."""
    SIZE.check_node(node)
    started = time.monotonic()
    if _running_pid(node) is None:
        _check_ports_free([node])
        process = _spawn(node)
        try:
            _wait(lambda: _node_serves(node), f"node {node}", {node: process})
        except BaseException:
            _stop_nodes([node], kill=True)
            raise
    print(f"kafka node {node} running ({time.monotonic() - started:.1f} s)", file=sys.stderr)


def leader(topic: str, partition: int = 0) -> int:
    """The node that leads ``partition`` of ``topic`` (-1: none right now)."""
    count = SIZE.check_node(1)

    async def ask(admin: Any) -> int:
        for entry in await admin.describe_topics([topic]):
            if entry["topic"] != topic or entry["error_code"] != 0:
                raise SystemExit(f"topic {topic!r} is unknown to the cluster (error {entry['error_code']})")
            for part in entry["partitions"]:
                if part["partition"] == partition:
                    return int(part["leader"])
        raise SystemExit(f"topic {topic!r} has no partition {partition}")

    return _admin(env(count)["NOVA_KAFKA_BOOTSTRAP"], ask)


# --- configuration ------------------------------------------------------------------------------


def _node_dir(node: int) -> Path:
    return RUN / f"node{node}"


def _config(node: int) -> Path:
    return _node_dir(node) / "server.properties"


def _write_configs(nodes: int) -> None:
    voters = ",".join(f"{i}@{HOST}:{ports(i)['CONTROLLER']}" for i in range(1, nodes + 1))
    LOG4J_CONFIG.write_text(single._LOG4J)
    for i in range(1, nodes + 1):
        (_node_dir(i) / "logs").mkdir(parents=True, exist_ok=True)
        text = single.server_properties(
            node_id=i,
            ports=ports(i),
            quorum=f"controller.quorum.voters={voters}",
            data=_node_dir(i) / "data",
            certs=CERTS,
            replicas=min(3, nodes),
            extra=THREADS,
        )
        _config(i).write_text(text)


def _format_storage(nodes: int) -> None:
    """Format the nodes that have no data yet, all with one cluster id and the SCRAM users."""
    if not CLUSTER_ID_FILE.exists():
        CLUSTER_ID_FILE.write_text(single._uuid_base64())
    cluster_id = CLUSTER_ID_FILE.read_text().strip()
    todo = [i for i in range(1, nodes + 1) if not (_node_dir(i) / "data" / "meta.properties").exists()]
    # One JVM per node, side by side (a static quorum needs neither --standalone nor
    # --initial-controllers).
    running = [
        (
            i,
            subprocess.Popen(
                single._java(
                    "kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", cluster_id,
                    "-c", str(_config(i)),
                    "--add-scram", f'SCRAM-SHA-256=[name="{single.USER}",password="{single.PASSWORD}"]',
                    "--add-scram", f'SCRAM-SHA-512=[name="{single.USER}",password="{single.PASSWORD}"]',
                    log4j=LOG4J_CONFIG,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for i in todo
    ]  # fmt: skip
    for i, process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"formatting kafka node {i} failed ({process.returncode}):\n{out}")


# --- processes ----------------------------------------------------------------------------------


def _spawn(node: int) -> subprocess.Popen[bytes]:
    log_file = _node_dir(node) / "logs" / "server.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            single._java("kafka.Kafka", str(_config(node)), jvm=SERVER_JVM, log4j=LOG4J_CONFIG),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=_node_dir(node),
            start_new_session=True,  # outlive this command; `down` stops it by pid
        )
    (_node_dir(node) / "kafka.pid").write_text(str(process.pid))
    return process


def _running_pid(node: int) -> int | None:
    return owned_pid(_node_dir(node) / "kafka.pid", b"kafka.Kafka", str(_config(node)).encode())


def _stop_nodes(nodes: Any, *, kill: bool) -> None:
    """Signal the given nodes together, wait for all, KILL whatever outlives the timeout."""
    stop_pids([pid for i in nodes if (pid := _running_pid(i)) is not None], kill=kill, timeout=STOP_TIMEOUT_S)
    for i in nodes:
        (_node_dir(i) / "kafka.pid").unlink(missing_ok=True)


def _check_ports_free(nodes: list[int]) -> None:
    for i in nodes:
        for name, port in ports(i).items():
            if port_open(port):
                raise SystemExit(
                    f"port {HOST}:{port} (node {i} {name}) is already taken by another process; "
                    "stop it (or an old kafka cluster) first"
                )


def _admin(bootstrap: str, call: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            return await call(admin)
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(run(), timeout))


def _live_brokers(admin: Any) -> Any:
    async def ask() -> set[int]:
        await admin.list_topics()
        cluster = await admin.describe_cluster()
        return {int(b["node_id"]) for b in cluster.get("brokers", ())}

    return ask()


def _cluster_serves(nodes: int) -> bool:
    """Every node answers and the cluster lists all ``nodes`` brokers."""
    everyone = set(range(1, nodes + 1))
    return all(_node_serves(i, expected=everyone) for i in everyone)


def _node_serves(node: int, expected: set[int] | None = None) -> bool:
    """The node answers a client on its own listener and the cluster lists it (and ``expected``)."""
    if not port_open(ports(node)["PLAINTEXT"]):
        return False
    live: set[int] = _admin(f"{HOST}:{ports(node)['PLAINTEXT']}", _live_brokers)
    return (expected or {node}) <= live


def _wait(ready: Callable[[], bool], what: str, processes: dict[int, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: BaseException | None = None
    try:
        from aiokafka.admin import AIOKafkaAdminClient  # noqa: F401 - fail early, with the fix
    except ImportError:
        raise SystemExit(
            "the kafka harness checks readiness with aiokafka: pip install 'nova-taskqueue[kafka]'"
        ) from None
    while time.monotonic() < deadline:
        for i, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(f"kafka node {i} exited with code {process.returncode} while starting\n{_tail(i)}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(0.5)
    tails = "\n".join(_tail(i) for i in processes)
    raise SystemExit(f"kafka {what} not ready after {READY_TIMEOUT_S:.0f} s (last error: {last!r})\n{tails}")


def _tail(node: int, lines: int = 30) -> str:
    log_file = _node_dir(node) / "logs" / "server.log"
    try:
        text = "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        text = "(no log)"
    return f"--- node {node}: {log_file} ---\n{text}"
