"""The brokers in Docker containers, for ``--containers`` (or ``NOVA_BROKERS=containers``).

The harness (``tools/brokers.py``) runs each broker as local processes; this module
runs the same brokers, configured the same way, in containers started with
testcontainers, and exports the same ``NOVA_*`` variables, so a test cannot tell
which path started its broker. The only other seam is the ``restart_broker`` fixture.

- Kafka (KRaft, one node): PLAINTEXT, SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256/512), SSL
  (client certificates accepted) and SASL_SSL listeners; the harness's users.
- RabbitMQ: AMQP and AMQPS (the CA below), the harness's application user.
- RocketMQ: name server and proxy in local mode (which embeds the broker) in one
  container, ACL 2.0 with the harness's admin and app users unless ``NOVA_ROCKETMQ_ACL=0``.

Settings (environment):

    NOVA_KAFKA_IMAGE, NOVA_RABBITMQ_IMAGE, NOVA_ROCKETMQ_IMAGE   images (default: the official ones)
    NOVA_CONTAINERS_NETWORK=host        share the host's network (default: bridge with port bindings)
    NOVA_CONTAINERS_PORT_OFFSET=5000    each broker's ports are the harness's plus this offset
                                        (Kafka 14092-14096, RabbitMQ 10672/10671, RocketMQ 13081, ...)

A container's ports are the same inside and out (no random host ports), so each broker
advertises addresses that work from the tests. Containers carry labels naming this
process; they are removed when the run ends (also on failure, Ctrl-C or SIGTERM), and a
later run removes any left by a process that was killed. No reaper container is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from harness import kafka as harness_kafka  # noqa: E402
from harness import rabbitmq as harness_rabbitmq  # noqa: E402
from harness import rocketmq as harness_rocketmq  # noqa: E402
from harness.processes import port_open  # noqa: E402

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

__all__ = ["BROKERS", "ContainerError", "Session", "Settings"]

DEFAULT_IMAGES = {
    "kafka": f"apache/kafka:{harness_kafka.KAFKA_VERSION}",
    "rabbitmq": "rabbitmq:4.0",
    "rocketmq": f"apache/rocketmq:{harness_rocketmq.VERSION}",
}
IMAGE_VARS = {"kafka": "NOVA_KAFKA_IMAGE", "rabbitmq": "NOVA_RABBITMQ_IMAGE", "rocketmq": "NOVA_ROCKETMQ_IMAGE"}
# Clear of the harness's ports (and the cluster harness's 18080-22912), and every port stays
# below Linux's ephemeral range (32768+), where an outgoing connection may hold one.
DEFAULT_PORT_OFFSET = 5_000
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30  # docker stop/restart: SIGTERM, then SIGKILL after this long
LABEL = "nova.containers"
#: The variables each broker exports: exactly the keys of the harness's ``env()``, except
#: ``NOVA_ROCKETMQ_ADMIN_CLASSPATH`` (host jars for RocketMQ's admin tool, used by hand only).
ENDPOINT_VARS = {
    "kafka": (
        "NOVA_KAFKA_BOOTSTRAP", "NOVA_KAFKA_SASL_BOOTSTRAP", "NOVA_KAFKA_SSL_BOOTSTRAP",
        "NOVA_KAFKA_SASL_SSL_BOOTSTRAP", "NOVA_KAFKA_CA_FILE", "NOVA_KAFKA_CLIENT_CERT_FILE",
        "NOVA_KAFKA_CLIENT_KEY_FILE", "NOVA_KAFKA_USER", "NOVA_KAFKA_PASSWORD",
    ),
    "rabbitmq": (
        "NOVA_RABBITMQ_URL", "NOVA_RABBITMQ_TLS_URL", "NOVA_RABBITMQ_CA_FILE", "NOVA_RABBITMQ_USER",
        "NOVA_RABBITMQ_PASSWORD",
    ),
    "rocketmq": (
        "NOVA_ROCKETMQ_ENDPOINTS", "NOVA_ROCKETMQ_NAMESRV", "NOVA_ROCKETMQ_TIMER_PRECISION_MS",
        "NOVA_ROCKETMQ_ACCESS_KEY", "NOVA_ROCKETMQ_SECRET_KEY", "NOVA_ROCKETMQ_ADMIN_ACCESS_KEY",
        "NOVA_ROCKETMQ_ADMIN_SECRET_KEY", "NOVA_ROCKETMQ_ADMIN_CLASSPATH",
    ),
}  # fmt: skip


class ContainerError(RuntimeError):
    """A broker container could not be configured, started or restarted."""


@dataclass(frozen=True)
class Settings:
    """What the environment asks for; read once per run.

    >>> Settings.from_env({"NOVA_CONTAINERS_NETWORK": "host"}).network
    'host'
    """

    images: dict[str, str]
    network: str  # "host" or "bridge"
    port_offset: int
    #: Address the tests use to reach the brokers (and that the brokers advertise).
    host: str
    rocketmq_acl: bool

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        network = env.get("NOVA_CONTAINERS_NETWORK", "bridge") or "bridge"
        if network not in ("host", "bridge"):
            raise ContainerError(f"NOVA_CONTAINERS_NETWORK={network!r}: use 'host' or 'bridge'")
        raw_offset = env.get("NOVA_CONTAINERS_PORT_OFFSET", str(DEFAULT_PORT_OFFSET))
        try:
            offset = int(raw_offset)
        except ValueError:
            raise ContainerError(f"NOVA_CONTAINERS_PORT_OFFSET={raw_offset!r} is not a whole number") from None
        highest = max(harness_rabbitmq.DIST_PORT, harness_rocketmq.BROKER_PORT + 1)
        if not 0 <= offset <= 65_535 - highest:
            raise ContainerError(
                f"NOVA_CONTAINERS_PORT_OFFSET={offset} puts ports outside 1-65535: use 0..{65_535 - highest}"
            )
        images = {name: env.get(var) or DEFAULT_IMAGES[name] for name, var in IMAGE_VARS.items()}
        return cls(images, network, offset, _docker_host(env, network), env.get("NOVA_ROCKETMQ_ACL", "1") != "0")

    @property
    def bind(self) -> str:
        """Where brokers listen inside their container: loopback when it is the host's."""
        return "127.0.0.1" if self.network == "host" else "0.0.0.0"


