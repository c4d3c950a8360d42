"""Root pytest setup: ``--broker`` picks the backend the conformance suite and
broker-specific tests run against (``sim`` by default).

Tests marked ``@pytest.mark.broker("kafka")`` run only with ``--broker kafka``.
A requested real broker that is not reachable makes its tests FAIL, not skip.
"""

from __future__ import annotations

import logging

import pytest

BROKER_CHOICES = ("sim", "kafka", "rabbitmq", "rocketmq")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        default="sim",
        choices=BROKER_CHOICES,
        help="backend for the conformance suite and broker tests (default: sim)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("--broker")
    for item in items:
        marker = item.get_closest_marker("broker")
        if marker is not None and marker.args and marker.args[0] != chosen:
            item.add_marker(pytest.mark.skip(reason=f"needs --broker {marker.args[0]}"))
        if chosen != "sim" and item.get_closest_marker("sim_only") is not None:
            item.add_marker(pytest.mark.skip(reason="needs SimBroker (virtual clock / fault injection)"))


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--broker") == "rocketmq":
        # A failing test's report then shows each receive (topic, lane, got of asked) and when
        # each timer message was sent and received (tells a stalled pump from a held message).
        logging.getLogger("nova.rocketmq").setLevel(logging.DEBUG)
