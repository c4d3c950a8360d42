"""RocketMQBroker's and RocketMQAdmin's options, checked before anything is sent (no broker needed)."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import pytest

from nova._errors import ConfigurationError
from nova.brokers.rocketmq import RocketMQAdmin, RocketMQBroker
from nova.brokers.rocketmq._broker import _answers, _Unconfirmed


def test_durations_take_timedeltas_and_numbers_of_seconds() -> None:
    broker = RocketMQBroker(
        "127.0.0.1:8081",
        request_timeout=timedelta(milliseconds=2500),
        poll_seconds=3,
        consume_timeout=60,
        max_delay=timedelta(hours=2),
        timer_precision=0.1,
    )
    assert broker.request_timeout == timedelta(seconds=2.5)
    assert broker.poll_seconds == timedelta(seconds=3)
    assert broker.consume_timeout == timedelta(minutes=1)
    assert broker.timer_precision == timedelta(milliseconds=100)
    assert broker.native_delay_max == timedelta(hours=2) - timedelta(seconds=10)
    defaults = RocketMQBroker("127.0.0.1:8081")
    assert (defaults.request_timeout, defaults.poll_seconds) == (timedelta(seconds=5), timedelta(seconds=2))
    assert defaults.timer_precision == timedelta(seconds=1)  # the broker's default timerPrecisionMs


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("request_timeout", 0, "request_timeout must be > 0"),
        ("request_timeout", "5", "request_timeout must be a timedelta"),
        ("poll_seconds", timedelta(seconds=-1), "poll_seconds must be > 0"),
        ("timer_precision", timedelta(0), "timer_precision must be > 0"),
        ("consume_timeout", timedelta(seconds=1), "consume_timeout must be between 10 s and 12 h"),
        ("max_delay", 30, "max_delay must be longer than 30 s"),
        ("topic_prefix", "my_app", "topic_prefix 'my_app' is invalid"),
        ("topic_prefix", "", "topic_prefix '' is invalid"),
        ("group_id", "workers!", "group_id 'workers!' is invalid"),
        ("delay_slots", (0, timedelta(hours=1)), "delay_slots must be"),
        ("auth", ("ak", ""), "auth must be (access_key, secret_key)"),
        ("admin_auth", ("admin",), "admin_auth must be (access_key, secret_key)"),
        ("namesrv", "127.0.0.1", "RocketMQ name server '127.0.0.1' is not host:port"),
    ],
)
def test_bad_options_are_refused_saying_what_to_fix(option: str, value: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        RocketMQBroker("127.0.0.1:8081", **{option: value})  # type: ignore[arg-type]


def test_endpoints_are_host_port_pairs() -> None:
    assert RocketMQBroker("127.0.0.1:8081; 127.0.0.2:8081").endpoints == ["127.0.0.1:8081", "127.0.0.2:8081"]
    with pytest.raises(ConfigurationError, match=re.escape("proxy endpoint '127.0.0.1:http' is not host:port")):
        RocketMQBroker("127.0.0.1:http")
    with pytest.raises(ConfigurationError, match="at least one proxy endpoint"):
        RocketMQBroker(" , ")


def test_prefix_group_and_delay_slots_are_kept_valid() -> None:
    broker = RocketMQBroker("127.0.0.1:8081", topic_prefix="app", group_id="workers", delay_slots=(4, 60))
    assert (broker.topic_prefix, broker.group_id) == ("app", "workers")
    assert broker.delay_slots == (4, timedelta(minutes=1))


def test_the_harness_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_ROCKETMQ_NAMESRV", "127.0.0.1:9876")
    monkeypatch.setenv("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY", "admin")
    monkeypatch.setenv("NOVA_ROCKETMQ_ADMIN_SECRET_KEY", "secret")
    monkeypatch.setenv("NOVA_ROCKETMQ_TIMER_PRECISION_MS", "100")
    broker = RocketMQBroker("127.0.0.1:8081")
    assert broker._admin is None
    assert broker.timer_precision == timedelta(seconds=1)


def test_urls_carry_the_name_server_and_the_timer_precision() -> None:
    broker = RocketMQBroker.from_url(
        "rocketmq://ak:sk@127.0.0.1:8081?namesrv=127.0.0.1:9876&timer_precision_ms=100&consume_timeout=30"
    )
    assert broker._admin is not None and broker._admin.namesrv == ["127.0.0.1:9876"]
    assert broker.timer_precision == timedelta(milliseconds=100)
    assert broker.consume_timeout == timedelta(seconds=30)
    with pytest.raises(ConfigurationError, match="bad rocketmq URL option"):
        RocketMQBroker.from_url("rocketmq://127.0.0.1:8081?timer_precision_ms=fast")


def test_admin_options() -> None:
    admin = RocketMQAdmin("127.0.0.1:9876;127.0.0.2:9876", timeout=2.5)
    assert admin.namesrv == ["127.0.0.1:9876", "127.0.0.2:9876"]
    assert admin.timeout == timedelta(seconds=2.5)
    with pytest.raises(ConfigurationError, match="timeout must be > 0"):
        RocketMQAdmin("127.0.0.1:9876", timeout=0)
    with pytest.raises(ConfigurationError, match="is not host:port"):
        RocketMQAdmin("localhost")


async def test_send_answers_come_in_order_and_wake_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's send futures finish on its own threads: every answer is kept in order (a
    receipt, a send's error, an error raised before sending), and the event loop is woken once
    for all of them, not once per message."""
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakes.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    futures: list[Future[str]] = [Future() for _ in range(50)]
    refused, unroutable = RuntimeError("refused"), LookupError("no route")

    def answer() -> None:
        for i, future in enumerate(futures):
            if i == 7:
                future.set_exception(refused)
            else:
                future.set_result(f"receipt {i}")

    thread = threading.Thread(target=answer)
    answers_task = asyncio.ensure_future(_answers([*futures, unroutable], within=60))
    thread.start()
    answers = await answers_task
    thread.join()
    assert answers == [refused if i == 7 else f"receipt {i}" for i in range(50)] + [unroutable]
    assert len(wakes) == 1


async def test_a_send_unanswered_in_time_is_unconfirmed_and_cancelled() -> None:
    answered: Future[str] = Future()
    answered.set_result("receipt")
    silent: Future[str] = Future()
    answers = await _answers([answered, silent], within=0.01)
    assert answers[0] == "receipt"
    assert isinstance(answers[1], _Unconfirmed)
    assert silent.cancelled()
