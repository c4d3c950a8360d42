"""Fixtures for the broker-specific tests. Each broker's fixtures are prefixed with its name."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

# --- kafka ----------------------------------------------------------------------------------------

KAFKA_VARS = (
    "NOVA_KAFKA_BOOTSTRAP",
    "NOVA_KAFKA_SASL_BOOTSTRAP",
    "NOVA_KAFKA_SSL_BOOTSTRAP",
    "NOVA_KAFKA_SASL_SSL_BOOTSTRAP",
    "NOVA_KAFKA_CA_FILE",
    "NOVA_KAFKA_USER",
    "NOVA_KAFKA_PASSWORD",
)


@pytest.fixture
def kafka_env() -> dict[str, str]:
    """The NOVA_KAFKA_* endpoints; a missing one FAILS the test (never skips)."""
    missing = [v for v in KAFKA_VARS if not os.environ.get(v)]
    if missing:
        pytest.fail(
            f"kafka tests need {', '.join(missing)}: run `python tools/brokers.py up kafka` and "
            '`eval "$(python tools/brokers.py env kafka)"` first',
            pytrace=False,
        )
    return {k: v for k, v in os.environ.items() if k.startswith("NOVA_KAFKA_")}


@pytest.fixture
async def kafka_broker(kafka_env: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """Factory of KafkaBrokers (plaintext listener unless told otherwise), closed after the test."""
    from nova.brokers.kafka import KafkaBroker

    made: list[KafkaBroker] = []

    def factory(bootstrap: str | None = None, **kwargs: Any) -> KafkaBroker:
        # One partition unless a test asks for more: the shared test broker keeps every test's
        # topics, and each partition costs it an open file and two memory maps.
        kwargs.setdefault("partitions", 1)
        broker = KafkaBroker(bootstrap or kafka_env["NOVA_KAFKA_BOOTSTRAP"], **kwargs)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        await broker.close()


@pytest.fixture
def kafka_name() -> Callable[[str], str]:
    """Fresh topic/group names per test, so tests never see each other's records."""
    run = uuid.uuid4().hex[:10]
    return lambda kind: f"nova-test-{kind}-{run}"


# --- nova worker processes (tests/worker_support.py) on the broker --broker names -----------------

WORKER_ENDPOINTS = {"kafka": "NOVA_KAFKA_BOOTSTRAP", "rabbitmq": "NOVA_RABBITMQ_URL",
                    "rocketmq": "NOVA_ROCKETMQ_ENDPOINTS"}


@pytest.fixture
def broker_name(request: pytest.FixtureRequest) -> str:
    """``--broker``, a real one whose endpoint is set: sim skips, a missing endpoint FAILS."""
    name: str = request.config.getoption("--broker")
    if name == "sim":
        pytest.skip("needs a real broker: --broker kafka|rabbitmq|rocketmq")
    if not os.environ.get(WORKER_ENDPOINTS[name]):
        pytest.fail(f"needs {WORKER_ENDPOINTS[name]}: run `python tools/brokers.py up {name}` and "
                    f'`eval "$(python tools/brokers.py env {name})"` first', pytrace=False)
    return name
