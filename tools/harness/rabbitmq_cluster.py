"""A RabbitMQ cluster of N nodes on this host (Debian's ``rabbitmq-server``), beside the single node.

    python tools/brokers.py up rabbitmq --nodes 3        # start N nodes, join them, add the app user
    eval "$(python tools/brokers.py env rabbitmq --nodes 3)"
    python tools/brokers.py leader rabbitmq QUEUE        # the node leading a quorum queue
    python tools/brokers.py stop-node rabbitmq 2 [--kill]   # `rabbitmqctl stop`, or kill -9 of its VM
    python tools/brokers.py start-node rabbitmq 2        # returns once it runs in the cluster again
    python tools/brokers.py restart rabbitmq --nodes 3   # every node, keeping queues and messages
    python tools/brokers.py down rabbitmq --nodes 3      # stop every node and wipe the cluster's data

Node ``i`` (1-9) is ``rabbit-i@localhost`` with AMQP on ``5680+i``, AMQPS on ``5690+i`` and
Erlang distribution on ``25680+i`` (all 127.0.0.1; epmd on 4369 is shared with the single
node, whose ``rabbit@localhost``, ports, ``/etc/rabbitmq`` files and ``/var/lib/rabbitmq/mnesia``
are never touched). Each node has its own config, env file, enabled-plugins file (none),
data and logs under ``/var/lib/rabbitmq/nova-cluster/`` (the server runs as user
``rabbitmq`` and must read them), picked by ``RABBITMQ_*`` variables; the nodes share the
``rabbitmq`` user's Erlang cookie. Nodes 2..N join node 1 (``join_cluster``) the first time;
later starts find the cluster by themselves. Users and TLS are the single node's: the app
user ``nova`` on vhost ``/`` and the same CA and server certificate (``/etc/rabbitmq/nova-tls``).

``env --nodes N`` prints the single node's ``NOVA_RABBITMQ_*`` variables pointing at node 1,
plus ``NOVA_RABBITMQ_URLS`` and ``NOVA_RABBITMQ_TLS_URLS`` (every node's URL, comma-separated:
the URLs escape commas, so a client splits on them) and ``NOVA_RABBITMQ_NODES``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import rabbitmq as single
from .cluster_size import ClusterSize

__all__ = ["down", "env", "leader", "node_name", "ports", "restart", "start_node", "stop_node", "up"]

HOST = single.HOST
DEFAULT_NODES = 3
MAX_NODES = 9
BASE = Path("/var/lib/rabbitmq/nova-cluster")
SIZE = ClusterSize("rabbitmq", BASE / "nodes", least=3, most=MAX_NODES)
# The CLI tools' own Erlang distribution ports: away from the single node's (35672-35682).
CTL_DIST_PORTS = (35700, 35730)
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def node_name(node: int) -> str:
    return f"rabbit-{node}@localhost"


def ports(node: int) -> dict[str, int]:
    """Node ``node``'s listeners: AMQP ``5680+node``, AMQPS ``5690+node``, distribution ``25680+node``."""
    return {"amqp": 5680 + node, "amqps": 5690 + node, "dist": 25680 + node}


def env(nodes: int = DEFAULT_NODES) -> dict[str, str]:
    """The single node's ``NOVA_RABBITMQ_*`` variables for node 1, plus every node's URLs."""
    SIZE.check_count(nodes)
    return {
        **single.client_env(HOST, ports(1)["amqp"], ports(1)["amqps"], single.CA_FILE),
        "NOVA_RABBITMQ_URLS": ",".join(single.url("amqp", HOST, ports(i)["amqp"]) for i in range(1, nodes + 1)),
        "NOVA_RABBITMQ_TLS_URLS": ",".join(single.url("amqps", HOST, ports(i)["amqps"]) for i in range(1, nodes + 1)),
        "NOVA_RABBITMQ_NODES": str(nodes),
    }


def up(nodes: int = DEFAULT_NODES) -> None:
    """Start the nodes that are not running, join new ones to node 1, ensure the app user."""
    SIZE.check_up(nodes)
    started = time.monotonic()
    if not single._installed():
        single._install()
    single._write_tls()
    single._fix_tls_permissions()
    _configure(nodes)
    # Started together: after a full stop each node waits for the others' tables.
    _parallel(_start, [i for i in range(1, nodes + 1) if not _ping(i)])
    for i in range(2, nodes + 1):
        if node_name(1) not in _cluster_nodes(i):
            _log(f"joining {node_name(i)} to {node_name(1)}")
            _ctl(i, "stop_app")
            _ctl(i, "reset")
            _ctl(i, "join_cluster", node_name(1))
            _ctl(i, "start_app")
            _wait_node(i)
    _ensure_user()
    _wait_running(set(range(1, nodes + 1)))
    _log(
        f"cluster of {nodes} up in {time.monotonic() - started:.1f} s: "
        + " ".join(f"{node_name(i)}=amqp://{HOST}:{ports(i)['amqp']}/" for i in range(1, nodes + 1))
    )


