"""RocketMQ 5 with N brokers in one cluster: a name server, N brokers and a proxy in
cluster mode, as local processes beside the single node of ``rocketmq.py``.

    python tools/brokers.py up rocketmq --nodes 2        # returns once a client can send and receive
    eval "$(python tools/brokers.py env rocketmq --nodes 2)"
    python tools/brokers.py stop-node rocketmq 2 [--kill]   # broker 2: TERM (it unregisters) or KILL
    python tools/brokers.py start-node rocketmq 2        # returns once the name server routes to it again
    python tools/brokers.py restart rocketmq --nodes 2   # every process, same data
    python tools/brokers.py down rocketmq --nodes 2      # kill by pid, remove the data

Ports (127.0.0.1): name server 19876, proxy gRPC 18081 (what ``nova.RocketMQBroker``
talks to) and remoting 18080, broker ``i`` (``broker-i``, all masters, brokerId 0) on
``19911 + 1000*i`` (and that port -2 and +1). State lives in
``~/.cache/nova/run/rocketmq-cluster/``; the jars are the single node's.

The brokers do not replicate each other: a topic gets its queues on every broker
(nova's admin creates it on each master), a producer's messages spread over them,
and the messages on a stopped broker wait for it to come back. Surviving a broker's
loss without that wait takes a replica per broker (a slave with the same brokerName,
and the controller for automatic failover): twice the brokers.

ACL 2.0 as the single node has it (on unless ``up`` runs with ``NOVA_ROCKETMQ_ACL=0``;
the same two users). In cluster mode the proxy reads users and ACLs from the brokers
(``Proxy*MetadataProvider``) and signs its own calls to them with the inner
credentials (``enableAclRpcHookForClusterMode``). ``env`` prints the single node's
``NOVA_ROCKETMQ_*`` variables for this cluster, plus ``NOVA_ROCKETMQ_NODES``.

Memory (measured): name server ~230 MiB RSS, each broker ~520 MiB (512 MiB heap),
proxy ~330 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import rocketmq as single
from .cluster_size import ClusterSize
from .processes import owned_pid, port_open, stop_pids

__all__ = ["broker_port", "down", "env", "restart", "start_node", "stop_node", "up"]

HOST = single.HOST
DEFAULT_NODES = 2
MAX_NODES = 3
RUN = single.CACHE / "run" / "rocketmq-cluster"
NAMESRV_PORT = 19876
GRPC_PORT = 18081
REMOTING_PORT = 18080
CLUSTER = single.CLUSTER
HEAPS = {"namesrv": "128m", "broker": "512m", "proxy": "384m"}
READY_TIMEOUT_S = 180.0
SIZE = ClusterSize("rocketmq", RUN / "nodes", least=2, most=MAX_NODES, noun="broker")


def broker_port(node: int) -> int:
    """Broker ``node``'s listen port (it also takes that port -2 and +1)."""
    return 19911 + 1000 * node


def env(nodes: int = DEFAULT_NODES) -> dict[str, str]:
    """The single node's ``NOVA_ROCKETMQ_*`` variables for this cluster, plus ``NOVA_ROCKETMQ_NODES``."""
    SIZE.check_count(nodes)
    out = single.client_env(f"{HOST}:{GRPC_PORT}", f"{HOST}:{NAMESRV_PORT}", acl=_acl_enabled())
    out["NOVA_ROCKETMQ_ADMIN_CLASSPATH"] = single.classpath()
    out["NOVA_ROCKETMQ_NODES"] = str(nodes)
    return out


def up(nodes: int = DEFAULT_NODES) -> None:
    """Start what is not running; return once every broker is routed and a client sends and receives."""
    recorded = SIZE.check_up(nodes)
    started = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    flag = RUN / "acl"
    if recorded is None:  # the ACL setting is the first `up`'s, kept across restarts
        if os.environ.get("NOVA_ROCKETMQ_ACL", "1") == "0":
            flag.unlink(missing_ok=True)
        else:
            flag.write_text("1")
    SIZE.record(nodes)
    _start(nodes)
    if _acl_enabled():
        _setup_acl_users()
    _log(f"cluster of {nodes} brokers up in {time.monotonic() - started:.1f} s "
         f"(proxy {HOST}:{GRPC_PORT}, ACL {'on' if _acl_enabled() else 'off'})")


