"""One entry point for lint, types, tests, conformance, fuzzing and benchmarks.

    nox -s tests                              # unit + property + conformance on SimBroker
    nox -s lint types
    nox -s conformance -- --broker kafka      # Kafka up (unless NOVA_KAFKA_BOOTSTRAP is set), run, down
    nox -s conformance -- --broker kafka --containers   # Kafka in a Docker container instead
    nox -s conformance -- --broker kafka --nodes 3   # the suite on a 3-node cluster (up unless NOVA_KAFKA_NODES=3)
    nox -s cluster -- --broker kafka|rabbitmq|rocketmq   # node-failure tests on a cluster: up, run, down
    nox -s chaos -- --broker kafka [--minutes 2] [--tasks N] [--workers 3] [--nodes 3]   # faults, no loss
    nox -s soak -- --broker kafka --tasks 1000000   # the chaos run until a million tasks (long; not in CI)
    nox -s fuzz                               # longer Hypothesis runs
    nox -s bench -- --broker sim
    nox -s browser                            # the dashboard in a real headless Chromium (Debian's)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import nox
import nox.virtualenv

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
ENDPOINT_VARS = {
    "kafka": "NOVA_KAFKA_BOOTSTRAP",
    "rabbitmq": "NOVA_RABBITMQ_URL",
    "rocketmq": "NOVA_ROCKETMQ_ENDPOINTS",
}
CLUSTER_NODES = {"kafka": 3, "rabbitmq": 3, "rocketmq": 2}  # default --nodes of the cluster session


def _install(session: nox.Session, extras: str = "all,dev") -> None:
    # `nox --no-venv` (CI, after the README's install) runs in the current environment as it is.
    if isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv):
        return
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit, property and conformance tests on SimBroker (no real broker needed)."""
    _install(session)
    session.run("pytest", "tests", "conformance", "--broker", "sim", "--ignore=tests/dashboard", *session.posargs)


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """The dashboard in a real headless Chromium: ``apt-get install -y chromium chromium-driver`` first
    (under CI a missing browser fails the run). Screenshots: artifacts/screenshots/."""
    _install(session)
    session.run("pytest", "tests/dashboard", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "nova", "conformance", "tests", "tools", "noxfile.py", "conftest.py")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    _install(session)
    session.run("mypy", "-p", "nova")


def _harness_env(session: nox.Session, broker: str, *extra: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "tools/brokers.py", "env", broker, *extra], check=True,
                         capture_output=True, text=True).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _take_option(args: list[str], name: str, default: str) -> str:
    """The value of ``name VALUE`` in ``args`` (removed from them), else ``default``."""
    if name not in args:
        return default
    at = args.index(name)
    value = args[at + 1]
    del args[at:at + 2]
    return value


def _up_empty(session: nox.Session, broker: str, *extra: str) -> None:
    """Bring a harness broker up with no data: a machine may keep the data of an earlier
    run (thousands of queues a node would spend minutes recovering, or never finish)."""
    session.run("python", "tools/brokers.py", "down", broker, *extra)
    session.run("python", "tools/brokers.py", "up", broker, *extra)


def _on_cluster(session: nox.Session, broker: str, nodes: int, pytest_args: list[str]) -> None:
    """Run pytest against an N-node harness cluster: brought up and down here unless its
    variables are already exported (``NOVA_<BROKER>_NODES`` equal to ``nodes``)."""
    count = ["--nodes", str(nodes)]
    started = os.environ.get(f"NOVA_{broker.upper()}_NODES") != str(nodes)
    env: dict[str, str] = {}
    if started:
        _up_empty(session, broker, *count)
        env = _harness_env(session, broker, *count)
    try:
        session.run("pytest", *pytest_args, env=env)
    finally:
        if started:
            session.run("python", "tools/brokers.py", "down", broker, *count)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """The conformance suite and broker tests against one backend: ``-- --broker NAME``.

    With ``--containers`` (or ``NOVA_BROKERS=containers``) pytest starts the broker in a
    Docker container itself; otherwise the harness brings it up and down around the run.
    With ``--nodes N`` (N > 1): the conformance suite alone, on a harness cluster.
    """
    args = list(session.posargs)
    nodes = int(_take_option(args, "--nodes", "1"))
    broker = "sim"
    if "--broker" in args:
        broker = args[args.index("--broker") + 1]
    else:
        args += ["--broker", broker]
    containers = "--containers" in args or os.environ.get("NOVA_BROKERS") == "containers"
    _install(session)
    if nodes > 1:
        # Not tests/brokers: some of them restart the single-node harness broker.
        _on_cluster(session, broker, nodes, ["conformance", *args])
        return
    started = False
    env: dict[str, str] = {}
    if broker != "sim" and not containers and not os.environ.get(ENDPOINT_VARS[broker]):
        _up_empty(session, broker)
        started = True
        env = _harness_env(session, broker)
    try:
        session.run("pytest", "conformance", "tests/brokers", *args, env=env)
    finally:
        if started:
            session.run("python", "tools/brokers.py", "down", broker)