def down(nodes: int | None = None) -> None:
    """Stop every node (whatever ``nodes`` says) and wipe the cluster's data and configs."""
    count = SIZE.recorded() or nodes or DEFAULT_NODES
    if single._installed():
        _parallel(lambda i: _stop(i, kill=True), list(range(1, count + 1)))
    shutil.rmtree(BASE, ignore_errors=True)
    _log("cluster down (data wiped)")


def restart(nodes: int | None = None) -> None:
    """Stop every node and start them again; durable queues and persistent messages survive."""
    count = SIZE.check_restart(nodes)
    if count is None:
        up(nodes or DEFAULT_NODES)
        return
    started = time.monotonic()
    _parallel(lambda i: _stop(i, kill=False), list(range(1, count + 1)))
    up(count)
    _log(f"cluster restarted in {time.monotonic() - started:.1f} s")


def stop_node(node: int, *, kill: bool = False) -> None:
    """Stop one node (``rabbitmqctl stop``) or, with ``kill``, kill -9 its Erlang VM."""
    SIZE.check_node(node)
    started = time.monotonic()
    _stop(node, kill=kill)
    _log(f"{node_name(node)} {'killed' if kill else 'stopped'} ({time.monotonic() - started:.1f} s)")


def start_node(node: int) -> None:
    """Start one node; return once the cluster counts it among its running nodes."""
    count = SIZE.check_node(node)
    started = time.monotonic()
    if not _ping(node):
        _start(node)
    _wait_running({node}, ask=[i for i in range(1, count + 1) if i != node] or [node])
    _log(f"{node_name(node)} running in the cluster ({time.monotonic() - started:.1f} s)")


def leader(queue: str) -> int:
    """The node leading quorum queue ``queue`` (the node hosting it, for a classic queue)."""
    count = SIZE.check_node(1)
    for i in range(1, count + 1):
        if not _ping(i):
            continue
        result = _ctl(i, "list_queues", "name", "type", "leader", "pid", "--formatter", "json")
        for row in json.loads(result.stdout or "[]"):
            if row.get("name") == queue:
                where = str(row.get("leader") or row.get("pid") or "")
                for j in range(1, count + 1):
                    if node_name(j) in where:
                        return j
                raise SystemExit(f"queue {queue!r} has no leader right now ({row})")
        raise SystemExit(f"no queue {queue!r} in the rabbitmq cluster (vhost /)")
    raise SystemExit("no rabbitmq cluster node answers")


# --- configuration ------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[rabbitmq-cluster] {message}", file=sys.stderr, flush=True)


def _node_dir(node: int) -> Path:
    return BASE / f"node{node}"


def _node_conf(node: int) -> str:
    p = ports(node)
    tls = single.TLS_DIR
    return f"""\
# Written by nova's tools/harness/rabbitmq_cluster.py; rewritten on every `up`.
cluster_name = nova-cluster
listeners.tcp.default = {HOST}:{p['amqp']}
listeners.ssl.default = {HOST}:{p['amqps']}
ssl_options.cacertfile = {tls}/ca.pem
ssl_options.certfile = {tls}/server.pem
ssl_options.keyfile = {tls}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
distribution.listener.interface = {HOST}
distribution.listener.port_range.min = {p['dist']}
distribution.listener.port_range.max = {p['dist']}
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
"""


def _node_env(node: int) -> dict[str, str]:
    """What makes ``rabbitmq-server`` and the CLI tools act on node ``node`` and only on it."""
    d = _node_dir(node)
    return {
        **os.environ,
        "ERL_EPMD_ADDRESS": HOST,
        "RABBITMQ_NODENAME": node_name(node),
        "RABBITMQ_DIST_PORT": str(ports(node)["dist"]),
        # Our own env file, so /etc/rabbitmq/rabbitmq-env.conf (the single node's) is not read.
        "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        "RABBITMQ_CTL_DIST_PORT_MIN": str(CTL_DIST_PORTS[0]),
        "RABBITMQ_CTL_DIST_PORT_MAX": str(CTL_DIST_PORTS[1]),
    }


