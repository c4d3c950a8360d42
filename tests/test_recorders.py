"""One recorder suite, run on every TaskRecorder: MemoryTaskRecorder, ClickHouseTaskRecorder
on chDB (in-process), and on a ClickHouse server when NOVA_CLICKHOUSE_URL is set.

Every recorder must agree with folding a task's events through ``apply_event``
in version order (``fold_events``), whatever order they arrived in. Timestamps
here are whole milliseconds: ClickHouse stores DateTime64(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nova._errors import ClosedError, ConfigurationError, ValidationError
from nova._errors import ConnectionError as NovaConnectionError
from nova._recording import (
    MemoryTaskRecorder,
    QueryableTaskRecorder,
    TaskEvent,
    TaskRecord,
    TaskStatus,
    event_order,
    fold_events,
)
from nova._sink import RecordingSink
from nova.sim import VirtualClock

try:
    import chdb  # noqa: F401
    import clickhouse_connect

    HAVE_CHDB = True
except ImportError:  # pragma: no cover - the clickhouse extra is missing
    HAVE_CHDB = False

from nova._clickhouse import ClickHouseTaskRecorder

SERVER_URL = os.environ.get("NOVA_CLICKHOUSE_URL")
IN_CI = bool(os.environ.get("CI"))
T0 = datetime(2030, 1, 1, tzinfo=UTC)

MakeRecorder = Callable[..., QueryableTaskRecorder]


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def event(task_id: str, status: TaskStatus, version: int, **kw: Any) -> TaskEvent:
    """An event at T0 + ``version`` ms, unless ``at`` is given."""
    fields: dict[str, Any] = {"type": "email", "queue": "default", "priority": 2}
    fields.update(kw)
    if "at" not in fields:
        fields["at"] = at(version)
    return TaskEvent(task_id=task_id, status=status, version=version, **fields)


# -- the backends ----------------------------------------------------------------
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("chdb", id="chdb", marks=pytest.mark.skipif(
        not HAVE_CHDB and not IN_CI, reason="needs the clickhouse extra (clickhouse-connect, chdb)")),
    pytest.param("server", id="server", marks=pytest.mark.skipif(
        SERVER_URL is None, reason="set NOVA_CLICKHOUSE_URL to run against a ClickHouse server")),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def make_recorder(backend: str, tmp_path: Any) -> AsyncIterator[MakeRecorder]:
    """Makes recorders of ``backend``, each on a fresh table; closes them (and drops the tables) after."""
    made: list[QueryableTaskRecorder] = []
    tables: list[str] = []

    def make(*, store_payload: bool = False) -> QueryableTaskRecorder:
        recorder: QueryableTaskRecorder
        if backend == "memory":
            recorder = MemoryTaskRecorder()
        else:
            table = f"nova_test_{uuid.uuid4().hex[:12]}"
            tables.append(table)
            # chDB hosts one directory per process: every recorder of a test shares tmp_path/chdb
            url = f"chdb://{tmp_path / 'chdb'}" if backend == "chdb" else SERVER_URL
            assert url is not None
            recorder = ClickHouseTaskRecorder.from_url(url, table, store_payload=store_payload)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        await recorder.close()
    if backend == "server" and tables:
        import clickhouse_connect

        from nova._clickhouse import _parse_url

        assert SERVER_URL is not None
        target = _parse_url(SERVER_URL)
        client = clickhouse_connect.get_client(
            host=target.host, port=target.port, username=target.username, password=target.password,
            database=target.database, interface=target.kind)
        for table in tables:
            client.command(f"DROP TABLE IF EXISTS `{table}`")
        client.close()


@pytest.fixture
def recorder(make_recorder: MakeRecorder) -> QueryableTaskRecorder:
    return make_recorder()


@pytest.fixture
def payload_recorder(make_recorder: MakeRecorder) -> QueryableTaskRecorder:
    """Keeps payloads. Hypothesis tests get one for all their examples (each uses its own task id)."""
    return make_recorder(store_payload=True)


def ms(value: datetime | None) -> datetime | None:
    """Truncate to the millisecond, as ClickHouse stores it."""
    return None if value is None else value.replace(microsecond=value.microsecond // 1000 * 1000)


# -- lifecycle ---------------------------------------------------------------------
async def test_recorders_satisfy_the_protocol(recorder: QueryableTaskRecorder) -> None:
    assert isinstance(recorder, QueryableTaskRecorder)


async def test_completed_lifecycle(recorder: QueryableTaskRecorder) -> None:
    events = [
        event("t1", TaskStatus.PENDING, 1),
        event("t1", TaskStatus.QUEUED, 2, headers={"tenant": "a"}),
        event("t1", TaskStatus.PROCESSING, 3),
        event("t1", TaskStatus.COMPLETED, 4),
    ]
    await recorder.record(events)

    record = await recorder.get("t1")
    assert record == fold_events(events)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert (record.created_at, record.started_at, record.completed_at, record.updated_at) == (
        at(1), at(3), at(4), at(4))
    assert record.retry_count == 0
    assert record.error is None
    assert record.headers == {"tenant": "a"}
    assert record.version == 4
    assert await recorder.history("t1") == events


async def test_retries_then_failed(recorder: QueryableTaskRecorder) -> None:
    events = [
        event("t2", TaskStatus.QUEUED, 10),
        event("t2", TaskStatus.PROCESSING, 11, attempt=1),
        event("t2", TaskStatus.RETRYING, 12, attempt=1, error="ValueError: first"),
        event("t2", TaskStatus.PROCESSING, 13, attempt=2),
        event("t2", TaskStatus.RETRYING, 14, attempt=2, error="ValueError: second",
              eta=at(5_000)),
        event("t2", TaskStatus.PROCESSING, 15, attempt=3),
        event("t2", TaskStatus.FAILED, 16, attempt=3, error="ValueError: last"),
    ]
    await recorder.record(events[:3])
    mid = await recorder.get("t2")
    assert mid is not None
    assert (mid.status, mid.retry_count, mid.error) == (TaskStatus.RETRYING, 0, "ValueError: first")
    assert mid.completed_at is None

    await recorder.record(events[3:])
    record = await recorder.get("t2")
    assert record == fold_events(events)
    assert record is not None
    assert (record.status, record.retry_count, record.error) == (TaskStatus.FAILED, 2, "ValueError: last")
    assert record.started_at == at(11)  # the first PROCESSING
    assert record.completed_at == at(16)
    assert record.eta == at(5_000)


async def test_error_is_kept_when_later_events_carry_none(recorder: QueryableTaskRecorder) -> None:
    events = [event("t3", TaskStatus.RETRYING, 1, error="boom"), event("t3", TaskStatus.PROCESSING, 2)]
    await recorder.record(events)
    record = await recorder.get("t3")
    assert record is not None
    assert record.error == "boom"
    assert record.status is TaskStatus.PROCESSING


async def test_times_before_1970_round_trip(recorder: QueryableTaskRecorder) -> None:
    # ClickHouse's text input has no such times: the batch goes through the typed (Native) path
    old = datetime(1969, 12, 31, 23, 59, 59, 998_500, tzinfo=UTC)
    events = [event("t70", TaskStatus.QUEUED, 1, at=old, eta=old - timedelta(days=3650)),
              event("t70", TaskStatus.COMPLETED, 2, at=old + timedelta(milliseconds=1))]
    await recorder.record(events)
    record = await recorder.get("t70")
    assert record is not None
    assert (ms(record.created_at), ms(record.completed_at), ms(record.eta)) == (
        ms(old), ms(old + timedelta(milliseconds=1)), ms(old - timedelta(days=3650)))
    assert [ms(e.at) for e in await recorder.history("t70")] == [ms(e.at) for e in events]


async def test_the_text_and_the_typed_insert_store_the_same(make_recorder: MakeRecorder) -> None:
    """A batch whose payload is not UTF-8 takes the typed path; the same events otherwise go as text."""
    recorder = make_recorder(store_payload=True)

    def lifecycle(task_id: str, payload: bytes) -> list[TaskEvent]:
        return [
            event(task_id, TaskStatus.QUEUED, 1, payload=payload, headers={"tenant": "ü", "k": ""},
                  eta=at(9_999), at=T0 + timedelta(microseconds=1_999)),
            event(task_id, TaskStatus.RETRYING, 2, attempt=2, error="E: \x00 \"quoted\"\n ✓"),
            event(task_id, TaskStatus.COMPLETED, 3, attempt=3, priority=3, queue="other", type="x"),
        ]

    await recorder.record(lifecycle("text", b"utf-8 \xe2\x9c\x93"))
    await recorder.record(lifecycle("typed", b"\xff\xfe"))
    text, typed = await recorder.history("text"), await recorder.history("typed")
    assert [replace(e, task_id="", payload=None) for e in text] == [
        replace(e, task_id="", payload=None) for e in typed]
    assert (text[0].payload, typed[0].payload) == (b"utf-8 \xe2\x9c\x93", b"\xff\xfe")
    assert ms(text[0].at) == ms(T0 + timedelta(microseconds=1_999))
    assert await recorder.get("text") == fold_events(text)


async def test_unknown_task(recorder: QueryableTaskRecorder) -> None:
    assert await recorder.get("nope") is None
    assert await recorder.history("nope") == []
    assert await recorder.delete("nope") is False


async def test_empty_batch_is_fine(recorder: QueryableTaskRecorder) -> None:
    await recorder.record([])
    assert await recorder.counts() == {}


# -- ordering and idempotence ------------------------------------------------------------
async def test_latest_version_wins_whatever_the_arrival_order(recorder: QueryableTaskRecorder) -> None:
    events = [
        event("t4", TaskStatus.QUEUED, 100),
        event("t4", TaskStatus.PROCESSING, 200),
        event("t4", TaskStatus.RETRYING, 300, error="late"),
        event("t4", TaskStatus.PROCESSING, 400, attempt=2),
        event("t4", TaskStatus.COMPLETED, 500, attempt=2),
    ]
    for e in reversed(events):  # newest first, one batch each
        await recorder.record([e])
    record = await recorder.get("t4")
    assert record == fold_events(events)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.started_at == at(200)
    assert record.error == "late"
    assert await recorder.history("t4") == events

    # a stale event arriving after the terminal one changes nothing
    await recorder.record([event("t4", TaskStatus.PROCESSING, 150)])
    assert (await recorder.get("t4")) == fold_events([*events, event("t4", TaskStatus.PROCESSING, 150)])
    assert (await recorder.get("t4")).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


async def test_a_resent_batch_is_not_doubled(recorder: QueryableTaskRecorder) -> None:
    events = [event("t5", TaskStatus.QUEUED, 1), event("t5", TaskStatus.PROCESSING, 2)]
    await recorder.record(events)
    await recorder.record(events)  # e.g. the sink retried after a timeout that had in fact succeeded
    assert await recorder.history("t5") == events
    assert await recorder.get("t5") == fold_events(events)
    assert await recorder.counts() == {TaskStatus.PROCESSING: 1}


async def test_a_version_tie_is_broken_by_lifecycle_rank(recorder: QueryableTaskRecorder) -> None:
    # a producer and a worker (two sinks) stamped the same instant
    queued = event("tie", TaskStatus.QUEUED, 7, attempt=1)
    processing = event("tie", TaskStatus.PROCESSING, 7, attempt=1)
    await recorder.record([processing])
    await recorder.record([queued])
    record = await recorder.get("tie")
    assert record == fold_events([queued, processing])
    assert record is not None
    assert record.status is TaskStatus.PROCESSING
    assert await recorder.history("tie") == [queued, processing]
    assert await recorder.counts() == {TaskStatus.PROCESSING: 1}
    assert await recorder.counts_by_queue() == {"default": {TaskStatus.PROCESSING: 1}}
    assert ids(await recorder.list(status=TaskStatus.PROCESSING)) == ["tie"]


async def test_concurrent_writers(recorder: QueryableTaskRecorder) -> None:
    batches = [[event(f"c{i}", TaskStatus.QUEUED, 1), event(f"c{i}", TaskStatus.PROCESSING, 2)]
               for i in range(8)]
    await asyncio.gather(*(recorder.record(b) for b in batches))
    assert await recorder.counts() == {TaskStatus.PROCESSING: 8}


async def test_timestamps_come_back_in_utc(recorder: QueryableTaskRecorder) -> None:
    paris = timezone(timedelta(hours=1))
    when = datetime(2030, 6, 1, 12, 30, 0, 250_000, tzinfo=paris)
    await recorder.record([event("tz", TaskStatus.QUEUED, 1, at=when, eta=when + timedelta(hours=1))])
    record = await recorder.get("tz")
    assert record is not None
    assert record.created_at == when  # the same instant
    assert record.created_at.utcoffset() in (timedelta(0), timedelta(hours=1))
    assert record.eta == when + timedelta(hours=1)


# -- queries ------------------------------------------------------------------------------
async def _populate(recorder: QueryableTaskRecorder) -> None:
    """a1..a3 in 'mail', b1..b2 in 'billing'; updated at 10, 20, 30, 40, 50 ms."""
    await recorder.record([
        event("a1", TaskStatus.QUEUED, 1, queue="mail", type="welcome"),
        event("a1", TaskStatus.COMPLETED, 10, queue="mail", type="welcome"),
        event("b1", TaskStatus.QUEUED, 2, queue="billing", type="invoice"),
        event("b1", TaskStatus.FAILED, 20, queue="billing", type="invoice", error="card declined"),
        event("a2", TaskStatus.FAILED, 3, queue="mail", type="welcome", error="old failure"),
        event("a2", TaskStatus.PROCESSING, 30, queue="mail", type="welcome", attempt=2),
        event("a3", TaskStatus.QUEUED, 40, queue="mail", type="digest"),
        event("b2", TaskStatus.COMPLETED, 50, queue="billing", type="invoice"),
    ])


def ids(records: Sequence[TaskRecord]) -> list[str]:
    return [r.task_id for r in records]


async def test_list_is_newest_first(recorder: QueryableTaskRecorder) -> None:
    await _populate(recorder)
    assert ids(await recorder.list()) == ["b2", "a3", "a2", "b1", "a1"]


async def test_list_limit_and_offset(recorder: QueryableTaskRecorder) -> None:
    await _populate(recorder)
    assert ids(await recorder.list(limit=2)) == ["b2", "a3"]
    assert ids(await recorder.list(limit=2, offset=2)) == ["a2", "b1"]
    assert ids(await recorder.list(limit=2, offset=4)) == ["a1"]
    assert ids(await recorder.list(limit=2, offset=10)) == []
    assert ids(await recorder.list(limit=0)) == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": TaskStatus.COMPLETED}, ["b2", "a1"]),
        ({"status": TaskStatus.FAILED}, ["b1"]),  # a2 failed once but is processing now
        ({"queue": "mail"}, ["a3", "a2", "a1"]),
        ({"type": "invoice"}, ["b2", "b1"]),
        ({"queue": "mail", "type": "welcome"}, ["a2", "a1"]),
        ({"queue": "mail", "status": TaskStatus.COMPLETED}, ["a1"]),
        ({"since": at(30)}, ["b2", "a3", "a2"]),  # since is inclusive
        ({"until": at(30)}, ["b1", "a1"]),  # until is exclusive
        ({"since": at(11), "until": at(41)}, ["a3", "a2", "b1"]),
        ({"since": at(5), "queue": "billing", "status": TaskStatus.FAILED}, ["b1"]),
        ({"queue": "nowhere"}, []),
        ({"status": TaskStatus.CANCELLED}, []),
    ],
)
async def test_list_filters_on_the_latest_state(
    recorder: QueryableTaskRecorder, filters: dict[str, Any], expected: list[str]
) -> None:
    await _populate(recorder)
    assert ids(await recorder.list(**filters)) == expected


async def test_list_returns_full_records(recorder: QueryableTaskRecorder) -> None:
    await _populate(recorder)
    [a2] = await recorder.list(type="welcome", status=TaskStatus.PROCESSING)
    assert a2 == await recorder.get("a2")
    assert (a2.error, a2.retry_count, a2.completed_at) == ("old failure", 1, at(3))


async def test_counts(recorder: QueryableTaskRecorder) -> None:
    await _populate(recorder)
    assert await recorder.counts() == {
        TaskStatus.COMPLETED: 2, TaskStatus.FAILED: 1, TaskStatus.PROCESSING: 1, TaskStatus.QUEUED: 1}
    assert await recorder.counts_by_queue() == {
        "mail": {TaskStatus.COMPLETED: 1, TaskStatus.PROCESSING: 1, TaskStatus.QUEUED: 1},
        "billing": {TaskStatus.COMPLETED: 1, TaskStatus.FAILED: 1},
    }


async def test_delete(recorder: QueryableTaskRecorder) -> None:
    await _populate(recorder)
    assert await recorder.delete("b1") is True
    assert await recorder.get("b1") is None
    assert await recorder.history("b1") == []
    assert await recorder.delete("b1") is False
    assert "b1" not in ids(await recorder.list())
    assert TaskStatus.FAILED not in await recorder.counts()
    assert (await recorder.get("b2")) is not None

    # recording again after a delete starts afresh
    await recorder.record([event("b1", TaskStatus.QUEUED, 99)])
    assert await recorder.get("b1") == fold_events([event("b1", TaskStatus.QUEUED, 99)])


# -- payloads -----------------------------------------------------------------------------
async def test_payload_is_not_stored_by_default(backend: str, make_recorder: MakeRecorder) -> None:
    if backend == "memory":
        pytest.skip("MemoryTaskRecorder keeps payloads in memory (nothing leaves the process)")
    recorder = make_recorder()
    await recorder.record([event("p1", TaskStatus.QUEUED, 1, payload=b"password=hunter2")])
    record = await recorder.get("p1")
    assert record is not None
    assert record.payload is None
    assert [e.payload for e in await recorder.history("p1")] == [None]


async def test_payload_is_stored_when_asked(make_recorder: MakeRecorder) -> None:
    recorder = make_recorder(store_payload=True)
    raw = bytes(range(256))  # not UTF-8: must round-trip as bytes
    await recorder.record([
        event("p2", TaskStatus.QUEUED, 1, payload=raw),
        event("p2", TaskStatus.PROCESSING, 2),
        event("p3", TaskStatus.QUEUED, 1, payload=b""),
    ])
    p2 = await recorder.get("p2")
    assert p2 is not None
    assert p2.payload == raw
    assert [e.payload for e in await recorder.history("p2")] == [raw, None]
    p3 = await recorder.get("p3")
    assert p3 is not None
    assert p3.payload == b""


# -- the property: every recorder is the fold ---------------------------------------------------
_statuses = st.sampled_from(list(TaskStatus))
_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[list[TaskEvent], list[list[TaskEvent]]]:
    """One task's events and the batches they arrive in (any order, maybe twice).

    Versions come from a small range so ties (same instant, other status) happen;
    (version, status) pairs are unique, as a re-send repeats the same event.
    """
    keys = draw(st.lists(st.tuples(st.integers(0, 4) | st.integers(0, 2**40), _statuses),
                         min_size=1, max_size=6, unique=True))
    task_id = uuid.uuid4().hex
    events = [
        TaskEvent(
            task_id=task_id,
            type=draw(st.sampled_from(["a", "b"])),
            queue=draw(st.sampled_from(["q1", "q2"])),
            priority=draw(st.integers(1, 3)),
            status=status,
            at=at(draw(st.integers(0, 10**9))),
            version=v,
            attempt=draw(st.integers(1, 4)),
            error=draw(st.none() | _texts),
            eta=draw(st.none() | st.integers(0, 10**9).map(at)),
            headers=draw(st.dictionaries(_texts, _texts, max_size=2)),
            payload=draw(st.none() | st.binary(max_size=8)),
        )
        for v, status in keys
    ]
    arrival = draw(st.permutations(events))
    cuts = sorted(draw(st.lists(st.integers(1, len(arrival)), max_size=2, unique=True)))
    batches = [arrival[i:j] for i, j in zip([0, *cuts], [*cuts, len(arrival)], strict=True) if arrival[i:j]]
    if draw(st.booleans()):
        batches.append(draw(st.sampled_from(batches)))  # a retried batch
    return events, batches


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_histories())
async def test_any_history_reads_back_as_its_fold(
    payload_recorder: QueryableTaskRecorder, history: tuple[list[TaskEvent], list[list[TaskEvent]]]
) -> None:
    events, batches = history
    recorder = payload_recorder
    for batch in batches:
        await recorder.record(batch)
    assert await recorder.get(events[0].task_id) == fold_events(events)
    assert await recorder.history(events[0].task_id) == sorted(events, key=event_order)


# -- ClickHouse specifics -------------------------------------------------------------------------
class _NoSQLClient:
    """Stands in for a clickhouse-connect client and fails the test if any SQL reaches it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"client.{name} was called")


