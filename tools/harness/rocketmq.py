"""RocketMQ 5 as local processes: a name server and a proxy in local mode (the
proxy embeds the broker). No Docker, no distribution zip: the jars come from
Maven Central once, into ``~/.cache/nova/rocketmq-<version>/libs``.

    python tools/brokers.py up rocketmq        # returns once a client can send and receive
    eval "$(python tools/brokers.py env rocketmq)"
    python tools/brokers.py restart rocketmq   # same data
    python tools/brokers.py down rocketmq      # kills by pid, removes data

Ports (all on 127.0.0.1): name server 9876, broker 10911 (+10909, 10912),
proxy gRPC 8081 (what ``nova.RocketMQBroker`` talks to), proxy remoting 8080.

ACL 2.0 (authentication and authorization) is on unless ``up`` runs with
``NOVA_ROCKETMQ_ACL=0``. Users: ``nova-admin`` (super user: creates topics and
groups) and ``nova-app`` (normal user: Pub/Sub on every topic and group except
topics named ``forbidden*``, where it is denied). ``env()`` exports both; the
setting is remembered in the run directory, so ``restart`` and ``env`` follow it.
In local mode the proxy must use the ``Proxy*MetadataProvider`` classes (users
and ACLs read from the embedded broker).

Topics and groups: gRPC clients cannot create them. ``nova.RocketMQBroker``
creates them over the remoting protocol when it is given the name server
(``namesrv=``; the tests pass ``NOVA_ROCKETMQ_NAMESRV``, with the admin user). ``create_topics(names, type)``
here drives RocketMQ's own admin tool (``MQAdminStartup updateTopic``, one JVM
per topic) for use by hand. Topics are ``message.type=MIXED``
(``enableMixedMessageType=true``) and the proxy runs with
``enableTopicMessageTypeCheck=false``: ready and delay topics carry normal and
timer messages alike. ``timerPrecisionMs=100``.

Timings on the 2-core machine: ``up`` ~15-45 s with cached jars (proxy start
dominates; varies with load), plus ~10-20 s for the first Maven download
(~95 MB); ``restart`` ~15 s. Memory: name server ~280 MiB RSS, proxy with
embedded broker ~0.55-1.2 GiB RSS (heap 1 GiB).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .processes import port_open

VERSION = "5.5.0"
CACHE = Path.home() / ".cache" / "nova"
LIBS = CACHE / f"rocketmq-{VERSION}" / "libs"
RUN = CACHE / "run" / "rocketmq"
HOST = "127.0.0.1"
NAMESRV_PORT = 9876
BROKER_PORT = 10911
GRPC_PORT = 8081
REMOTING_PORT = 8080
CLUSTER = "DefaultCluster"
#: Longest native delay: proxy maxDelayTimeMills (broker timerMaxDelaySec is larger).
MAX_DELAY_SECONDS = 86_400
TIMER_PRECISION_MS = 100

ADMIN_USER = ("nova-admin", "nova-admin-secret")
APP_USER = ("nova-app", "nova-app-secret")

_JAVA_COMMON = [
    "-XX:+UseG1GC",
    "-XX:MaxDirectMemorySize=512m",
    "-Djava.net.preferIPv4Stack=true",
]


def _log(msg: str) -> None:
    print(f"[rocketmq] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- jars


def fetch_jars() -> Path:
    """Download the RocketMQ jars once (Maven Central) and return their folder."""
    marker = LIBS / ".complete"
    if marker.exists():
        return LIBS
    work = CACHE / f"rocketmq-{VERSION}" / "fetch"
    work.mkdir(parents=True, exist_ok=True)
    deps = "".join(
        f"<dependency><groupId>org.apache.rocketmq</groupId><artifactId>{a}</artifactId>"
        f"<version>{VERSION}</version></dependency>"
        for a in ("rocketmq-proxy", "rocketmq-namesrv", "rocketmq-tools")
    )
    (work / "pom.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>nova</groupId><artifactId>rocketmq-fetch</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>\n"
    )
    tmp = LIBS.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _log(f"fetching RocketMQ {VERSION} jars from Maven Central into {LIBS}")
    subprocess.run(
        [
            "mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
            "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )  # fmt: skip
    shutil.rmtree(LIBS, ignore_errors=True)
    tmp.rename(LIBS)
    marker.write_text(VERSION)
    return LIBS


def classpath() -> str:
    return f"{LIBS}/*"


# ---------------------------------------------------------------- configs


def _acl_enabled() -> bool:
    flag = RUN / "acl"
    return flag.exists()


def write_logback(run: Path, name: str) -> Path:
    """The logback configuration of process ``name``, logging to ``run/logs/<name>.log``."""
    path = run / "conf" / f"rmq.{name}.logback.xml"
    pkg = "org.apache.rocketmq.logging.ch.qos.logback"
    path.write_text(
        f"""<configuration>
  <appender name="FILE" class="{pkg}.core.FileAppender">
    <file>{run / "logs" / f"{name}.log"}</file>
    <append>true</append>
    <encoder class="{pkg}.classic.encoder.PatternLayoutEncoder">
      <pattern>%d{{yyy-MM-dd HH:mm:ss.SSS}} %-5p %t %c{{0}} - %m%n</pattern>
    </encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""
    )
    return path