def _configure(nodes: int) -> None:
    for i in range(1, nodes + 1):
        d = _node_dir(i)
        for sub in (d, d / "mnesia", d / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(_node_conf(i))
        (d / "rabbitmq-env.conf").write_text(f"# Written by nova's tools/harness/rabbitmq_cluster.py.\n"
                                             f"NODENAME={node_name(i)}\nERL_EPMD_ADDRESS={HOST}\n")
        (d / "enabled_plugins").write_text("[].\n")
        # Quorum delay tiers dead-letter at least once; after a node dies, 3.10 resends what
        # it never confirmed only after this timeout (default 3 min): delayed tasks that late.
        (d / "advanced.config").write_text("[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].\n")
    SIZE.record(nodes)
    for path in [BASE, *BASE.rglob("*")]:
        shutil.chown(path, "rabbitmq", "rabbitmq")


# --- processes ----------------------------------------------------------------------------------


def _run(node: int, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, env=_node_env(node), check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:2])} on {node_name(node)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def _ctl(node: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(node, "rabbitmqctl", "-n", node_name(node), "-q", *args, check=check)


def _ping(node: int) -> bool:
    result = _run(node, "rabbitmq-diagnostics", "-n", node_name(node), "-q", "ping", "-t", "5", check=False, timeout=30)
    return result.returncode == 0


def _pid(node: int) -> int | None:
    """The node's Erlang VM, if it runs (the pid file names it; its environment must name the node,
    since the VM takes its node name after it started and the command line does not show it)."""
    try:
        pid = int((_node_dir(node) / "rabbitmq.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if f"RABBITMQ_NODENAME={node_name(node)}".encode() in environ else None


def _start(node: int) -> None:
    _log(f"starting {node_name(node)}")
    # -detached returns at once; the node boots in the background.
    _run(node, "rabbitmq-server", "-detached", timeout=60)
    _wait_node(node)


def _wait_node(node: int) -> None:
    """Until the node answers the CLI and both its listeners speak AMQP."""
    p = ports(node)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if _ping(node) and single._amqp_answers(p["amqp"], tls=False) and single._amqp_answers(p["amqps"], tls=True):
            return
        time.sleep(0.5)
    raise SystemExit(f"{node_name(node)} not ready within {READY_TIMEOUT_S:.0f} s; see {_node_dir(node)}/log")


def _stop(node: int, *, kill: bool) -> None:
    pid = _pid(node)
    if kill and pid is not None:
        os.kill(pid, signal.SIGKILL)
    elif _ping(node):
        _ctl(node, "stop", check=False)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if _pid(node) is None and not single._amqp_answers(ports(node)["amqp"], tls=False):
            return
        time.sleep(0.2)
    raise SystemExit(f"{node_name(node)} did not stop within {STOP_TIMEOUT_S:.0f} s")


def _cluster_nodes(node: int) -> list[str]:
    """The nodes ``node`` counts as members of its cluster (running or not)."""
    result = _ctl(node, "cluster_status", "--formatter", "json")
    status = json.loads(result.stdout)
    return [str(n) for n in status.get("disk_nodes", []) + status.get("ram_nodes", [])]


def _running_nodes(node: int) -> set[str]:
    result = _ctl(node, "cluster_status", "--formatter", "json", check=False)
    if result.returncode != 0:
        return set()
    return {str(n) for n in json.loads(result.stdout).get("running_nodes", [])}


def _wait_running(nodes: set[int], ask: list[int] | None = None) -> None:
    """Until a node (of ``ask``, default 1) sees every one of ``nodes`` running in its cluster."""
    wanted = {node_name(i) for i in nodes}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for i in ask or [1]:
            if wanted <= _running_nodes(i):
                return
        time.sleep(0.5)
    raise SystemExit(f"{sorted(wanted)} not running in one cluster after {READY_TIMEOUT_S:.0f} s")


def _ensure_user() -> None:
    """The app user with full rights on vhost /, created once for the whole cluster."""
    users = [u.get("user") for u in json.loads(_ctl(1, "list_users", "--formatter", "json").stdout or "[]")]
    if single.USER in users:
        _ctl(1, "change_password", single.USER, single.PASSWORD)
    else:
        _ctl(1, "add_user", single.USER, single.PASSWORD)
    _ctl(1, "set_permissions", "-p", "/", single.USER, ".*", ".*", ".*")
    _ctl(1, "authenticate_user", single.USER, single.PASSWORD)


def _parallel(work: object, nodes: list[int]) -> None:
    if not nodes:
        return
    with ThreadPoolExecutor(len(nodes)) as pool:
        for future in [pool.submit(work, i) for i in nodes]:  # type: ignore[arg-type]
            future.result()