@pytest.mark.parametrize("table", [
    "tasks; DROP TABLE users", "tasks`", "`tasks`", "1tasks", "", "a.b.c", "db.", "tâches", "a" * 200,
    "tasks -- comment", "tasks\n",
])
def test_bad_table_names_are_refused_before_any_sql(table: str) -> None:
    with pytest.raises(ConfigurationError, match="table name"):
        ClickHouseTaskRecorder(_NoSQLClient(), table)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="table name"):
        ClickHouseTaskRecorder.from_url("chdb://memory", table)


@pytest.mark.parametrize("table", ["nova_task_records", "_t1", "ops.nova_tasks"])
def test_good_table_names(table: str) -> None:
    recorder = ClickHouseTaskRecorder(_NoSQLClient(), table)  # type: ignore[arg-type]
    assert table in repr(recorder)


@pytest.mark.parametrize("url", [
    "chdb://relative/path", "chdb:", "chdb:///", "chdb://memory?x=1", "mysql://h/db", "http://", "tasks.db",
    "http://h:8123/db?secure=1", "http://h:8123/bad-db-name",
])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        ClickHouseTaskRecorder.from_url(url)


SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("url", [
    f"http://nova:{SECRET}@127.0.0.1:notaport/db",
    f"ftp://nova:{SECRET}@127.0.0.1/db",
    f"http://nova:{SECRET}@127.0.0.1:8123/db?x=1",
    f"chdb://nova:{SECRET}@memory",
    f"chdb://nova:{SECRET}@/tmp/x",
])
def test_a_password_never_shows_in_url_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ClickHouseTaskRecorder.from_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