def down(nodes: int | None = None) -> None:
    """Stop every process (whatever ``nodes`` says) and remove the data."""
    for name in ["proxy", *(f"broker-{i}" for i in range(1, MAX_NODES + 1)), "namesrv"]:
        _stop(name, kill=True)
    shutil.rmtree(RUN, ignore_errors=True)
    _log("cluster down (data removed)")


def restart(nodes: int | None = None) -> None:
    """Stop every process and start them again with the same data."""
    count = SIZE.check_restart(nodes)
    if count is None:
        up(nodes or DEFAULT_NODES)
        return
    started = time.monotonic()
    for name in ["proxy", *(f"broker-{i}" for i in range(1, count + 1)), "namesrv"]:
        _stop(name, kill=False)
    _start(count)
    _log(f"cluster restarted in {time.monotonic() - started:.1f} s")


def stop_node(node: int, *, kill: bool = False) -> None:
    """Stop broker ``node``: TERM (it unregisters from the name server first) or KILL."""
    SIZE.check_node(node)
    started = time.monotonic()
    _stop(f"broker-{node}", kill=kill)
    _log(f"broker-{node} {'killed' if kill else 'stopped'} ({time.monotonic() - started:.1f} s)")


def start_node(node: int) -> None:
    """Start broker ``node``; return once the name server routes to it again."""
    count = SIZE.check_node(node)
    started = time.monotonic()
    if _pid(f"broker-{node}") is None:
        _spawn_broker(node)
    _wait(f"broker-{node} registered", lambda: len(_masters()) == count, f"broker-{node}")
    _log(f"broker-{node} running ({time.monotonic() - started:.1f} s)")


# --- configuration ------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[rocketmq-cluster] {message}", file=sys.stderr, flush=True)


def _acl_enabled() -> bool:
    return (RUN / "acl").exists()


def _broker_conf(node: int) -> Path:
    """The single node's broker settings, with this broker's name, port and store."""
    lines = single.broker_conf(name=f"broker-{node}", namesrv=f"{HOST}:{NAMESRV_PORT}", ip=HOST, port=broker_port(node),
                               bind=HOST, store=RUN / "store" / f"broker-{node}", acl=_acl_enabled())
    path = RUN / "conf" / f"broker-{node}.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_configs(nodes: int) -> None:
    (RUN / "conf").mkdir(parents=True, exist_ok=True)
    (RUN / "logs").mkdir(exist_ok=True)
    (RUN / "conf" / "namesrv.conf").write_text(f"listenPort={NAMESRV_PORT}\nbindAddress={HOST}\n")
    for i in range(1, nodes + 1):
        _broker_conf(i)
    acl = _acl_enabled()
    proxy = single.proxy_config(namesrv=f"{HOST}:{NAMESRV_PORT}", grpc_port=GRPC_PORT, remoting_port=REMOTING_PORT,
                                acl=acl)
    if acl:
        # The proxy's own calls to the brokers (system topics, routes) carry the inner credentials.
        proxy["enableAclRpcHookForClusterMode"] = True
    (RUN / "conf" / "rmq-proxy.json").write_text(json.dumps(proxy, indent=2) + "\n")


# --- processes ----------------------------------------------------------------------------------


