"""Build local Docker images of the three brokers, for machines that cannot pull the official ones.

    python tools/images.py build kafka|rabbitmq|rocketmq|all   # prints each image's tag on stdout
    python tools/images.py tag kafka|rabbitmq|rocketmq           # the tag `build` makes (nothing built)

Each image is a Debian root filesystem made by ``debootstrap`` from Debian's mirror
(``NOVA_DEBIAN_MIRROR``, default deb.debian.org) plus Debian's JRE or
``rabbitmq-server`` and, for Kafka and RocketMQ, the jars the harness downloads from
Maven Central into ``~/.cache/nova``. It is laid out like the official image
(``apache/kafka``: ``/opt/kafka/{bin,libs,config}``, user ``appuser``;
``apache/rocketmq``: ``$ROCKETMQ_HOME/{bin,lib,conf}``, user ``rocketmq``;
``rabbitmq``: ``rabbitmq-server`` on ``PATH``, ``/etc/rabbitmq``, user ``rabbitmq``),
so the ``--containers`` fixtures run either. The root filesystem goes straight into
``docker import`` (no ``docker build``: no registry, no bridge network and no layer
copies on the vfs storage driver are needed).

Caching: the debootstrapped root filesystem is kept as a tarball under
``~/.cache/nova/images/`` keyed by suite and package list, and each image carries the
hash of everything that went into it as the label ``nova.image.inputs``; ``build``
skips an image whose label already matches. Needs root (debootstrap), ``debootstrap``,
a Docker engine and, for the jars, Java and Maven (as the harness does).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import kafka as harness_kafka
from harness import rocketmq as harness_rocketmq

__all__ = ["IMAGES", "ImageSpec", "build", "inputs_key", "tag"]

#: Bump when the way images are assembled changes, so cached images are rebuilt.
BUILDER_VERSION = "1"
SUITE = "trixie"  # RabbitMQ 4.0 and OpenJDK 21, as in the official images
MIRROR = os.environ.get("NOVA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("NOVA_CACHE_DIR", Path.home() / ".cache" / "nova")) / "images"
LABEL = "nova.image.inputs"
# Left out of the image: package caches, indexes and documentation (about a third of its size).
TRIM = ("var/cache/apt/archives/", "var/lib/apt/lists/", "usr/share/doc/", "usr/share/man/",
        "usr/share/locale/", "usr/share/info/")  # fmt: skip


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    home: str


@dataclass(frozen=True)
class ImageSpec:
    """What one image is made of: Debian packages, files on top, a user and the image config."""

    name: str
    tag: str
    packages: tuple[str, ...]
    user: User | None
    #: path in the image -> (content, mode); directories end with "/" and have no content.
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    #: host directory -> directory in the image (jars), copied file by file.
    trees: dict[Path, str] = field(default_factory=dict)
    changes: tuple[str, ...] = ()


# --- kafka -------------------------------------------------------------------------------------

KAFKA_HOME = "/opt/kafka"

_KAFKA_RUN_CLASS = """#!/bin/bash
# The distribution's kafka-run-class.sh, reduced to what a container needs: the jars in
# $base_dir/libs and the same environment variables (heap, JVM, log4j, extra options).
base_dir=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    -name) shift 2 ;;
    -loggc | -daemon) shift ;;
    *) break ;;
  esac
done
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx256M}
KAFKA_JVM_PERFORMANCE_OPTS=${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.properties}
LOG_DIR=${LOG_DIR:-$base_dir/logs}
mkdir -p "$LOG_DIR"
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS $KAFKA_LOG4J_OPTS "-Dkafka.logs.dir=$LOG_DIR" \\
  $KAFKA_OPTS -cp "$base_dir/libs/*" "$@"