async def test_a_password_never_shows_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = ClickHouseTaskRecorder.from_url(f"http://nova:{SECRET}@127.0.0.1:1/ops")  # nothing listens
    assert SECRET not in repr(recorder)
    assert SECRET not in repr(vars(recorder))
    assert "nova:***@127.0.0.1:1/ops" in repr(recorder)
    with pytest.raises(NovaConnectionError) as info:
        await recorder.get("x")
    seen: list[str] = []
    exc: BaseException | None = info.value
    while exc is not None:
        seen += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    seen += [r.getMessage() for r in caplog.records]
    assert seen
    assert not [s for s in seen if SECRET in s]
    await recorder.close()


async def test_events_that_do_not_fit_the_schema_are_refused_before_any_sql() -> None:
    recorder = ClickHouseTaskRecorder(_NoSQLClient())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="version"):
        await recorder.record([event("big", TaskStatus.QUEUED, 2**63, at=T0)])
    with pytest.raises(ValidationError, match="attempt"):
        await recorder.record([event("big", TaskStatus.QUEUED, 1, attempt=2**31)])


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "clickhouse_connect", None)
    with pytest.raises(ImportError, match=r"pip install 'nova-taskqueue\[clickhouse\]'"):
        ClickHouseTaskRecorder.from_url("http://localhost:8123/")
    monkeypatch.setitem(sys.modules, "clickhouse_connect", clickhouse_connect)
    monkeypatch.setitem(sys.modules, "chdb", None)
    with pytest.raises(ImportError, match=r"pip install 'nova-taskqueue\[clickhouse\]'"):
        ClickHouseTaskRecorder.from_url("chdb://memory")


