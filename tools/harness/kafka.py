"""A single-node Kafka 4.x (KRaft, broker+controller) as a local process.

    python tools/brokers.py up kafka        # download once, configure, start, wait until ready
    eval "$(python tools/brokers.py env kafka)"
    python tools/brokers.py restart kafka   # stop and start again, keeping the data
    python tools/brokers.py down kafka      # stop it and delete its data

Jars come from Maven Central through Maven (a throwaway ``pom.xml`` and
``maven-dependency-plugin:copy-dependencies``) into
``~/.cache/nova/kafka-<version>/libs``; everything else (config, data, logs,
pid, certificates) lives under ``~/.cache/nova/run/kafka/``. Needs Java 17+,
Maven 3.8+, openssl, and aiokafka in the Python running this (it checks
readiness the way a client sees it: an admin client must list topics).

Listeners, all on 127.0.0.1:

    9092 PLAINTEXT        9094 SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
    9095 SSL              9096 SASL_SSL (same mechanisms)      9093 controller (internal)

The SSL listeners present a certificate signed by a CA made here (SAN
IP:127.0.0.1 and DNS:localhost); they also *accept* a client certificate
signed by that CA (``ssl.client.auth=requested``), for mutual-TLS tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .processes import owned_pid, port_open, stop_pids

__all__ = ["down", "env", "restart", "up"]

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j-core that kafka 4.1.1 itself depends on
HOST = "127.0.0.1"
PORTS = {"PLAINTEXT": 9092, "CONTROLLER": 9093, "SASL_PLAINTEXT": 9094, "SSL": 9095, "SASL_SSL": 9096}
# A throwaway broker on loopback: fixed test credentials are fine and keep `env` stable.
USER = "nova"
PASSWORD = "nova-kafka-secret-7f3d"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-kafka-secret-2c91"
READY_TIMEOUT_S = 120.0
# Small heap (the machine has 2 cores and runs other brokers too); G1 keeps pauses short.
SERVER_JVM = ("-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
STOP_TIMEOUT_S = 30.0

CACHE = Path(os.environ.get("NOVA_CACHE_DIR", Path.home() / ".cache" / "nova"))
LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
RUN = CACHE / "run" / "kafka"
DATA = RUN / "data"
CERTS = RUN / "certs"
PID_FILE = RUN / "kafka.pid"
LOG_FILE = RUN / "logs" / "server.log"
CONFIG = RUN / "server.properties"
LOG4J_CONFIG = RUN / "log4j2.properties"


def env() -> dict[str, str]:
    """Endpoints and credentials as ``NOVA_KAFKA_*`` variables (nothing is started)."""
    return client_env(lambda listener: f"{HOST}:{PORTS[listener]}", CERTS)


def client_env(servers: Callable[[str], str], certs: Path) -> dict[str, str]:
    """The ``NOVA_KAFKA_*`` variables, given a listener's bootstrap servers (``servers("SSL")``) and the
    folder of the CA and client certificate (this node's, the cluster's and the container's)."""
    return {
        "NOVA_KAFKA_BOOTSTRAP": servers("PLAINTEXT"),
        "NOVA_KAFKA_SASL_BOOTSTRAP": servers("SASL_PLAINTEXT"),
        "NOVA_KAFKA_SSL_BOOTSTRAP": servers("SSL"),
        "NOVA_KAFKA_SASL_SSL_BOOTSTRAP": servers("SASL_SSL"),
        "NOVA_KAFKA_CA_FILE": str(certs / "ca.pem"),
        "NOVA_KAFKA_CLIENT_CERT_FILE": str(certs / "client.pem"),
        "NOVA_KAFKA_CLIENT_KEY_FILE": str(certs / "client.key"),
        "NOVA_KAFKA_USER": USER,
        "NOVA_KAFKA_PASSWORD": PASSWORD,
    }


def up() -> None:
    """Start Kafka unless it already runs; return once an admin client lists topics."""
    if _running_pid() is not None:
        _wait_ready(time.monotonic() + READY_TIMEOUT_S)
        print(f"kafka {KAFKA_VERSION} already running (pid {_running_pid()})", file=sys.stderr)
        return
    _fetch_jars()
    _make_certs()
    _write_config()
    _format_storage()
    _start()


def down() -> None:
    """Stop Kafka (by the pid it recorded) and delete its data."""
    _stop()
    shutil.rmtree(DATA, ignore_errors=True)
    print("kafka stopped, data removed", file=sys.stderr)


def restart() -> None:
    """Stop and start again with the same data (topics, offsets, users survive)."""
    _stop()
    if not DATA.exists():  # never started here: a restart is a plain start
        up()
        return
    _fetch_jars()
    _make_certs()
    _write_config()
    _start()


# --- download -----------------------------------------------------------------------------------

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>nova.harness</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <!-- kafka logs through slf4j 1.7; without a binding it logs nothing at all -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def _fetch_jars() -> None:
    if LIBS.is_dir() and any(LIBS.glob("kafka_2.13-*.jar")):
        return
    for tool in ("java", "mvn", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"kafka harness needs `{tool}` on PATH (Java 17+, Maven 3.8+, openssl)")
    LIBS.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading kafka {KAFKA_VERSION} jars with maven into {LIBS} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=LIBS.parent) as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        staged = Path(tmp) / "libs"
        _run(
            [
                "mvn", "-B", "-q", "-f", str(pom),
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={staged}",
            ]
        )  # fmt: skip
        # Rename only a complete download, so an interrupted one is never mistaken for the cache.
        staged.rename(LIBS)