"""

_KAFKA_SERVER_START = """#!/bin/bash
if [ $# -lt 1 ]; then
  echo "USAGE: $0 server.properties [--override property=value]*" >&2
  exit 1
fi
base_dir=$(dirname "$0")
export KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/../config/log4j2.properties}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
exec "$base_dir/kafka-run-class.sh" kafka.Kafka "$@"
"""

_KAFKA_STORAGE = """#!/bin/bash
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
"""

_KAFKA_RUN = """#!/bin/bash
# What `docker run <image>` starts: a single-node KRaft broker and controller with
# /opt/kafka/config/server.properties (PLAINTEXT on 9092), formatted on first start.
set -e
props=/opt/kafka/config/server.properties
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  id=${CLUSTER_ID:-$(/opt/kafka/bin/kafka-storage.sh random-uuid)}
  /opt/kafka/bin/kafka-storage.sh format --standalone --ignore-formatted -t "$id" -c "$props"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$props"
"""

_KAFKA_SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=localhost:9093
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=PLAINTEXT://localhost:9092
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=/var/lib/kafka/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def _log4j2(level: str) -> bytes:
    return (
        "status = warn\n"
        "appender.console.type = Console\n"
        "appender.console.name = STDOUT\n"
        "appender.console.target = SYSTEM_ERR\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
        f"rootLogger.level = {level}\n"
        "rootLogger.appenderRef.stdout.ref = STDOUT\n"
    ).encode()


def _kafka() -> ImageSpec:
    return ImageSpec(
        name="kafka",
        tag=f"nova-local/kafka:{harness_kafka.KAFKA_VERSION}",
        packages=("openjdk-21-jre-headless",),
        user=User("appuser", 1000, "/home/appuser"),
        files={
            f"{KAFKA_HOME}/bin/kafka-run-class.sh": (_KAFKA_RUN_CLASS.encode(), 0o755),
            f"{KAFKA_HOME}/bin/kafka-server-start.sh": (_KAFKA_SERVER_START.encode(), 0o755),
            f"{KAFKA_HOME}/bin/kafka-storage.sh": (_KAFKA_STORAGE.encode(), 0o755),
            f"{KAFKA_HOME}/config/server.properties": (_KAFKA_SERVER_PROPERTIES.encode(), 0o644),
            f"{KAFKA_HOME}/config/log4j2.properties": (_log4j2("INFO"), 0o644),
            f"{KAFKA_HOME}/config/tools-log4j2.properties": (_log4j2("WARN"), 0o644),
            f"{KAFKA_HOME}/logs/": (b"", 0o777),
            "/etc/kafka/docker/run": (_KAFKA_RUN.encode(), 0o755),
            "/var/lib/kafka/data/": (b"", 0o777),
        },
        trees={harness_kafka.LIBS: f"{KAFKA_HOME}/libs"},
        changes=("USER appuser", 'CMD ["/etc/kafka/docker/run"]', "EXPOSE 9092"),
    )


# --- rabbitmq ----------------------------------------------------------------------------------


def _rabbitmq() -> ImageSpec:
    sbin = "/usr/lib/rabbitmq/bin"  # the generic scripts (Debian's /usr/sbin wrappers log to files)
    path = f"{sbin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return ImageSpec(
        name="rabbitmq",
        tag=f"nova-local/rabbitmq:debian-{SUITE}",
        packages=("rabbitmq-server",),
        user=None,  # the package creates it
        files={
            "/etc/rabbitmq/conf.d/10-defaults.conf": (b"loopback_users.guest = false\nlog.console = true\n", 0o644),
            "/var/log/rabbitmq/": (b"", 0o1777),
        },
        changes=(
            f"ENV PATH={path}",
            "ENV RABBITMQ_DATA_DIR=/var/lib/rabbitmq",
            "ENV HOME=/var/lib/rabbitmq",
            "ENV LANG=C.UTF-8",
            "USER rabbitmq",
            'CMD ["rabbitmq-server"]',
            "EXPOSE 4369 5671 5672 25672",
        ),
    )


# --- rocketmq ----------------------------------------------------------------------------------

ROCKETMQ_HOME = f"/home/rocketmq/rocketmq-{harness_rocketmq.VERSION}"

_RMQ_JAVA = (
    'java ${JAVA_OPT} ${JAVA_OPT_EXT} -Drocketmq.home.dir="$ROCKETMQ_HOME" '
    '-cp "$ROCKETMQ_HOME/lib/*:$ROCKETMQ_HOME/conf"'
)

_RMQ_NAMESRV = f"""#!/bin/bash
# The distribution's mqnamesrv: a name server with a small heap unless JAVA_OPT says otherwise.
JAVA_OPT=${{JAVA_OPT:--Xms256m -Xmx256m -XX:+UseG1GC}}
exec {_RMQ_JAVA} -Drmq.logback.configurationFile="$ROCKETMQ_HOME/conf/rmq.namesrv.logback.xml" \\
  org.apache.rocketmq.namesrv.NamesrvStartup "$@"