async def test_a_chdb_path_is_percent_decoded(tmp_path: Any) -> None:
    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}/odd%20dir%23")
    try:
        await recorder.record([event("x", TaskStatus.QUEUED, 1)])
    finally:
        await recorder.close()
    assert (tmp_path / "odd dir#").is_dir()
    with pytest.raises(ConfigurationError, match="cannot contain"):
        ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}/what%3F")


async def test_closed_recorder_refuses_calls(tmp_path: Any) -> None:
    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}")
    await recorder.record([event("x", TaskStatus.QUEUED, 1)])
    await recorder.close()
    await recorder.close()  # idempotent
    with pytest.raises(ClosedError):
        await recorder.get("x")
    # the directory is free again, and the data is on disk
    again = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}")
    try:
        assert (await again.get("x")) is not None
    finally:
        await again.close()


async def test_a_client_you_pass_in_stays_yours(tmp_path: Any) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}")
    try:
        recorder = ClickHouseTaskRecorder(client, "mine", store_payload=True)
        await recorder.record([event("x", TaskStatus.QUEUED, 1, payload=b"p")])
        await recorder.close()
        # still open; and the schema is what the issue asks for
        ddl = client.query("SHOW CREATE TABLE mine").result_rows[0][0]
        assert "ReplacingMergeTree(version)" in ddl
        assert "ORDER BY (task_id, version, status)" in ddl
        assert "LowCardinality(String)" in ddl
        assert "DateTime64(3, \\'UTC\\')" in ddl or "DateTime64(3, 'UTC')" in ddl
        assert client.query("SELECT retry_count, payload FROM mine").result_rows == [(0, "p")]
    finally:
        client.close()