def _java(heap: str, name: str, main: str, args: list[str]) -> None:
    home = RUN / "home" / name
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxDirectMemorySize=256m",
        "-Djava.net.preferIPv4Stack=true", f"-Drocketmq.home.dir={home}", f"-Duser.home={home}",
        f"-Drmq.logback.configurationFile={single.write_logback(RUN, name)}", "-cp", single.classpath(), main, *args,
    ]  # fmt: skip
    with open(RUN / "logs" / f"{name}.out", "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    (RUN / f"{name}.pid").write_text(str(process.pid))


def _spawn_broker(node: int) -> None:
    conf = _broker_conf(node)
    _java(HEAPS["broker"], f"broker-{node}", "org.apache.rocketmq.broker.BrokerStartup", ["-c", str(conf)])


def _pid(name: str) -> int | None:
    return owned_pid(RUN / f"{name}.pid", str(RUN / "home" / name).encode())


def _stop(name: str, *, kill: bool) -> None:
    pid = _pid(name)
    if pid is not None:
        stop_pids([pid], kill=kill, timeout=30)
    (RUN / f"{name}.pid").unlink(missing_ok=True)


def _wait(what: str, check: Callable[[], bool], name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        if _pid(name) is None:
            break
        time.sleep(0.5)
    raise SystemExit(f"RocketMQ cluster {name}: {what} not ready after {READY_TIMEOUT_S:.0f} s"
                     f"{single.log_tail(RUN, name, 30)}")


def _start(nodes: int) -> None:
    single.fetch_jars()
    _write_configs(nodes)
    if _pid("namesrv") is None:
        conf = RUN / "conf" / "namesrv.conf"
        _java(HEAPS["namesrv"], "namesrv", "org.apache.rocketmq.namesrv.NamesrvStartup", ["-c", str(conf)])
    _wait("name server port", lambda: port_open(NAMESRV_PORT), "namesrv")
    for i in range(1, nodes + 1):
        if _pid(f"broker-{i}") is None:
            _spawn_broker(i)
    for i in range(1, nodes + 1):
        _wait("broker port", lambda i=i: port_open(broker_port(i)), f"broker-{i}")  # type: ignore[misc]
    _wait("every broker registered", lambda: len(_masters()) == nodes, "namesrv")
    if _pid("proxy") is None:
        conf = RUN / "conf" / "rmq-proxy.json"
        _java(HEAPS["proxy"], "proxy", "org.apache.rocketmq.proxy.ProxyStartup",
              ["-pm", "cluster", "-n", f"{HOST}:{NAMESRV_PORT}", "-pc", str(conf)])
    _wait("proxy gRPC port", lambda: port_open(GRPC_PORT), "proxy")
    _smoke_test()


# --- clients ------------------------------------------------------------------------------------


def _nova(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (asyncio, nova importable from this checkout) in a fresh interpreter."""
    root = Path(__file__).resolve().parents[2]
    prelude = f"import asyncio, sys, uuid\nsys.path.insert(0, {str(root)!r})\nimport nova\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _masters() -> list[str]:
    """The master brokers the name server routes to (empty while it cannot say)."""
    creds = repr(single.ADMIN_USER) if _acl_enabled() else "None"
    result = _nova(
        "async def main():\n"
        f"    admin = nova.RocketMQAdmin('{HOST}:{NAMESRV_PORT}', auth={creds})\n"
        "    try:\n        print(' '.join(await admin.master_brokers()))\n"
        "    finally:\n        await admin.aclose()\n"
        "asyncio.run(main())\n",
        timeout=60,
    )
    return result.stdout.split() if result.returncode == 0 else []


def _smoke_test() -> None:
    """Send and receive one message through the proxy (nova creates the topic on every broker)."""
    root = Path(__file__).resolve().parents[2]
    code = single.smoke_script(root, f"{HOST}:{GRPC_PORT}", f"{HOST}:{NAMESRV_PORT}",
                               single.ADMIN_USER if _acl_enabled() else None)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        result = _nova(code)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"RocketMQ cluster smoke test failed:\n{result.stdout}\n{result.stderr}")
        time.sleep(1)


def _admin(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``mqadmin`` with the cluster's name server and, under ACL, the admin user's credentials."""
    home = RUN / "home" / "mqadmin"
    (home / "conf").mkdir(parents=True, exist_ok=True)
    if _acl_enabled():
        # MQAdminStartup reads conf/tools.yml under rocketmq.home.dir for credentials.
        (home / "conf" / "tools.yml").write_text(f"accessKey: {single.ADMIN_USER[0]}\n"
                                                 f"secretKey: {single.ADMIN_USER[1]}\n")
    cmd = [
        "java", "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Drocketmq.home.dir={home}", f"-Duser.home={home}", "-cp", single.classpath(),
        "org.apache.rocketmq.tools.command.MQAdminStartup", *args, "-n", f"{HOST}:{NAMESRV_PORT}",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _setup_acl_users() -> None:
    """The single node's app user and ACLs, on every broker of the cluster."""
    for args in single.APP_USER_ACL_STEPS:
        result = _admin(args)
        if result.returncode != 0 and "exist" not in (result.stdout + result.stderr).lower():
            raise SystemExit(f"mqadmin {args[0]} failed:\n{result.stdout}\n{result.stderr}")