# --- certificates -------------------------------------------------------------------------------


def _make_certs(certs: Path = CERTS) -> None:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM, PKCS#8)."""
    if (certs / "server.keystore.pem").exists() and (certs / "client.pem").exists():
        return
    shutil.rmtree(certs, ignore_errors=True)
    certs.mkdir(parents=True)
    c = certs
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
          "-subj", "/CN=nova test CA", "-keyout", str(c / "ca.key"), "-out", str(c / "ca.pem"),
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        # genpkey writes an unencrypted PKCS#8 key, the only unencrypted form Kafka's PEM store reads.
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
              "-out", str(c / f"{name}.key")])  # fmt: skip
        _run(["openssl", "req", "-new", "-key", str(c / f"{name}.key"), "-subj", f"/CN=nova-{name}",
              "-out", str(c / f"{name}.csr")])  # fmt: skip
        (c / f"{name}.ext").write_text(ext)
        _run(["openssl", "x509", "-req", "-in", str(c / f"{name}.csr"), "-CA", str(c / "ca.pem"),
              "-CAkey", str(c / "ca.key"), "-CAcreateserial", "-days", "3650", "-sha256",
              "-extfile", str(c / f"{name}.ext"), "-out", str(c / f"{name}.pem")])  # fmt: skip
    # Kafka's file-based PEM keystore: private key followed by the certificate chain.
    (c / "server.keystore.pem").write_text(
        (c / "server.key").read_text() + (c / "server.pem").read_text() + (c / "ca.pem").read_text()
    )
    # A second, unrelated CA for "untrusted certificate" tests.
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
          "-subj", "/CN=some other CA", "-keyout", str(c / "other-ca.key"),
          "-out", str(c / "other-ca.pem")])  # fmt: skip


# --- configuration ------------------------------------------------------------------------------


def _write_config() -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    (RUN / "logs").mkdir(exist_ok=True)
    quorum = f"controller.quorum.bootstrap.servers={HOST}:{PORTS['CONTROLLER']}"
    CONFIG.write_text(server_properties(node_id=1, ports=PORTS, quorum=quorum, data=DATA, certs=CERTS))
    LOG4J_CONFIG.write_text(_LOG4J)