async def test_a_second_chdb_directory_is_a_clear_error(tmp_path: Any) -> None:
    first = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path / 'one'}")
    second = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path / 'two'}")
    try:
        await first.counts()
        with pytest.raises(ConfigurationError, match="one database directory per process"):
            await second.counts()
    finally:
        await second.close()
        await first.close()


async def test_clickhouse_calls_go_through_the_given_clock(tmp_path: Any) -> None:
    calls: list[str] = []

    class CountingClock(VirtualClock):
        async def run_sync(self, fn: Callable[[], Any]) -> Any:
            calls.append("run_sync")
            return await super().run_sync(fn)

    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}", clock=CountingClock())
    await recorder.record([event("x", TaskStatus.QUEUED, 1)])
    await recorder.close()
    assert calls == ["run_sync", "run_sync"]


# -- RecordingSink: a broken or slow recorder never holds tasks up ---------------------------------
class GatedRecorder(MemoryTaskRecorder):
    """Blocks in record() until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def record(self, events: Sequence[TaskEvent]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().record(events)


class FailingRecorder(MemoryTaskRecorder):
    """Raises for the first ``failures`` calls (forever by default)."""

    def __init__(self, failures: int = 10**9) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def record(self, events: Sequence[TaskEvent]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("recorder down")
        await super().record(events)


async def _handler_like(sink: RecordingSink, n: int) -> int:
    """What the engine does around tasks: emit, and carry on."""
    done = 0
    for i in range(n):
        sink.emit(event(f"s{i}", TaskStatus.QUEUED, 1))
        await asyncio.sleep(0)
        sink.emit(event(f"s{i}", TaskStatus.COMPLETED, 2))
        done += 1
    return done


async def test_a_slow_recorder_never_blocks_tasks_and_overflow_is_counted() -> None:
    recorder = GatedRecorder()
    sink = RecordingSink(recorder, VirtualClock(), max_buffer=10, batch_size=4)
    assert await _handler_like(sink, 20) == 20  # returned while the recorder is stuck
    assert recorder.entered.is_set()
    assert not recorder.gate.is_set()
    assert sink.dropped > 0
    assert sink.written == 0

    recorder.gate.set()
    await sink.close()
    assert sink.written + sink.dropped == 40
    stored = [len(await recorder.history(f"s{i}")) for i in range(20)]
    assert sink.written == sum(stored)


async def test_a_failing_recorder_is_retried_then_dropped(caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    recorder = FailingRecorder()
    sink = RecordingSink(recorder, clock, max_attempts=3, batch_size=100)
    assert await _handler_like(sink, 5) == 5
    assert await clock.run_until(lambda: sink.dropped == 10, within=timedelta(minutes=1))
    assert recorder.calls >= 3
    assert sink.failures == recorder.calls
    assert sink.written == 0
    assert any("dropped" in r.getMessage() for r in caplog.records)
    await sink.close()


async def test_a_flaky_recorder_loses_nothing() -> None:
    clock = VirtualClock()
    recorder = FailingRecorder(failures=2)
    sink = RecordingSink(recorder, clock, max_attempts=5, batch_size=100)
    await _handler_like(sink, 5)
    assert await clock.run_until(lambda: sink.written == 10, within=timedelta(minutes=1))
    assert (sink.dropped, sink.failures) == (0, 2)
    await sink.close()
    assert await recorder.counts() == {TaskStatus.COMPLETED: 5}


async def test_an_unreachable_clickhouse_never_blocks_tasks() -> None:
    clock = VirtualClock()
    recorder = ClickHouseTaskRecorder.from_url(f"http://nova:{SECRET}@127.0.0.1:1/ops", clock=clock)
    sink = RecordingSink(recorder, clock, max_attempts=2)
    assert await _handler_like(sink, 3) == 3
    assert await clock.run_until(lambda: sink.dropped == 6, within=timedelta(minutes=1))
    await sink.close()
    await recorder.close()


async def test_the_sink_feeds_clickhouse(tmp_path: Any) -> None:
    clock = VirtualClock()
    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path}", clock=clock)
    sink = RecordingSink(recorder, clock, batch_size=1000)
    await _handler_like(sink, 50)
    await sink.close()
    assert (sink.written, sink.dropped) == (100, 0)
    assert await recorder.counts() == {TaskStatus.COMPLETED: 50}
    await recorder.close()



async def test_the_sink_writes_a_full_batch_at_once_and_the_rest_on_its_interval() -> None:
    clock = VirtualClock()
    recorder = MemoryTaskRecorder()
    sink = RecordingSink(recorder, clock, batch_size=3, flush_interval=60)
    for i in range(3):
        sink.emit_step(f"b{i}", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    assert await clock.run_until(lambda: sink.written == 3, within=timedelta(seconds=1))
    started = clock.time()
    sink.emit_step("b3", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    assert not await clock.run_until(lambda: sink.written == 4, within=timedelta(seconds=59))
    assert await clock.run_until(lambda: sink.written == 4, within=timedelta(seconds=2))
    assert clock.time() - started >= 60
    assert await recorder.counts() == {TaskStatus.QUEUED: 4}
    await sink.close()


async def test_the_sink_keeps_what_headers_were_when_emitted() -> None:
    clock = VirtualClock()
    recorder = MemoryTaskRecorder()
    sink = RecordingSink(recorder, clock)
    headers = {"tenant": "a"}
    sink.emit_step("h1", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, headers, b"p")
    headers["tenant"] = "changed later"
    await sink.close()
    record = await recorder.get("h1")
    assert record is not None
    assert (record.headers, record.payload) == ({"tenant": "a"}, b"p")


async def test_versions_rise_per_task_on_a_standing_clock_with_no_per_task_state() -> None:
    """A producer only emits QUEUED (its tasks finish elsewhere): the sink keeps no state per
    task, yet every task's versions strictly increase, even when the clock stands still."""
    clock = VirtualClock()
    recorder = MemoryTaskRecorder()
    sink = RecordingSink(recorder, clock, max_buffer=100_000, batch_size=100_000)
    for i in range(30_000):
        sink.emit_step(f"p{i}", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    grown = [name for name, value in vars(sink).items()
             if name != "_fields" and isinstance(value, dict | set | list) and len(value) > 10]
    assert grown == []  # the buffer aside, nothing grows with the number of tasks
    for status in (TaskStatus.PROCESSING, TaskStatus.COMPLETED):
        for i in range(0, 30_000, 1000):
            sink.emit_step(f"p{i}", "email", "default", 2, status, 1, None, None, {}, None)
    await sink.close()
    for i in range(0, 30_000, 1000):
        versions = [e.version for e in await recorder.history(f"p{i}")]
        assert len(versions) == 3
        assert versions == sorted(set(versions))
    record = await recorder.get("p0")
    assert record is not None
    assert record.status is TaskStatus.COMPLETED


async def test_a_published_batch_is_queued_at_one_instant_and_overflow_is_counted() -> None:
    from nova._task import Priority, Result, Task

    clock = VirtualClock()
    recorder = MemoryTaskRecorder()
    sink = RecordingSink(recorder, clock, max_buffer=5)
    sink.emit_step("t0", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    tasks = [Task("email", b"p%d" % i, headers={"n": str(i)} if i % 2 else {}) for i in range(6)]
    results = [Result(f"t{i + 1}", "mail", Priority.HIGH, None) for i in range(6)]
    sink.emit_published(results, tasks, TaskStatus.QUEUED)  # room for 4 of them
    sink.emit_published(results[:2], tasks[:2], TaskStatus.QUEUED)  # no room: both dropped
    assert sink.dropped == 4
    await sink.close()
    assert sink.written == 5
    records = [await recorder.get(f"t{i}") for i in range(1, 7)]
    kept = [r for r in records if r is not None]
    assert [(r.queue, r.priority, r.headers, r.payload) for r in kept] == [
        ("mail", Priority.HIGH, {"n": str(i)} if i % 2 else {}, b"p%d" % i) for i in range(4)]
    assert len({(r.version, r.updated_at) for r in kept}) == 1
    t0 = await recorder.get("t0")
    assert t0 is not None
    assert kept[0].version > t0.version


async def test_steps_at_one_instant_keep_their_order(make_recorder: MakeRecorder) -> None:
    """Under a virtual clock a whole lifecycle can happen at one instant: versions still rise."""
    recorder = make_recorder()
    clock = VirtualClock()
    sink = RecordingSink(recorder, clock)
    steps = [(TaskStatus.QUEUED, 1, None), (TaskStatus.PROCESSING, 1, None),
             (TaskStatus.RETRYING, 1, "boom"), (TaskStatus.PROCESSING, 2, None), (TaskStatus.COMPLETED, 2, None)]
    for status, attempt, error in steps:
        sink.emit_step("i1", "email", "default", 2, status, attempt, error, None, {}, None)
    await sink.close()
    history = await recorder.history("i1")
    assert [(e.status, e.attempt, e.error) for e in history] == steps
    assert [e.version for e in history] == sorted({e.version for e in history})
    record = await recorder.get("i1")
    assert record is not None
    assert (record.status, record.retry_count, record.error) == (TaskStatus.COMPLETED, 1, "boom")


# -- the engine records through the sink (S16) ---------------------------------------------------
async def test_a_task_queue_records_every_lifecycle_step(make_recorder: MakeRecorder) -> None:
    import nova
    from nova.sim import SimBroker

    recorder = make_recorder()
    clock = VirtualClock()
    broker = SimBroker(clock=clock, seed=1)
    retry = nova.RetryPolicy(max_retries=2, backoff=nova.ConstantBackoff(timedelta(seconds=1)))
    producer = nova.TaskQueue(broker, recorder=recorder, retry=retry)
    worker = nova.TaskQueue(broker, recorder=recorder, retry=retry)  # a second sink, same tasks

    async def handle(task: nova.Task) -> None:
        if task.type == "flaky" and task.attempt < 3:
            raise RuntimeError(f"flaky on attempt {task.attempt}")
        if task.type == "doomed":
            raise ValueError("never works")

    ok = await producer.enqueue(nova.Task("ok", b"1"))
    flaky = await producer.enqueue(nova.Task("flaky", b"2"))
    doomed = await producer.enqueue(nova.Task("doomed", b"3"))
    await worker.start(handle)
    await clock.advance(timedelta(seconds=60))
    await worker.stop()
    await producer.stop()

    for queue in (producer, worker):
        assert queue.recording_stats["dropped"] == 0
    records = {r.task_id: r for r in await recorder.list()}
    assert set(records) == {ok.id, flaky.id, doomed.id}
    assert records[ok.id].status is TaskStatus.COMPLETED
    assert records[ok.id].retry_count == 0
    assert records[flaky.id].status is TaskStatus.COMPLETED
    assert records[flaky.id].retry_count == 2
    assert "flaky on attempt 2" in (records[flaky.id].error or "")
    assert records[doomed.id].status is TaskStatus.FAILED
    assert "never works" in (records[doomed.id].error or "")
    for record in records.values():
        assert record.started_at is not None
        assert record.completed_at is not None
        assert record.created_at <= record.started_at <= record.completed_at
        history = await recorder.history(record.task_id)
        assert history[0].status is TaskStatus.QUEUED
        assert history[-1].status is record.status
        assert record == fold_events(history)


async def test_a_batch_worker_records_each_task_of_its_batches(make_recorder: MakeRecorder) -> None:
    import nova
    from nova.sim import SimBroker

    recorder = make_recorder()
    clock = VirtualClock()
    broker = SimBroker(clock=clock, seed=2)
    retry = nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(seconds=1)))
    queue = nova.TaskQueue(broker, recorder=recorder, retry=retry)
    seen: list[list[str]] = []

    async def handle(tasks: list[nova.Task]) -> None:
        seen.append([t.type for t in tasks])
        if any(t.type == "bad" for t in tasks) and tasks[0].attempt == 1:
            raise RuntimeError("first try of a batch with a bad one")

    good = await queue.enqueue_batch([nova.Task("good", b"%d" % i) for i in range(3)])
    bad = await queue.enqueue(nova.Task("bad", b"x"))
    await queue.start_batch(handle, nova.CountAggregator(4))
    await clock.advance(timedelta(seconds=30))
    await queue.stop()

    assert seen[0] == ["good", "good", "good", "bad"] and len(seen) == 2  # failed once, retried as one batch
    assert queue.recording_stats["dropped"] == 0
    for result in [*good, bad]:
        history = await recorder.history(result.id)
        assert [e.status for e in history] == [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.RETRYING,
                                               TaskStatus.PROCESSING, TaskStatus.COMPLETED]
        versions = [e.version for e in history]
        assert versions == sorted(set(versions))  # strictly increasing per task
        record = await recorder.get(result.id)
        assert record is not None and record.status is TaskStatus.COMPLETED and record.retry_count == 1