@nox.session(python=PYTHON)
def cluster(session: nox.Session) -> None:
    """Node-failure tests on a harness cluster: ``-- --broker kafka|rabbitmq|rocketmq [--nodes N]``."""
    args = list(session.posargs)
    broker = _take_option(args, "--broker", "")
    if broker not in CLUSTER_NODES:
        session.error("say which cluster: nox -s cluster -- --broker kafka|rabbitmq|rocketmq")
    nodes = int(_take_option(args, "--nodes", str(CLUSTER_NODES[broker])))
    _install(session)
    tests = sorted(str(p) for p in Path("tests/brokers").glob(f"test_{broker}_cluster*.py"))
    _on_cluster(session, broker, nodes, [*tests, "--broker", broker, "--cluster", *args])


def _chaos(session: nox.Session, args: list[str]) -> None:
    """``tools/chaos.py ARGS`` against the harness's broker (or cluster, ``--nodes N``): brought up
    and down here unless its variables are exported."""
    def value(name: str, default: str) -> str:
        at = args.index(name) + 1 if name in args else len(args)
        return args[at] if at < len(args) else default

    broker = value("--broker", "")
    if broker not in ENDPOINT_VARS:
        session.error("say which broker: nox -s chaos -- --broker kafka|rabbitmq|rocketmq")
    nodes_text = value("--nodes", "1")
    if not nodes_text.isdigit():
        session.error(f"--nodes takes a node count, not {nodes_text!r}")
    nodes = int(nodes_text)
    count = ["--nodes", str(nodes)] if nodes > 1 else []
    exported = (bool(os.environ.get(ENDPOINT_VARS[broker]))
                and os.environ.get(f"NOVA_{broker.upper()}_NODES", "1") == str(nodes))
    _install(session)
    env: dict[str, str] = {}
    if not exported:
        _up_empty(session, broker, *count)
        env = _harness_env(session, broker, *count)
    try:
        session.run("python", "tools/chaos.py", *args, env=env)
    finally:
        if not exported:
            session.run("python", "tools/brokers.py", "down", broker, *count)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Tasks of every kind while workers are killed and the broker restarts; no loss, none early:
    ``-- --broker kafka|rabbitmq|rocketmq [--minutes 2] [--tasks N] [--workers 3] [--nodes 3]``
    (all options: ``python tools/chaos.py --help``)."""
    _chaos(session, list(session.posargs))


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The chaos run until ``--tasks`` (default 1,000,000) are enqueued: ``-- --broker
    kafka|rabbitmq|rocketmq [--tasks N]``, by default at 300 tasks/s with a kill -9 every ~30 s
    (Kafka's group stalls for its 30 s session timeout after each one) and up to 30 minutes of
    drain. Long (about an hour per million); not in CI."""
    args = list(session.posargs)
    for option, default in (("--tasks", "1000000"), ("--rate", "300"), ("--kill-every", "30"),
                            ("--drain-timeout", "1800"), ("--report-every", "60")):
        if option not in args:
            args += [option, default]
    _chaos(session, args)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Longer Hypothesis runs of the engine state machine and the property tests."""
    _install(session)
    session.run("pytest", "tests/test_engine_state_machine.py", "tests/test_batch_priority_property.py",
                "tests/test_codecs_property.py", "tests/test_clock_and_delay.py", *session.posargs,
                env={"NOVA_FUZZ_SCALE": os.environ.get("NOVA_FUZZ_SCALE", "20")})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks, nova side by side with the raw client: ``-- --broker sim|kafka|rabbitmq|rocketmq``."""
    _install(session)
    session.run("python", "tools/bench.py", *(session.posargs or ["--broker", "sim"]))