"""

_RMQ_BROKER = f"""#!/bin/bash
# The distribution's mqbroker: a broker, or with --enable-proxy a proxy in local mode
# that embeds the broker (its -c becomes the proxy's -bc).
JAVA_OPT=${{JAVA_OPT:--Xms1g -Xmx1g -XX:+UseG1GC -XX:MaxDirectMemorySize=512m}}
proxy=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --enable-proxy) proxy=1 ;;
    -c) args+=(-bc "$2"); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ -n "$proxy" ]; then
  exec {_RMQ_JAVA} -Drmq.logback.configurationFile="$ROCKETMQ_HOME/conf/rmq.proxy.logback.xml" \\
    org.apache.rocketmq.proxy.ProxyStartup -pm local "${{args[@]}}"
fi
for i in "${{!args[@]}}"; do [ "${{args[$i]}}" = -bc ] && args[$i]=-c; done
exec {_RMQ_JAVA} -Drmq.logback.configurationFile="$ROCKETMQ_HOME/conf/rmq.broker.logback.xml" \\
  org.apache.rocketmq.broker.BrokerStartup "${{args[@]}}"
"""

_RMQ_PROXY = f"""#!/bin/bash
JAVA_OPT=${{JAVA_OPT:--Xms1g -Xmx1g -XX:+UseG1GC -XX:MaxDirectMemorySize=512m}}
exec {_RMQ_JAVA} -Drmq.logback.configurationFile="$ROCKETMQ_HOME/conf/rmq.proxy.logback.xml" \\
  org.apache.rocketmq.proxy.ProxyStartup "$@"
"""

_RMQ_ADMIN = f"""#!/bin/bash
JAVA_OPT=${{JAVA_OPT:--Xms64m -Xmx256m -XX:+UseSerialGC}}
exec {_RMQ_JAVA} -Drmq.logback.configurationFile="$ROCKETMQ_HOME/conf/rmq.tools.logback.xml" \\
  org.apache.rocketmq.tools.command.MQAdminStartup "$@"
"""


def _rmq_logback(level: str) -> bytes:
    pkg = "org.apache.rocketmq.logging.ch.qos.logback"
    return f"""<configuration>
  <appender name="STDOUT" class="{pkg}.core.ConsoleAppender">
    <encoder class="{pkg}.classic.encoder.PatternLayoutEncoder">
      <pattern>%d{{yyy-MM-dd HH:mm:ss.SSS}} %-5p %t %c{{0}} - %m%n</pattern>
    </encoder>
  </appender>
  <root level="{level}"><appender-ref ref="STDOUT"/></root>