# -- read your own writes: a recorder's reads first write what this process buffered ------------
async def test_a_record_is_readable_right_after_enqueue(make_recorder: MakeRecorder) -> None:
    import nova
    from nova.sim import SimBroker

    recorder = make_recorder()
    clock = VirtualClock()
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=3), recorder=recorder)
    result = await queue.enqueue(nova.Task("email", b"hi", headers={"k": "v"}), process_in=timedelta(minutes=1))
    later = await queue.enqueue(nova.Task("email", b"hi"), queue="other")
    # the clock never moves: no flush interval passes
    record = await recorder.get(result.id)
    assert record is not None
    assert (record.status, record.queue, record.headers, record.eta) == (
        TaskStatus.PENDING, "default", {"k": "v"}, result.eta)
    assert ids(await recorder.list()) == [later.id, result.id]
    assert await recorder.counts() == {TaskStatus.PENDING: 1, TaskStatus.QUEUED: 1}
    assert await recorder.counts_by_queue() == {"default": {TaskStatus.PENDING: 1},
                                                "other": {TaskStatus.QUEUED: 1}}
    assert [e.status for e in await recorder.history(later.id)] == [TaskStatus.QUEUED]
    assert queue.recording_stats["written"] == 2
    await queue.stop()


async def test_a_running_task_reads_as_processing_then_completed(make_recorder: MakeRecorder) -> None:
    import nova
    from nova.sim import SimBroker

    recorder = make_recorder()
    clock = VirtualClock()
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=4), recorder=recorder)
    release = asyncio.Event()

    async def handle(task: nova.Task) -> None:
        await release.wait()

    result = await queue.enqueue(nova.Task("slow", b""))
    await queue.start(handle)
    await clock.advance(0)  # the handler started and waits; no flush interval passed
    record = await recorder.get(result.id)
    assert record is not None and record.status is TaskStatus.PROCESSING
    assert record.started_at == clock.now()
    release.set()
    await clock.advance(0)
    record = await recorder.get(result.id)
    assert record is not None and record.status is TaskStatus.COMPLETED
    history = await recorder.history(result.id)
    assert [e.status for e in history] == [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.COMPLETED]
    assert [e.version for e in history] == sorted({e.version for e in history})
    await queue.stop()
    assert queue.recording_stats == {"written": 3, "dropped": 0, "failures": 0}


