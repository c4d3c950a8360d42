"""RabbitMQ as a local process: Debian's ``rabbitmq-server``, no Docker.

    python tools/brokers.py up rabbitmq        # install if missing, configure, start, wait
    python tools/brokers.py restart rabbitmq   # stop and start, keeping queues and messages
    python tools/brokers.py down rabbitmq      # stop and wipe data: the next `up` starts empty
    eval "$(python tools/brokers.py env rabbitmq)"

Listeners (127.0.0.1 only): AMQP 5672, AMQPS 5671 (self-signed CA and server
certificate with SAN IP:127.0.0.1), Erlang distribution 25672, epmd 4369.
The application user ``nova`` (password with URL-reserved characters, so
escaping is exercised) gets full permissions on vhost ``/``. Needs root (apt,
and ``rabbitmqctl`` runs as the ``rabbitmq`` user). TLS files live in
``/etc/rabbitmq/nova-tls/`` because the server (user ``rabbitmq``) must read
them; a copy of the CA is kept in ``~/.cache/nova/run/rabbitmq/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["down", "env", "queues", "restart", "up"]

HOST = "127.0.0.1"
PORT = 5672
TLS_PORT = 5671
DIST_PORT = 25672
USER = "nova"
PASSWORD = "nova-s3cret/p@ss:w#rd"
NODENAME = "rabbit@localhost"

ETC = Path("/etc/rabbitmq")
TLS_DIR = ETC / "nova-tls"
DATA = Path("/var/lib/rabbitmq/mnesia")
RUN = Path.home() / ".cache" / "nova" / "run" / "rabbitmq"
CA_FILE = RUN / "ca.pem"

CONF = f"""\
# Written by nova's tools/harness/rabbitmq.py; rewritten on every `up`.
listeners.tcp.default = {HOST}:{PORT}
listeners.ssl.default = {HOST}:{TLS_PORT}
ssl_options.cacertfile = {TLS_DIR}/ca.pem
ssl_options.certfile = {TLS_DIR}/server.pem
ssl_options.keyfile = {TLS_DIR}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
distribution.listener.interface = {HOST}
distribution.listener.port_range.min = {DIST_PORT}
distribution.listener.port_range.max = {DIST_PORT}
# Tests and CI boxes often have little free disk; do not block publishers on it.
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
"""

ENV_CONF = f"""\
# Written by nova's tools/harness/rabbitmq.py.
NODENAME={NODENAME}
ERL_EPMD_ADDRESS={HOST}
"""


def _log(message: str) -> None:
    print(f"[rabbitmq] {message}", file=sys.stderr, flush=True)


def _run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERL_EPMD_ADDRESS": HOST, "RABBITMQ_NODENAME": NODENAME}
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def _installed() -> bool:
    return shutil.which("rabbitmq-server", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None


def _install() -> None:
    """apt-get install rabbitmq-server without letting its post-install start a server."""
    _log("installing Debian's rabbitmq-server (apt-get)")
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if not policy.exists():
        # The standard Debian way to keep maintainer scripts from starting services.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"],
            check=True,
            env=env,
            timeout=1200,
        )
    finally:
        if created_policy:
            policy.unlink()
    # If a server started anyway (different init setup), stop it: we reconfigure below.
    for node in (NODENAME, f"rabbit@{socket.gethostname()}"):
        if _run("rabbitmqctl", "-n", node, "-q", "ping", "-t", "5", check=False, timeout=30).returncode == 0:
            _log(f"stopping the server the package started ({node})")
            _run("rabbitmqctl", "-n", node, "stop", check=False)


def _write_tls() -> None:
    """Self-signed CA and a server certificate for 127.0.0.1 (kept across runs)."""
    if (TLS_DIR / "server.pem").exists() and (TLS_DIR / "ca.pem").exists():
        return
    _log(f"creating a CA and server certificate in {TLS_DIR}")
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = TLS_DIR / "ca.key", TLS_DIR / "ca.pem"
    key, csr, pem = TLS_DIR / "server.key", TLS_DIR / "server.csr", TLS_DIR / "server.pem"
    ext = TLS_DIR / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    openssl = ("openssl",)
    _run(*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", "/CN=nova test CA", "-keyout", str(ca_key), "-out", str(ca_pem),
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _run(*openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _run(*openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(pem))  # fmt: skip
    csr.unlink()


def _fix_tls_permissions() -> None:
    shutil.chown(TLS_DIR, "rabbitmq", "rabbitmq")
    TLS_DIR.chmod(0o750)
    for path in TLS_DIR.iterdir():
        shutil.chown(path, "rabbitmq", "rabbitmq")
        path.chmod(0o600 if path.suffix == ".key" else 0o644)
    RUN.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TLS_DIR / "ca.pem", CA_FILE)


def _configure() -> None:
    ETC.mkdir(parents=True, exist_ok=True)
    _write_tls()
    _fix_tls_permissions()
    (ETC / "rabbitmq.conf").write_text(CONF)
    (ETC / "rabbitmq-env.conf").write_text(ENV_CONF)


def _ping() -> bool:
    return _run("rabbitmq-diagnostics", "-q", "ping", "-t", "5", check=False, timeout=30).returncode == 0


def _amqp_answers(port: int, tls: bool) -> bool:
    return amqp_answers(HOST, port, TLS_DIR / "ca.pem" if tls else None)


def amqp_answers(host: str, port: int, cafile: Path | None = None) -> bool:
    """True once the listener completes a TCP (and, given the CA's ``cafile``, a TLS) handshake and speaks AMQP."""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=3))
            if cafile is not None:
                context = ssl.create_default_context(cafile=str(cafile))
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname=host))
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
            return len(frame) == 7 and frame[0] == 1  # a METHOD frame: Connection.Start
    except OSError:
        return False


