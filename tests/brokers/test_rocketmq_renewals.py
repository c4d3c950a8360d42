"""How RocketMQ deliveries are kept invisible while held, sweep by sweep (no broker needed).

The plan is a function of the held deliveries and the time, so these tests give it
times instead of waiting for them; tests/brokers/test_rocketmq.py proves the same on
a real broker (a killed holder, a live holder, a holder past consume_timeout).
"""

from __future__ import annotations

from itertools import pairwise

from nova.brokers.rocketmq._subscription import (
    _INVISIBLE_S,
    _RENEW_EVERY,
    _RENEW_WHEN_LEFT,
    _Delivery,
    _plan_renewals,
)


def _held(received: float, consume_timeout: float, *, invisible: int = _INVISIBLE_S) -> _Delivery:
    return _Delivery(
        topic="t", body=b"", headers={}, published_at=0.0, _sub=None, _native=None, _consumer=None,  # type: ignore[arg-type]
        _visible_until=received + min(invisible, consume_timeout), _deadline=received + consume_timeout,
    )  # fmt: skip


def _sweeps(d: _Delivery, until: float, invisible: int = _INVISIBLE_S) -> list[tuple[float, int]]:
    """Sweep every _RENEW_EVERY seconds from 0 to ``until``, every renewal taken at once:
    (time, seconds asked) of each renewal."""
    asked: list[tuple[float, int]] = []
    now = 0.0
    while now <= until:
        extend, _ = _plan_renewals([d], now, invisible)
        for held, seconds in extend:
            asked.append((now, seconds))
            held._visible_until = now + seconds
        now += _RENEW_EVERY
    return asked


def test_the_invisible_time_leaves_room_for_two_failed_renewals_and_a_crash_bound() -> None:
    # a sweep may come _RENEW_EVERY late and still leave time to try twice more
    assert _RENEW_WHEN_LEFT - _RENEW_EVERY >= 2 * _RENEW_EVERY
    assert _INVISIBLE_S <= 30  # a dead worker's tasks come back well within a minute


def test_a_held_delivery_is_renewed_in_sweeps_and_never_lapses_before_its_deadline() -> None:
    d = _held(0.0, consume_timeout=300)
    renewals = _sweeps(d, until=600)
    # each renewal asks for the short invisible time again, until the deadline caps it
    assert [s for _, s in renewals[:-1]] == [_INVISIBLE_S] * (len(renewals) - 1)
    assert renewals[-1][0] + renewals[-1][1] == 300
    # one request per delivery every 10-15 s: never one per second
    gaps = [b - a for (a, _), (b, _) in pairwise(renewals)]
    assert min(gaps) >= _INVISIBLE_S - _RENEW_WHEN_LEFT - 1e-9
    # at every sweep the broker still holds it (until the deadline), and never longer than the bound
    for (at, seconds), (after, _) in pairwise(renewals):
        assert after < at + seconds
        assert seconds <= _INVISIBLE_S


def test_a_delivery_past_its_deadline_lapses_and_is_not_renewed_again() -> None:
    d = _held(0.0, consume_timeout=40)
    assert _sweeps(d, until=100) == [(15.0, 25)]  # extended to the deadline (40 s), no further
    assert d._lapsed  # the sweep after 40 s saw it run out: the group gets it again
    extend, lapsed = _plan_renewals([d], 200.0, _INVISIBLE_S)
    assert (extend, lapsed) == ([], [])  # reported once


def test_a_consume_timeout_shorter_than_the_invisible_time_needs_no_renewal() -> None:
    d = _held(0.0, consume_timeout=20, invisible=20)
    assert _sweeps(d, until=60, invisible=20) == []
    assert d._lapsed


def test_acked_and_renewing_deliveries_are_left_alone() -> None:
    done, renewing, due = _held(0.0, 300), _held(0.0, 300), _held(0.0, 300)
    done._done = True
    renewing._renewal = object()  # type: ignore[assignment]
    extend, lapsed = _plan_renewals([done, renewing, due], 20.0, _INVISIBLE_S)
    assert extend == [(due, _INVISIBLE_S)] and lapsed == []
    # a delivery whose renewals failed until its time ran out lapses (its handle is spent)
    extend, lapsed = _plan_renewals([done, renewing, due], 31.0, _INVISIBLE_S)
    assert extend == [] and lapsed == [due] and not renewing._lapsed