</configuration>
""".encode()


def _rocketmq() -> ImageSpec:
    home = ROCKETMQ_HOME
    files: dict[str, tuple[bytes, int]] = {
        f"{home}/bin/mqnamesrv": (_RMQ_NAMESRV.encode(), 0o755),
        f"{home}/bin/mqbroker": (_RMQ_BROKER.encode(), 0o755),
        f"{home}/bin/mqproxy": (_RMQ_PROXY.encode(), 0o755),
        f"{home}/bin/mqadmin": (_RMQ_ADMIN.encode(), 0o755),
        f"{home}/conf/broker.conf": (
            b"brokerClusterName=DefaultCluster\nbrokerName=broker-a\nbrokerId=0\n"
            b"deleteWhen=04\nfileReservedTime=48\nbrokerRole=ASYNC_MASTER\nflushDiskType=ASYNC_FLUSH\n",
            0o644,
        ),
        f"{home}/conf/rmq-proxy.json": (json.dumps({"rocketMQClusterName": "DefaultCluster"}).encode(), 0o644),
    }
    for name in ("namesrv", "broker", "proxy"):
        files[f"{home}/conf/rmq.{name}.logback.xml"] = (_rmq_logback("INFO"), 0o644)
    files[f"{home}/conf/rmq.tools.logback.xml"] = (_rmq_logback("WARN"), 0o644)
    return ImageSpec(
        name="rocketmq",
        tag=f"nova-local/rocketmq:{harness_rocketmq.VERSION}",
        packages=("openjdk-21-jre-headless",),
        user=User("rocketmq", 3000, "/home/rocketmq"),
        files=files,
        trees={harness_rocketmq.LIBS: f"{home}/lib"},
        changes=(
            f"ENV ROCKETMQ_VERSION={harness_rocketmq.VERSION}",
            f"ENV ROCKETMQ_HOME={home}",
            "USER rocketmq",
            f"WORKDIR {home}/bin",
            'CMD ["sh", "mqnamesrv"]',
            "EXPOSE 9876 10909 10911 10912",
        ),
    )


IMAGES = {"kafka": _kafka, "rabbitmq": _rabbitmq, "rocketmq": _rocketmq}


# --- cache keys --------------------------------------------------------------------------------


def _rootfs_key(packages: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps([BUILDER_VERSION, SUITE, sorted(packages), TRIM]).encode()).hexdigest()[:16]


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def inputs_key(spec: ImageSpec) -> str:
    """Hash of everything that goes into the image; equal keys mean an equal image."""
    h = hashlib.sha256()
    h.update(json.dumps([BUILDER_VERSION, spec.tag, _rootfs_key(spec.packages), spec.changes,
                         spec.user and [spec.user.name, spec.user.uid, spec.user.home]]).encode())  # fmt: skip
    for path, (content, mode) in sorted(spec.files.items()):
        h.update(f"{path}\0{mode}\0".encode() + hashlib.sha256(content).digest())
    for root, target in sorted(spec.trees.items()):
        # Jars are versioned and never rewritten in place: name and size identify them.
        for f in _tree_files(root):
            h.update(f"{target}/{f.name}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()[:16]


# --- building ----------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _rootfs(packages: tuple[str, ...]) -> Path:
    """A trimmed Debian root filesystem with ``packages``, as a cached tarball."""
    tarball = CACHE / f"rootfs-{SUITE}-{_rootfs_key(packages)}.tar"
    if tarball.exists():
        return tarball
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building images needs `{tool}` (apt-get install -y debootstrap)")
    if os.geteuid() != 0:
        raise SystemExit("debootstrap needs root: run `python tools/images.py build ...` as root")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        _log(f"debootstrap {SUITE} (minbase + {', '.join(packages)}) from {MIRROR}")
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(root), MIRROR],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else result.stdout[-3000:]
            raise SystemExit(f"debootstrap failed ({result.returncode}):\n{result.stderr}\n{tail}")
        for rel in TRIM:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)  # only a complete tarball is ever taken for the cache
    _log(f"root filesystem cached in {tarball.name} ({time.monotonic() - started:.0f} s)")
    return tarball


def _image_key(image: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{ index .Config.Labels "{LABEL}" }}}}', image],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else None


def _with_user(name: str, content: bytes, user: User) -> bytes:
    """/etc/passwd, group, shadow and gshadow with the image's user added."""
    line = {
        "passwd": f"{user.name}:x:{user.uid}:{user.uid}::{user.home}:/bin/bash",
        "group": f"{user.name}:x:{user.uid}:",
        "shadow": f"{user.name}:!:19000:0:99999:7:::",
        "gshadow": f"{user.name}:!::",
    }[name]
    text = content.decode()
    if not text.endswith("\n"):
        text += "\n"
    return (text + line + "\n").encode()