def _docker_host(env: dict[str, str] | os._Environ[str], network: str) -> str:
    if network == "host":
        return "127.0.0.1"
    override = env.get("TESTCONTAINERS_HOST_OVERRIDE")
    if override:
        return override
    docker_host = env.get("DOCKER_HOST", "")
    if docker_host.startswith(("tcp://", "ssh://", "http://", "https://")):
        return urlparse(docker_host).hostname or "127.0.0.1"
    return "127.0.0.1"


# --- certificates ---------------------------------------------------------------------------------


class Certs:
    """A CA, a server certificate, a client certificate and an unrelated CA, as the harness makes them.

    The server certificate names 127.0.0.1, localhost and the Docker host;
    ``server.keystore.pem`` (key, certificate, CA) is Kafka's PEM keystore.
    """

    def __init__(self, directory: Path, hosts: tuple[str, ...]) -> None:
        self.dir = directory
        self.hosts = hosts

    def path(self, name: str) -> Path:
        return self.dir / name

    def make(self) -> None:
        if self.path("server.keystore.pem").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        c = self.dir
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=nova test CA",
                 "-keyout", str(c / "ca.key"), "-out", str(c / "ca.pem"),
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        names = ["IP:127.0.0.1", "DNS:localhost"]
        for host in self.hosts:
            entry = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
            if entry not in names:
                names.append(entry)
        for name, ext in (
            ("server", f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ):
            # An unencrypted PKCS#8 key: the only unencrypted form Kafka's PEM keystore reads.
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(c / f"{name}.key"))
            _openssl("req", "-new", "-key", str(c / f"{name}.key"), "-subj", f"/CN=nova-{name}",
                     "-out", str(c / f"{name}.csr"))
            (c / f"{name}.ext").write_text(ext)
            _openssl("x509", "-req", "-in", str(c / f"{name}.csr"), "-CA", str(c / "ca.pem"),
                     "-CAkey", str(c / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
                     "-extfile", str(c / f"{name}.ext"), "-out", str(c / f"{name}.pem"))
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=some other CA",
                 "-keyout", str(c / "other-ca.key"), "-out", str(c / "other-ca.pem"))
        keystore = (c / "server.key").read_text() + (c / "server.pem").read_text() + (c / "ca.pem").read_text()
        (c / "server.keystore.pem").write_text(keystore)  # written last: it marks a complete set

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ContainerError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}")