async def test_a_read_waits_for_a_write_in_flight() -> None:
    clock = VirtualClock()
    recorder = GatedRecorder()
    sink = RecordingSink(recorder, clock, flush_interval=0)
    sink.emit_step("w1", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    await recorder.entered.wait()  # the writer's insert is in flight
    reading = asyncio.ensure_future(recorder.get("w1"))
    await clock.advance(0)
    assert not reading.done()
    recorder.gate.set()
    record = await reading
    assert record is not None and record.status is TaskStatus.QUEUED
    await sink.close()


async def test_a_failed_write_before_a_read_is_left_to_the_writer() -> None:
    clock = VirtualClock()
    recorder = FailingRecorder(failures=1)
    sink = RecordingSink(recorder, clock)
    sink.emit_step("f1", "email", "default", 2, TaskStatus.QUEUED, 1, None, None, {}, None)
    assert await recorder.get("f1") is None  # the read's write failed; the read goes on
    assert (sink.written, sink.failures) == (0, 1)
    assert await clock.run_until(lambda: sink.written == 1, within=timedelta(seconds=10))
    assert await recorder.get("f1") is not None
    assert sink.dropped == 0
    await sink.close()


async def test_reads_of_an_unfed_recorder_and_of_another_loop_write_nothing() -> None:
    recorder = MemoryTaskRecorder()
    assert await recorder.get("x") is None  # no sink feeds it
    sink = RecordingSink(recorder, VirtualClock())  # fed, but nothing emitted on this loop yet
    assert await recorder.counts() == {}
    assert sink.written == 0