def _auth_lines(acl: bool) -> list[str]:
    if not acl:
        return []
    admin = json.dumps({"username": ADMIN_USER[0], "password": ADMIN_USER[1]})
    inner = json.dumps({"accessKey": ADMIN_USER[0], "secretKey": ADMIN_USER[1]})
    return [
        "authenticationEnabled=true",
        "authenticationProvider=org.apache.rocketmq.auth.authentication.provider.DefaultAuthenticationProvider",
        "authenticationMetadataProvider=org.apache.rocketmq.auth.authentication.provider.LocalAuthenticationMetadataProvider",
        "authorizationEnabled=true",
        "authorizationProvider=org.apache.rocketmq.auth.authorization.provider.DefaultAuthorizationProvider",
        "authorizationMetadataProvider=org.apache.rocketmq.auth.authorization.provider.LocalAuthorizationMetadataProvider",
        f"initAuthenticationUser={admin}",
        f"innerClientAuthenticationCredentials={inner}",
    ]


def broker_conf(*, name: str, namesrv: str, ip: str, port: int, bind: str, store: str | Path, acl: bool) -> list[str]:
    """A broker's ``broker.conf`` lines. This node, each broker of ``rocketmq_cluster.py`` and the
    container of ``conformance/containers.py`` differ only in these arguments."""
    return [
        f"brokerClusterName={CLUSTER}",
        f"brokerName={name}",
        "brokerId=0",
        f"namesrvAddr={namesrv}",
        f"brokerIP1={ip}",
        f"listenPort={port}",
        f"bindAddress={bind}",
        f"storePathRootDir={store}",
        f"storePathCommitLog={store}/commitlog",
        "mappedFileSizeCommitLog=104857600",
        "mappedFileSizeConsumeQueue=600000",
        "mappedFileSizeTimerLog=52428800",
        "autoCreateTopicEnable=false",
        "enableMixedMessageType=true",
        "autoCreateSubscriptionGroup=true",
        "deleteWhen=04",
        "fileReservedTime=48",
        "flushDiskType=ASYNC_FLUSH",
        f"timerPrecisionMs={TIMER_PRECISION_MS}",
        f"timerMaxDelaySec={3 * 86_400}",
        "timerWheelEnable=true",
        "enablePropertyFilter=true",
        # keep memory small
        "transientStorePoolEnable=false",
        "useReentrantLockWhenPutMessage=true",
        "sendMessageThreadPoolNums=4",
        "pullMessageThreadPoolNums=8",
        *_auth_lines(acl),
    ]


def proxy_config(*, namesrv: str, grpc_port: int, remoting_port: int, acl: bool) -> dict[str, object]:
    """The proxy's ``rmq-proxy.json`` (this node's, the cluster's and the container's)."""
    config: dict[str, object] = {
        "rocketMQClusterName": CLUSTER,
        "namesrvAddr": namesrv,
        "grpcServerPort": grpc_port,
        "remotingListenPort": remoting_port,
        "enableTopicMessageTypeCheck": False,
        "maxDelayTimeMills": MAX_DELAY_SECONDS * 1000,
        "grpcThreadPoolNums": 8,
        "grpcShutdownTimeSeconds": 1,
        "grpcClientConsumerMinLongPollingTimeoutMillis": 100,
    }
    if acl:
        for line in _auth_lines(acl):
            key, _, value = line.partition("=")
            config[key] = True if value == "true" else value
        # The proxy must read users and ACLs from the broker(s); the Local* providers
        # would open a second, empty store (at "null/users").
        provider = "org.apache.rocketmq.proxy.auth.Proxy{}MetadataProvider"
        config["authenticationMetadataProvider"] = provider.format("Authentication")
        config["authorizationMetadataProvider"] = provider.format("Authorization")
    return config