def _members(spec: ImageSpec, base: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, io.BufferedIOBase | None]]:
    """The base root filesystem with the spec's user and files added (ownership by the user)."""
    replaced = {f"./{p.lstrip('/')}".rstrip("/") for p in spec.files}
    made: set[str] = set()  # paths already in the stream: parents are not emitted twice
    for member in base:
        name = member.name.rstrip("/")
        if name in replaced:
            continue
        made.add(name)
        data = base.extractfile(member) if member.isfile() else None
        if spec.user is not None and name in {f"./etc/{n}" for n in ("passwd", "group", "shadow", "gshadow")}:
            assert data is not None
            content = _with_user(name.rsplit("/", 1)[1], data.read(), spec.user)
            member.size = len(content)
            data = io.BytesIO(content)
        yield member, data
    owner = spec.user.uid if spec.user else 0
    now = int(time.time())

    def directory(path: str, mode: int = 0o755) -> Iterator[tuple[tarfile.TarInfo, None]]:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "./" + "/".join(parts[:i])
            if sub in made:
                continue
            made.add(sub)
            info = tarfile.TarInfo(sub)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode if i == len(parts) else 0o755, now
            info.uid = info.gid = owner
            yield info, None

    if spec.user is not None:
        yield from directory(spec.user.home)
    for path, (content, mode) in sorted(spec.files.items()):
        if path.endswith("/"):
            yield from directory(path, mode)
            continue
        yield from directory(path.rsplit("/", 1)[0])
        info = tarfile.TarInfo("./" + path.lstrip("/"))
        info.size, info.mode, info.mtime = len(content), mode, now
        info.uid = info.gid = owner
        yield info, io.BytesIO(content)
    for root, target in sorted(spec.trees.items()):
        yield from directory(target)
        for f in _tree_files(root):
            info = tarfile.TarInfo(f"./{target.lstrip('/')}/{f.name}")
            info.size, info.mode, info.mtime = f.stat().st_size, 0o644, now
            info.uid = info.gid = owner
            yield info, f.open("rb")  # type: ignore[misc]


def _fetch_jars(spec: ImageSpec) -> None:
    if spec.name == "kafka":
        harness_kafka._fetch_jars()
    elif spec.name == "rocketmq":
        harness_rocketmq.fetch_jars()


def build(name: str) -> str:
    """Build (unless an image with the same inputs exists) and return the image's tag."""
    spec = IMAGES[name]()
    _fetch_jars(spec)
    key = inputs_key(spec)
    if _image_key(spec.tag) == key:
        _log(f"{spec.tag} is up to date (inputs {key})")
        return spec.tag
    if shutil.which("docker") is None:
        raise SystemExit("building images needs the docker CLI and a running Docker engine")
    started = time.monotonic()
    rootfs = _rootfs(spec.packages)
    changes = [*spec.changes, f"LABEL {LABEL}={key}"]
    cmd = ["docker", "import", *[arg for c in changes for arg in ("--change", c)], "-", spec.tag]
    _log(f"importing {spec.tag}")
    importer = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert importer.stdin is not None and importer.stderr is not None
    try:
        with tarfile.open(rootfs) as base, tarfile.open(fileobj=importer.stdin, mode="w|") as out:
            for info, data in _members(spec, base):
                out.addfile(info, data)
                if data is not None:
                    data.close()
    except BrokenPipeError:
        pass  # docker import stopped reading: its error is reported below
    finally:
        importer.stdin.close()
    err = importer.stderr.read().decode(errors="replace")
    if importer.wait() != 0:
        raise SystemExit(f"docker import of {spec.tag} failed:\n{err}")
    _log(f"built {spec.tag} in {time.monotonic() - started:.0f} s (inputs {key})")
    return spec.tag


def tag(name: str) -> str:
    return IMAGES[name]().tag


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("build", "tag") or argv[1] not in (*IMAGES, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    names = list(IMAGES) if argv[1] == "all" else [argv[1]]
    for name in names:
        print(build(name) if argv[0] == "build" else tag(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