def server_properties(
    *,
    node_id: int,
    ports: dict[str, int],
    quorum: str,
    data: Path,
    certs: Path,
    replicas: int = 1,
    extra: tuple[str, ...] = (),
    bind: str = HOST,
    advertised: str = HOST,
) -> str:
    """One node's server.properties (this node's, each of ``kafka_cluster.py``'s and the container's of
    ``conformance/containers.py``); ``replicas`` > 1 (a cluster) sets the replication defaults. The
    client listeners listen on ``bind`` and are advertised as ``advertised``; the controller's stays on HOST."""
    p = ports
    min_isr = 1 if replicas == 1 else 2
    plain_users = f'user_{ADMIN_USER}="{ADMIN_PASSWORD}" user_{USER}="{PASSWORD}"'
    lines = [
        "process.roles=broker,controller",
        f"node.id={node_id}",
        quorum,
        "controller.listener.names=CONTROLLER",
        "listeners="
        + ",".join(f"{name}://{HOST if name == 'CONTROLLER' else bind}:{port}" for name, port in p.items()),
        "advertised.listeners="
        + ",".join(f"{name}://{advertised}:{port}" for name, port in p.items() if name != "CONTROLLER"),
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=1",
        # nova creates its topics itself (ensure_topics); auto-creation would hide a missing call.
        "auto.create.topics.enable=false",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=1",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
    ]
    if replicas > 1:
        # A topic created without a replication factor gets the cluster's; acks=all then
        # needs two live replicas, so one node can fail without losing a confirmed record.
        lines += [f"default.replication.factor={replicas}", f"min.insync.replicas={min_isr}"]
    lines += [
        "group.initial.rebalance.delay.ms=0",
        "group.min.session.timeout.ms=1000",
        *extra,
        # SASL
        "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
    ]
    for listener in ("sasl_plaintext", "sasl_ssl"):
        lines += [
            f"listener.name.{listener}.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
            f"listener.name.{listener}.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"listener.name.{listener}.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ]
    # TLS (both SSL and SASL_SSL listeners)
    lines += [
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={certs / 'server.keystore.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={certs / 'ca.pem'}",
        "listener.name.ssl.ssl.client.auth=requested",
        "ssl.endpoint.identification.algorithm=https",
    ]
    return "\n".join(lines) + "\n"


_LOG4J = (
    "status = warn\n"
    "appender.console.type = Console\n"
    "appender.console.name = STDOUT\n"
    "appender.console.layout.type = PatternLayout\n"
    "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
    "rootLogger.level = INFO\n"
    "rootLogger.appenderRef.stdout.ref = STDOUT\n"
    "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
    "logger.request.name = kafka.request.logger\nlogger.request.level = WARN\n"
)


def _java(main: str, *args: str, jvm: tuple[str, ...] = ("-Xmx256m",), log4j: Path = LOG4J_CONFIG) -> list[str]:
    return [
        "java", *jvm, f"-Dlog4j2.configurationFile={log4j}",
        "-cp", f"{LIBS}/*", main, *args,
    ]  # fmt: skip


def _format_storage() -> None:
    if (DATA / "meta.properties").exists():
        return
    cluster_id = str(_uuid_base64())
    _run(
        _java(
            "kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted",
            "-t", cluster_id, "-c", str(CONFIG),
            "--add-scram", f'SCRAM-SHA-256=[name="{USER}",password="{PASSWORD}"]',
            "--add-scram", f'SCRAM-SHA-512=[name="{USER}",password="{PASSWORD}"]',
        )
    )  # fmt: skip


def _uuid_base64() -> str:
    """What ``StorageTool random-uuid`` prints (url-safe base64 of 16 random bytes), without a JVM."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --- process ------------------------------------------------------------------------------------


def _start() -> None:
    for name, port in PORTS.items():
        if port_open(port):
            raise SystemExit(
                f"port {HOST}:{port} ({name}) is already taken by another process; stop it (or an old kafka) first"
            )
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LOG_FILE.open("ab") as log:
        process = subprocess.Popen(
            _java("kafka.Kafka", str(CONFIG), jvm=SERVER_JVM),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=RUN,
            start_new_session=True,  # outlive this command; `down` stops it by pid
        )
    PID_FILE.write_text(str(process.pid))
    try:
        _wait_ready(started + READY_TIMEOUT_S, process)
    except BaseException:
        _stop()
        raise
    print(
        f"kafka {KAFKA_VERSION} ready on {HOST}:{PORTS['PLAINTEXT']} "
        f"(pid {process.pid}, {time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )


def _running_pid() -> int | None:
    return owned_pid(PID_FILE, b"kafka.Kafka", str(CONFIG).encode())


def _stop() -> None:
    pid = _running_pid()
    if pid is not None:
        # kafka shuts down cleanly on TERM (flushes, closes the log)
        stop_pids([pid], kill=False, timeout=STOP_TIMEOUT_S)
    PID_FILE.unlink(missing_ok=True)


def _wait_ready(deadline: float, process: subprocess.Popen[bytes] | None = None) -> None:
    try:
        from aiokafka.admin import AIOKafkaAdminClient
    except ImportError:
        raise SystemExit(
            "the kafka harness checks readiness with aiokafka: pip install 'nova-taskqueue[kafka]'"
        ) from None

    async def list_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{PORTS['PLAINTEXT']}", request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            await admin.close()

    last: BaseException | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"kafka exited with code {process.returncode} while starting\n{_log_tail()}")
        if port_open(PORTS["PLAINTEXT"]):
            try:
                asyncio.run(asyncio.wait_for(list_topics(), 10))
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
        time.sleep(0.5)
    raise SystemExit(f"kafka not ready after {READY_TIMEOUT_S:.0f} s (last error: {last!r}); log tail:\n{_log_tail()}")


def _log_tail(lines: int = 40) -> str:
    try:
        return "\n".join(LOG_FILE.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {LOG_FILE})"


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shown = " ".join(cmd[:6]) + (" ..." if len(cmd) > 6 else "")
        raise SystemExit(f"`{shown}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
