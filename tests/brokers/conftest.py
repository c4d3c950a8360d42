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