# --- one broker -----------------------------------------------------------------------------------


class BrokerContainer:
    """One broker in one container: its files, command, ports, variables and readiness check."""

    name: ClassVar[str]
    #: The harness's ports by role; the container's are these plus the offset.
    HARNESS_PORTS: ClassVar[dict[str, int]]
    #: Override the image's entrypoint with ``bash`` running this file (None: keep the image's).
    START_SCRIPT: ClassVar[str | None] = "/nova/start.sh"

    def __init__(self, settings: Settings, certs: Certs, labels: dict[str, str]) -> None:
        self.settings = settings
        self.certs = certs
        self.labels = labels
        self.container: DockerContainer | None = None
        self.started = False

    @property
    def image(self) -> str:
        return self.settings.images[self.name]

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def ports(self) -> dict[str, int]:
        return {role: port + self.settings.port_offset for role, port in self.HARNESS_PORTS.items()}

    # -- what each broker defines

    def env(self) -> dict[str, str]:
        """The ``NOVA_*`` variables the harness's ``env()`` gives for this broker."""
        raise NotImplementedError

    def files(self) -> dict[str, bytes]:
        """Files copied into the container before it starts (path -> content)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        """True once a client can use the broker."""
        raise NotImplementedError

    def after_first_start(self) -> None:
        """Create users and the like (they survive restarts)."""

    # -- lifecycle

    def options(self) -> dict[str, Any]:
        """How the container is made: environment, files copied in, published ports, docker options."""
        kwargs: dict[str, Any] = {"labels": self.labels, "stop_signal": "SIGTERM"}
        if self.START_SCRIPT is not None:
            kwargs["entrypoint"] = ["bash", self.START_SCRIPT]
        ports: dict[str, int] = {}
        if self.settings.network == "host":
            kwargs["network_mode"] = "host"
        else:
            # Same number inside and out: the broker advertises what the tests dial.
            ports = {f"{port}/tcp": port for port in self._published_ports()}
        return {"env": self.environment(), "files": self.files(), "ports": ports, "kwargs": kwargs}

    def make_container(self) -> DockerContainer:
        from testcontainers.core.container import DockerContainer

        options = self.options()
        container = DockerContainer(self.image)
        for key, value in options["env"].items():
            container.with_env(key, value)
        for path, content in options["files"].items():
            container.with_copy_into_container(content, path, 0o755 if path.endswith(".sh") else 0o644)
        for inside, outside in options["ports"].items():
            container.with_bind_ports(inside, outside)
        container.with_kwargs(**options["kwargs"])
        return container

    def _published_ports(self) -> list[int]:
        return list(self.ports.values())

    def start(self) -> None:
        # On the host's network every port the broker opens is the host's.
        wanted = list(self.ports.values()) if self.settings.network == "host" else self._published_ports()
        taken = [f"{self.host}:{p}" for p in wanted if port_open(p, self.host)]
        if taken:
            raise ContainerError(
                f"{self.name}: {', '.join(taken)} already answer (another broker or an old container?); "
                "stop it or pick other ports with NOVA_CONTAINERS_PORT_OFFSET"
            )
        self.container = self.make_container()
        try:
            self.container.start()
        except Exception as exc:
            raise ContainerError(
                f"cannot start {self.image} for {self.name}: {exc}\n"
                f"Without a registry, build a local image (`python tools/images.py build {self.name}`) "
                f"and set {IMAGE_VARS[self.name]} to the tag it prints."
            ) from exc
        self.wait_ready()
        self.after_first_start()
        self.started = True

    def restart(self) -> None:
        """``docker restart`` (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``); return once ready again."""
        assert self.container is not None, f"{self.name} container was never started"
        self.container.get_wrapped_container().restart(timeout=STOP_TIMEOUT_S)
        self.wait_ready()

    def stop(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.stop()  # removes it and its anonymous volumes
            self.container = None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        assert self.container is not None
        deadline = time.monotonic() + timeout
        wrapped = self.container.get_wrapped_container()
        last = ""
        while time.monotonic() < deadline:
            wrapped.reload()
            if wrapped.status in ("exited", "dead"):
                raise ContainerError(f"{self.name} container exited while starting\n{self.log_tail()}")
            try:
                if self.ready():
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = repr(exc)
            time.sleep(0.5)
        raise ContainerError(
            f"{self.name} not ready after {timeout:.0f} s (last error: {last or 'none'})\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 60) -> str:
        if self.container is None:
            return ""
        try:
            return self.container.get_wrapped_container().logs(tail=lines).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            return f"(no logs: {exc!r})"

    def exec(self, *cmd: str, user: str = "") -> str:
        assert self.container is not None
        code, output = self.container.get_wrapped_container().exec_run(list(cmd), user=user)
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        if code != 0:
            raise ContainerError(f"{self.name}: `{cmd[0]} {cmd[1] if len(cmd) > 1 else ''}` failed ({code}): {text}")
        return text


# --- kafka ----------------------------------------------------------------------------------------


class KafkaContainer(BrokerContainer):
    """Kafka 4.x KRaft (broker and controller), configured as ``tools/harness/kafka.py`` does."""

    name = "kafka"
    HARNESS_PORTS = harness_kafka.PORTS
    DATA = "/tmp/nova-kafka/data"

    def env(self) -> dict[str, str]:
        return harness_kafka.client_env(lambda listener: f"{self.host}:{self.ports[listener]}", self.certs.dir)

    def _published_ports(self) -> list[int]:
        return [port for role, port in self.ports.items() if role != "CONTROLLER"]

    def server_properties(self) -> list[str]:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{self.ports['CONTROLLER']}"
        text = harness_kafka.server_properties(node_id=1, ports=self.ports, quorum=quorum, data=Path(self.DATA),
                                               certs=Path("/nova/certs"), bind=self.settings.bind,
                                               advertised=self.host)
        return text.splitlines()

    def files(self) -> dict[str, bytes]:
        user, password = harness_kafka.USER, harness_kafka.PASSWORD
        cluster_id = harness_kafka._uuid_base64()
        start = f"""set -e