def _write_configs() -> tuple[Path, Path, Path]:
    acl = _acl_enabled()
    conf = RUN / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (RUN / "logs").mkdir(exist_ok=True)
    namesrv = conf / "namesrv.conf"
    namesrv.write_text(f"listenPort={NAMESRV_PORT}\nbindAddress={HOST}\n")
    broker = conf / "broker.conf"
    lines = broker_conf(name="broker-a", namesrv=f"{HOST}:{NAMESRV_PORT}", ip=HOST, port=BROKER_PORT, bind=HOST,
                        store=RUN / "store", acl=acl)
    broker.write_text("\n".join(lines) + "\n")
    proxy = conf / "rmq-proxy.json"
    proxy_cfg = proxy_config(namesrv=f"{HOST}:{NAMESRV_PORT}", grpc_port=GRPC_PORT, remoting_port=REMOTING_PORT,
                             acl=acl)
    proxy.write_text(json.dumps(proxy_cfg, indent=2) + "\n")
    return namesrv, broker, proxy


# ---------------------------------------------------------------- processes


def _java(heap: str, name: str, main: str, args: list[str]) -> int:
    home = RUN / "home"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        *_JAVA_COMMON,
        f"-Drocketmq.home.dir={home}",
        f"-Duser.home={home}",
        f"-Drmq.logback.configurationFile={write_logback(RUN, name)}",
        "-cp",
        classpath(),
        main,
        *args,
    ]
    out = open(RUN / "logs" / f"{name}.out", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    out.close()
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _pid(name: str) -> int | None:
    try:
        pid = int((RUN / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _wait(what: str, check, timeout: float, name: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if _pid(name) is None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"RocketMQ {name}: {what} not ready after {timeout:.0f} s{log_tail(RUN, name, 40)}")


def log_tail(run: Path, name: str, lines: int) -> str:
    """The last ``lines`` of process ``name``'s output and log, each under a header."""
    tail = ""
    for f in (run / "logs" / f"{name}.out", run / "logs" / f"{name}.log"):
        if f.exists():
            tail += f"\n--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
    return tail


def _stop(name: str) -> None:
    pid = _pid(name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    (RUN / f"{name}.pid").unlink(missing_ok=True)


def _start() -> None:
    t0 = time.monotonic()
    fetch_jars()
    namesrv, broker, proxy = _write_configs()
    if _pid("namesrv") is None:
        _java("256m", "namesrv", "org.apache.rocketmq.namesrv.NamesrvStartup", ["-c", str(namesrv)])
    _wait("name server port", lambda: port_open(NAMESRV_PORT), 60, "namesrv")
    if _pid("proxy") is None:
        _java(
            "1g",
            "proxy",
            "org.apache.rocketmq.proxy.ProxyStartup",
            ["-pm", "local", "-n", f"{HOST}:{NAMESRV_PORT}", "-bc", str(broker), "-pc", str(proxy)],
        )
    _wait("proxy gRPC port", lambda: port_open(GRPC_PORT), 120, "proxy")
    _log(f"proxy port open after {time.monotonic() - t0:.1f} s")
    _smoke_test()
    _log(f"smoke test passed after {time.monotonic() - t0:.1f} s")


# ---------------------------------------------------------------- admin


def _admin(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``mqadmin`` (MQAdminStartup) with the harness's jars and credentials."""
    cmd = [
        "java", "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Drocketmq.home.dir={RUN / 'home'}", f"-Duser.home={RUN / 'home'}",
        "-Drocketmq.namesrv.addr=" + f"{HOST}:{NAMESRV_PORT}",
        "-cp", classpath(), "org.apache.rocketmq.tools.command.MQAdminStartup", *args,
        "-n", f"{HOST}:{NAMESRV_PORT}",
    ]  # fmt: skip
    env = dict(os.environ)
    if _acl_enabled():
        # MQAdminStartup reads conf/tools.yml under rocketmq.home.dir for credentials.
        tools = RUN / "home" / "conf"
        tools.mkdir(parents=True, exist_ok=True)
        (tools / "tools.yml").write_text(f"accessKey: {ADMIN_USER[0]}\nsecretKey: {ADMIN_USER[1]}\n")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def create_topics(names: list[str], message_type: str = "MIXED") -> None:
    """Create topics (idempotent) with ``message.type`` NORMAL, DELAY, FIFO or MIXED.

    One JVM per topic is slow (~1 s each), so topics are created through one
    ``batchUpdateTopic``-style loop: a shell running mqadmin for each name.
    """
    fetch_jars()
    for name in names:
        result = _admin(
            ["updateTopic", "-c", CLUSTER, "-t", name, "-r", "1", "-w", "1", "-a", f"+message.type={message_type}"]
        )
        if result.returncode != 0 or "success" not in result.stdout.lower():
            raise RuntimeError(f"cannot create topic {name}: {result.stdout}\n{result.stderr}")


def smoke_script(root: Path, endpoints: str, namesrv: str, auth: tuple[str, str] | None) -> str:
    """Python that sends and receives one message through nova's adapter (creating its topic and group),
    with nova imported from ``root``."""
    return f"""
import asyncio, sys, uuid
sys.path.insert(0, {str(root)!r})
from nova._broker import Message
from nova.brokers.rocketmq import RocketMQBroker

async def main():
    broker = RocketMQBroker("{endpoints}", namesrv="{namesrv}", auth={auth!r})
    topic = "nova-harness-smoke"
    await broker.ensure_topics([topic])
    token = uuid.uuid4().hex.encode()
    await broker.publish([Message(topic, token)])
    sub = await broker.subscribe([topic], group="nova-harness-smoke", window=16)
    async with asyncio.timeout(60):
        async for delivery in sub:
            await delivery.ack()
            if delivery.body == token:
                break
    await sub.close()
    await broker.close()

asyncio.run(main())
"""


def _smoke_test() -> None:
    """Send and receive one message through nova's adapter (creates its topic and group)."""
    root = Path(__file__).resolve().parents[2]
    code = smoke_script(root, f"{HOST}:{GRPC_PORT}", f"{HOST}:{NAMESRV_PORT}", ADMIN_USER if _acl_enabled() else None)
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"RocketMQ smoke test failed:\n{result.stdout}\n{result.stderr}")
        time.sleep(1)


# ---------------------------------------------------------------- verbs


def up() -> None:
    t0 = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    flag = RUN / "acl"
    if os.environ.get("NOVA_ROCKETMQ_ACL", "1") == "0":
        flag.unlink(missing_ok=True)
    else:
        flag.write_text("1")
    _start()
    if _acl_enabled():
        _setup_acl_users()
    _log(f"up in {time.monotonic() - t0:.1f} s (ACL {'on' if _acl_enabled() else 'off'})")


def down() -> None:
    _stop("proxy")
    _stop("namesrv")
    shutil.rmtree(RUN, ignore_errors=True)


def restart() -> None:
    _stop("proxy")
    _stop("namesrv")
    _start()


def env() -> dict[str, str]:
    return {
        **client_env(f"{HOST}:{GRPC_PORT}", f"{HOST}:{NAMESRV_PORT}", acl=_acl_enabled()),
        "NOVA_ROCKETMQ_ADMIN_CLASSPATH": classpath(),
    }


def client_env(endpoints: str, namesrv: str, *, acl: bool) -> dict[str, str]:
    """The ``NOVA_ROCKETMQ_*`` variables of a client (the harness adds the admin tool's classpath)."""
    out = {
        "NOVA_ROCKETMQ_ENDPOINTS": endpoints,
        "NOVA_ROCKETMQ_NAMESRV": namesrv,
        "NOVA_ROCKETMQ_TIMER_PRECISION_MS": str(TIMER_PRECISION_MS),
    }
    if acl:
        out["NOVA_ROCKETMQ_ACCESS_KEY"], out["NOVA_ROCKETMQ_SECRET_KEY"] = APP_USER
        out["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"], out["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"] = ADMIN_USER
    return out


#: ``mqadmin`` arguments that give the app user Pub/Sub everywhere except on ``forbidden*`` topics.
APP_USER_ACL_STEPS = [
    ["createUser", "-c", CLUSTER, "-u", APP_USER[0], "-p", APP_USER[1], "-t", "Normal"],
    ["createAcl", "-c", CLUSTER, "-s", f"User:{APP_USER[0]}", "-r", "Topic:*,Group:*", "-a", "Pub,Sub", "-d", "Allow"],
    ["createAcl", "-c", CLUSTER, "-s", f"User:{APP_USER[0]}", "-r", "Topic:forbidden*", "-a", "Pub,Sub", "-d", "Deny"],
]


def _setup_acl_users() -> None:
    for args in APP_USER_ACL_STEPS:
        result = _admin(args)
        if result.returncode != 0 and "exist" not in (result.stdout + result.stderr).lower():
            raise RuntimeError(f"mqadmin {args[0]} failed:\n{result.stdout}\n{result.stderr}")
