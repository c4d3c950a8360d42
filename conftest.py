"""Root pytest setup: ``--broker`` picks the backend the conformance suite and
broker-specific tests run against (``sim`` by default).

Tests marked ``@pytest.mark.broker("kafka")`` run only with ``--broker kafka``.
A requested real broker that is not reachable makes its tests FAIL, not skip.

Where a real broker comes from: by default the ``NOVA_*`` variables name one the harness
started (``python tools/brokers.py up``); with ``--containers`` (or
``NOVA_BROKERS=containers``) the run starts it in a Docker container itself and sets
those same variables (see ``conformance/containers.py``). Tests that restart the broker
use the ``restart_broker`` fixture, which does either.

``--cluster`` runs the tests marked ``@pytest.mark.cluster`` (they stop and start nodes of
the harness's cluster, ``python tools/brokers.py up kafka --nodes 3``, and FAIL when its
variables are missing) and skips the other tests under ``tests/brokers/`` (some of them
restart the single-node harness broker). Without ``--cluster`` the cluster tests skip.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

BROKER_CHOICES = ("sim", "kafka", "rabbitmq", "rocketmq")
BROKER_SOURCES = ("harness", "containers")
ROOT = Path(__file__).resolve().parent
RESTART_TIMEOUT_S = 240.0
_SESSION = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        default="sim",
        choices=BROKER_CHOICES,
        help="backend for the conformance suite and broker tests (default: sim)",
    )
    parser.addoption(
        "--containers",
        action="store_true",
        default=False,
        help="start the real broker in a Docker container (testcontainers) instead of using the harness's; "
        "same as NOVA_BROKERS=containers",
    )
    parser.addoption(
        "--cluster",
        action="store_true",
        help="run the cluster tests (needs `python tools/brokers.py env BROKER --nodes 3`'s variables)",
    )


def uses_containers(config: pytest.Config) -> bool:
    """``--containers``, or ``NOVA_BROKERS=containers``; any other NOVA_BROKERS value is an error."""
    source = os.environ.get("NOVA_BROKERS", "") or "harness"
    if source not in BROKER_SOURCES:
        raise pytest.UsageError(f"NOVA_BROKERS={source!r}: use one of {', '.join(BROKER_SOURCES)}")
    return bool(config.getoption("--containers")) or source == "containers"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("--broker")
    cluster = config.getoption("--cluster")
    broker_tests = Path(__file__).resolve().parent / "tests" / "brokers"
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            if not cluster:
                item.add_marker(pytest.mark.skip(reason="cluster test: needs --cluster"))
        elif cluster and broker_tests in item.path.parents:
            item.add_marker(pytest.mark.skip(reason="single-node broker test: not with --cluster"))
        marker = item.get_closest_marker("broker")
        if marker is not None and marker.args and marker.args[0] != chosen:
            item.add_marker(pytest.mark.skip(reason=f"needs --broker {marker.args[0]}"))
        if chosen != "sim" and item.get_closest_marker("sim_only") is not None:
            item.add_marker(pytest.mark.skip(reason="needs SimBroker (virtual clock / fault injection)"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: stops and starts nodes of a harness cluster; runs only with --cluster")
    broker = config.getoption("--broker")
    containers = uses_containers(config)
    if broker == "rocketmq":
        # A failing test's report then shows each receive (topic, lane, got of asked) and when
        # each timer message was sent and received (tells a stalled pump from a held message).
        logging.getLogger("nova.rocketmq").setLevel(logging.DEBUG)
    if broker != "sim" and containers:
        _prepare_containers(config, broker)


def _prepare_containers(config: pytest.Config, broker: str) -> None:
    from conformance.containers import ENDPOINT_VARS, ContainerError, Session, Settings

    try:
        session = Session(Settings.from_env())
    except ContainerError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SESSION] = session
    atexit.register(session.close)
    try:
        session.check_docker()
        env = session.prepare(broker)
    except ContainerError as exc:
        session.close()
        raise pytest.UsageError(str(exc)) from None
    # Set before collection: some test modules read them at import. Variables the harness
    # exported earlier in this shell must not leak through.
    for var in ENDPOINT_VARS[broker]:
        os.environ.pop(var, None)
    os.environ.update(env)
    # SIGTERM (a CI timeout, say) becomes an interrupt, so pytest tears down and the
    # containers are removed; Ctrl-C already is one.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        session.close()


@pytest.fixture(scope="session", autouse=True)
def _broker_container(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``--containers``: the broker's container, started once for the run, removed after it."""
    session = request.config.stash.get(_SESSION, None)
    if session is None:
        yield
        return
    try:
        session.start(request.config.getoption("--broker"))
        yield
    finally:
        session.close()


@pytest.fixture
def restart_broker(request: pytest.FixtureRequest) -> Callable[[], Awaitable[None]]:
    """``await restart_broker()`` stops and starts the broker under test, keeping its data,
    and returns once it serves again (the harness's ``restart``, or the container's)."""
    broker = request.config.getoption("--broker")
    session = request.config.stash.get(_SESSION, None)

    async def restart() -> None:
        if session is not None:
            await asyncio.wait_for(asyncio.to_thread(session.restart, broker), RESTART_TIMEOUT_S)
            return
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tools" / "brokers.py"), "restart", broker,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(process.communicate(), RESTART_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode == 0, f"tools/brokers.py restart {broker} failed:\n{err.decode()}"

    return restart