# Format once (with the SCRAM users); a restarted container keeps its data.
if [ ! -f {self.DATA}/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format --standalone --ignore-formatted -t {cluster_id} \\
    -c /nova/server.properties \\
    --add-scram 'SCRAM-SHA-256=[name="{user}",password="{password}"]' \\
    --add-scram 'SCRAM-SHA-512=[name="{user}",password="{password}"]'
fi
exec /opt/kafka/bin/kafka-server-start.sh /nova/server.properties
"""
        log4j = (
            "status = warn\n"
            "appender.console.type = Console\n"
            "appender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
            "logger.request.name = kafka.request.logger\nlogger.request.level = WARN\n"
        )
        return {
            "/nova/start.sh": start.encode(),
            "/nova/server.properties": ("\n".join(self.server_properties()) + "\n").encode(),
            "/nova/log4j2.properties": log4j.encode(),
            "/nova/certs/server.keystore.pem": self.certs.read("server.keystore.pem"),
            "/nova/certs/ca.pem": self.certs.read("ca.pem"),
        }

    def environment(self) -> dict[str, str]:
        return {
            "KAFKA_HEAP_OPTS": " ".join(o for o in harness_kafka.SERVER_JVM if o.startswith("-Xm")),
            "KAFKA_LOG4J_OPTS": "-Dlog4j2.configurationFile=/nova/log4j2.properties",
            "LOG_DIR": "/tmp/nova-kafka/logs",
            "EXTRA_ARGS": "",  # kafka-server-start.sh would add "-name kafkaServer -loggc"
        }

    def ready(self) -> bool:
        if not port_open(self.ports["PLAINTEXT"], self.host):
            return False
        from aiokafka.admin import AIOKafkaAdminClient

        async def list_topics() -> None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=f"{self.host}:{self.ports['PLAINTEXT']}", request_timeout_ms=5000
            )
            try:
                await admin.start()
                await admin.list_topics()
            finally:
                await admin.close()

        asyncio.run(asyncio.wait_for(list_topics(), 10))
        return True


# --- rabbitmq -------------------------------------------------------------------------------------


class RabbitMQContainer(BrokerContainer):
    """RabbitMQ with a plain and a TLS listener and the harness's application user."""

    name = "rabbitmq"
    HARNESS_PORTS: ClassVar[dict[str, int]] = {
        "amqp": harness_rabbitmq.PORT,
        "amqps": harness_rabbitmq.TLS_PORT,
        "dist": harness_rabbitmq.DIST_PORT,
        "epmd": 4369,
    }
    START_SCRIPT = None  # the image's own entrypoint (the official one drops to user rabbitmq)

    def env(self) -> dict[str, str]:
        p = self.ports
        return harness_rabbitmq.client_env(self.host, p["amqp"], p["amqps"], self.certs.path("ca.pem"))

    def _published_ports(self) -> list[int]:
        return [self.ports["amqp"], self.ports["amqps"]]

    def config(self) -> str:
        p, bind = self.ports, self.settings.bind
        return f"""\
listeners.tcp.default = {bind}:{p['amqp']}
listeners.ssl.default = {bind}:{p['amqps']}
ssl_options.cacertfile = /nova/certs/ca.pem
ssl_options.certfile = /nova/certs/server.pem
ssl_options.keyfile = /nova/certs/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = {p['dist']}
distribution.listener.port_range.max = {p['dist']}
disk_free_limit.absolute = 50MB
log.console = true
log.console.level = info
log.file = false
"""

    def files(self) -> dict[str, bytes]:
        return {
            "/nova/rabbitmq.conf": self.config().encode(),
            # No plugins: the official image enables Prometheus (a listener on 15692).
            "/nova/enabled_plugins": b"[].\n",
            "/nova/conf.d/00-empty.conf": b"",
            "/nova/certs/ca.pem": self.certs.read("ca.pem"),
            "/nova/certs/server.pem": self.certs.read("server.pem"),
            "/nova/certs/server.key": self.certs.read("server.key"),
        }

    def environment(self) -> dict[str, str]:
        return {
            "RABBITMQ_CONFIG_FILE": "/nova/rabbitmq.conf",
            # Only our file: the image's conf.d may set keys of plugins that are not enabled here.
            "RABBITMQ_CONFIG_FILES": "/nova/conf.d",
            "RABBITMQ_ENABLED_PLUGINS_FILE": "/nova/enabled_plugins",
            "RABBITMQ_NODENAME": harness_rabbitmq.NODENAME,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.ports["epmd"]),
            # Checked before the config file is read (else AMQP's default port + 20000).
            "RABBITMQ_DIST_PORT": str(self.ports["dist"]),
        }

    def ready(self) -> bool:
        return harness_rabbitmq.amqp_answers(self.host, self.ports["amqp"]) and harness_rabbitmq.amqp_answers(
            self.host, self.ports["amqps"], self.certs.path("ca.pem"))

    def after_first_start(self) -> None:
        user, password = harness_rabbitmq.USER, harness_rabbitmq.PASSWORD
        self.exec("rabbitmqctl", "-q", "add_user", user, password, user="rabbitmq")
        self.exec("rabbitmqctl", "-q", "set_permissions", "-p", "/", user, ".*", ".*", ".*", user="rabbitmq")