def _wait_ready(deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if _ping() and _amqp_answers(PORT, tls=False) and _amqp_answers(TLS_PORT, tls=True):
            return
        time.sleep(0.5)
    raise RuntimeError(f"RabbitMQ did not become ready within {deadline_s:.0f} s; see /var/log/rabbitmq/")


def _start() -> None:
    _log("starting rabbitmq-server -detached")
    # -detached returns at once; the node boots in the background.
    _run("rabbitmq-server", "-detached", timeout=60)
    _wait_ready()


def _stop() -> None:
    if not _ping():
        _kill_node()  # a node stuck while booting does not answer ping, and holds the ports
        return
    _log("stopping")
    try:
        _run("rabbitmqctl", "stop", timeout=120)
    except (subprocess.TimeoutExpired, RuntimeError) as exc:
        _log(f"rabbitmqctl stop did not finish ({type(exc).__name__}); killing the node")
        _kill_node()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not _ping() and not _amqp_answers(PORT, tls=False):
            return
        time.sleep(0.3)
    raise RuntimeError("RabbitMQ did not stop within 60 s")


def _kill_node() -> None:
    """SIGKILL the Erlang VM of our node (found by its RABBITMQ_NODENAME), and any stuck rabbitmqctl."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"beam.smp" in cmdline and f"RABBITMQ_NODENAME={NODENAME}".encode() in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _ensure_user() -> None:
    users = _run("rabbitmqctl", "-q", "list_users").stdout.split()
    if USER in users:
        _run("rabbitmqctl", "-q", "change_password", USER, PASSWORD)
    else:
        _run("rabbitmqctl", "-q", "add_user", USER, PASSWORD)
    _run("rabbitmqctl", "-q", "set_permissions", "-p", "/", USER, ".*", ".*", ".*")
    _run("rabbitmqctl", "-q", "authenticate_user", USER, PASSWORD)


def _user_ok() -> bool:
    return _run("rabbitmqctl", "-q", "authenticate_user", USER, PASSWORD, check=False).returncode == 0


def up() -> None:
    """Install (if needed), configure, start and wait until the app user can log in."""
    started = time.monotonic()
    if not _installed():
        _install()
    conf = ETC / "rabbitmq.conf"
    configured = conf.exists() and conf.read_text() == CONF
    if configured and _ping() and _amqp_answers(PORT, tls=False) and _amqp_answers(TLS_PORT, tls=True):
        if _user_ok():
            _log("already running")
            return
        _ensure_user()
        return
    _stop()
    _configure()
    _start()
    _ensure_user()
    _log(f"up in {time.monotonic() - started:.1f} s: amqp://{HOST}:{PORT}/ and amqps://{HOST}:{TLS_PORT}/")


def down() -> None:
    """Stop the server and wipe its data (queues, messages, users)."""
    if _installed():
        _stop()
    if DATA.exists():
        for child in DATA.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    _log("down (data wiped)")


def queues(prefix: str = "") -> list[tuple[str, int, int, int]]:
    """(name, ready, unacked, consumers) of the node's queues whose name starts with ``prefix``
    and that hold a message: where a task a run misses is waiting, if anywhere."""
    out = _run("rabbitmqctl", "-q", "list_queues", "--no-table-headers",
               "name", "messages_ready", "messages_unacknowledged", "consumers", timeout=60).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].startswith(prefix) and fields[1].isdigit() and fields[2].isdigit():
            name, ready, unacked, consumers = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
            if ready or unacked:
                rows.append((name, ready, unacked, consumers))
    return rows


def restart() -> None:
    """Stop and start again; durable queues and persistent messages survive."""
    _stop()
    _configure()
    _start()
    _ensure_user()


def env() -> dict[str, str]:
    """Endpoints for tests: ``eval "$(python tools/brokers.py env rabbitmq)"``."""
    return client_env(HOST, PORT, TLS_PORT, CA_FILE)


def client_env(host: str, port: int, tls_port: int, ca_file: Path) -> dict[str, str]:
    """The ``NOVA_RABBITMQ_*`` variables of the app user on these listeners (this node's, the
    cluster's first node's and the container's)."""
    return {
        "NOVA_RABBITMQ_URL": url("amqp", host, port),
        "NOVA_RABBITMQ_TLS_URL": url("amqps", host, tls_port),
        "NOVA_RABBITMQ_CA_FILE": str(ca_file),
        "NOVA_RABBITMQ_USER": USER,
        "NOVA_RABBITMQ_PASSWORD": PASSWORD,
    }


def url(scheme: str, host: str, port: int) -> str:
    """The app user's URL of one listener (user and password escaped)."""
    return f"{scheme}://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@{host}:{port}/"