# --- rocketmq -------------------------------------------------------------------------------------


class RocketMQContainer(BrokerContainer):
    """A name server and a proxy in local mode (with its embedded broker) in one container."""

    name = "rocketmq"
    HARNESS_PORTS: ClassVar[dict[str, int]] = {
        "namesrv": harness_rocketmq.NAMESRV_PORT,
        "broker": harness_rocketmq.BROKER_PORT,
        "broker_fast": harness_rocketmq.BROKER_PORT - 2,  # the broker's fixed companions
        "broker_ha": harness_rocketmq.BROKER_PORT + 1,
        "grpc": harness_rocketmq.GRPC_PORT,
        "remoting": harness_rocketmq.REMOTING_PORT,
    }
    RUN = "/tmp/nova-rocketmq"

    @property
    def acl(self) -> bool:
        return self.settings.rocketmq_acl

    def env(self) -> dict[str, str]:
        return harness_rocketmq.client_env(f"{self.host}:{self.ports['grpc']}", f"{self.host}:{self.ports['namesrv']}",
                                           acl=self.acl)

    def broker_conf(self) -> list[str]:
        return harness_rocketmq.broker_conf(name="broker-a", namesrv=f"127.0.0.1:{self.ports['namesrv']}",
                                            ip=self.host, port=self.ports["broker"], bind=self.settings.bind,
                                            store=f"{self.RUN}/store", acl=self.acl)

    def proxy_config(self) -> dict[str, object]:
        return harness_rocketmq.proxy_config(namesrv=f"127.0.0.1:{self.ports['namesrv']}",
                                             grpc_port=self.ports["grpc"], remoting_port=self.ports["remoting"],
                                             acl=self.acl)

    def files(self) -> dict[str, bytes]:
        p = self.ports
        common = (
            f"-XX:+UseG1GC -XX:MaxDirectMemorySize=512m -Djava.net.preferIPv4Stack=true "
            f"-Drocketmq.home.dir=/nova/home -Duser.home={self.RUN}/home"
        )
        java = 'java=${JAVA_HOME:+$JAVA_HOME/bin/}java\ncp="$ROCKETMQ_HOME/lib/*"\n'
        start = f"""{java}mkdir -p {self.RUN}/home
"$java" -Xms256m -Xmx256m {common} -Drmq.logback.configurationFile=/nova/rmq.namesrv.logback.xml \\
  -cp "$cp" org.apache.rocketmq.namesrv.NamesrvStartup -c /nova/namesrv.conf &
namesrv=$!
until (exec 3<>/dev/tcp/127.0.0.1/{p['namesrv']}) 2>/dev/null; do
  kill -0 $namesrv 2>/dev/null || exit 1
  sleep 0.2
done
"$java" -Xms1g -Xmx1g {common} -Drmq.logback.configurationFile=/nova/rmq.proxy.logback.xml \\
  -cp "$cp" org.apache.rocketmq.proxy.ProxyStartup -pm local -n 127.0.0.1:{p['namesrv']} \\
  -bc /nova/broker.conf -pc /nova/rmq-proxy.json &
proxy=$!
# docker stop/restart sends TERM: stop the proxy (and its broker) first, then the name server.
stop() {{ kill -TERM $proxy 2>/dev/null; wait $proxy; kill -TERM $namesrv 2>/dev/null; wait $namesrv; exit 0; }}
trap stop TERM INT
wait -n
echo "a RocketMQ process exited on its own" >&2
kill -TERM $proxy $namesrv 2>/dev/null
wait
exit 1
"""
        admin = f"""{java}mkdir -p {self.RUN}/home
exec "$java" -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Drocketmq.home.dir=/nova/home \\
  -Duser.home={self.RUN}/home -Drmq.logback.configurationFile=/nova/rmq.tools.logback.xml \\
  -cp "$cp" org.apache.rocketmq.tools.command.MQAdminStartup "$@" -n 127.0.0.1:{p['namesrv']}
"""
        files = {
            "/nova/start.sh": start.encode(),
            "/nova/mqadmin.sh": admin.encode(),
            "/nova/namesrv.conf": f"listenPort={p['namesrv']}\nbindAddress={self.settings.bind}\n".encode(),
            "/nova/broker.conf": ("\n".join(self.broker_conf()) + "\n").encode(),
            "/nova/rmq-proxy.json": (json.dumps(self.proxy_config(), indent=2) + "\n").encode(),
        }
        for name, level in (("namesrv", "INFO"), ("proxy", "INFO"), ("tools", "WARN")):
            files[f"/nova/rmq.{name}.logback.xml"] = _rocketmq_logback(name, level).encode()
        if self.acl:
            admin_user = harness_rocketmq.ADMIN_USER
            files["/nova/home/conf/tools.yml"] = f"accessKey: {admin_user[0]}\nsecretKey: {admin_user[1]}\n".encode()
        return files

    def ready(self) -> bool:
        if not port_open(self.ports["grpc"], self.host):
            return False
        self._smoke_test()
        return True

    def _smoke_test(self) -> None:
        """Send and receive one message through nova's adapter, as the harness does."""
        code = harness_rocketmq.smoke_script(ROOT, f"{self.host}:{self.ports['grpc']}",
                                             f"{self.host}:{self.ports['namesrv']}",
                                             harness_rocketmq.ADMIN_USER if self.acl else None)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise ContainerError(f"smoke test failed: {result.stderr.strip()[-800:]}")

    def after_first_start(self) -> None:
        if not self.acl:
            return
        for args in harness_rocketmq.APP_USER_ACL_STEPS:
            self.exec("bash", "/nova/mqadmin.sh", *args)


def _rocketmq_logback(name: str, level: str) -> str:
    pkg = "org.apache.rocketmq.logging.ch.qos.logback"
    return f"""<configuration>
  <appender name="STDOUT" class="{pkg}.core.ConsoleAppender">
    <encoder class="{pkg}.classic.encoder.PatternLayoutEncoder">
      <pattern>%d{{HH:mm:ss.SSS}} {name} %-5p %t %c{{0}} - %m%n</pattern>
    </encoder>
  </appender>
  <root level="{level}"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


BROKERS: dict[str, type[BrokerContainer]] = {
    "kafka": KafkaContainer,
    "rabbitmq": RabbitMQContainer,
    "rocketmq": RocketMQContainer,
}


# --- the run --------------------------------------------------------------------------------------


class Session:
    """The broker containers of one test run; ``close()`` removes every one of them.

    >>> session = Session(Settings.from_env({}))      # doctest: +SKIP
    >>> os.environ.update(session.prepare("kafka"))  # doctest: +SKIP
    >>> session.start("kafka")                       # doctest: +SKIP
    """

    def __init__(self, settings: Settings, docker_client: Callable[[], Any] | None = None) -> None:
        # Without a registry the reaper image cannot be pulled; close() does its job.
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        self.settings = settings
        self.id = uuid.uuid4().hex[:12]
        self.labels = {
            LABEL: "1",
            f"{LABEL}.session": self.id,
            f"{LABEL}.pid": str(os.getpid()),
            f"{LABEL}.host": socket.gethostname(),
        }
        self._docker_client = docker_client or _docker_from_env
        self.workdir = Path(tempfile.mkdtemp(prefix="nova-containers-"))
        self.certs = Certs(self.workdir / "certs", (settings.host,))
        self.brokers: dict[str, BrokerContainer] = {}
        self.closed = False

    def docker(self) -> Any:
        return self._docker_client()

    def check_docker(self) -> None:
        """Fail early, with what to do, when no Docker engine answers."""
        try:
            self.docker().ping()
        except Exception as exc:
            raise ContainerError(
                f"--containers needs a running Docker engine ({exc}); start one, or drop --containers "
                "to use the harness (python tools/brokers.py up ...)"
            ) from exc

    def prepare(self, name: str) -> dict[str, str]:
        """Make the certificates and return the broker's ``NOVA_*`` variables (nothing started)."""
        if name not in self.brokers:
            self.certs.make()
            self.brokers[name] = BROKERS[name](self.settings, self.certs, self.labels)
        return self.brokers[name].env()

    def start(self, name: str) -> None:
        broker = self.brokers[name]
        if not broker.started:
            self.remove_orphans()
            broker.start()

    def restart(self, name: str) -> None:
        self.brokers[name].restart()

    def close(self) -> None:
        """Remove every container of this session, whatever state it is in; idempotent."""
        if self.closed:
            return
        self.closed = True
        for broker in self.brokers.values():
            broker.stop()
        with contextlib.suppress(Exception):
            self._remove({"label": f"{LABEL}.session={self.id}"}, lambda labels: True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def remove_orphans(self) -> None:
        """Remove containers left on this machine by a run whose process is gone (killed, say)."""
        here = socket.gethostname()

        def orphaned(labels: dict[str, str]) -> bool:
            if labels.get(f"{LABEL}.host") != here:
                return False
            try:
                os.kill(int(labels.get(f"{LABEL}.pid", "0")), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
            return False

        self._remove({"label": LABEL}, orphaned)

    def _remove(self, filters: dict[str, str], which: Callable[[dict[str, str]], bool]) -> None:
        client = self.docker()
        for container in client.containers.list(all=True, filters=filters):
            if which(container.labels):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)


def _docker_from_env() -> Any:
    import docker

    return docker.from_env()
