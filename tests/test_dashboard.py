"""The dashboard without a browser: its queries over a scripted run's records (chDB),
its HTTP safety rules through httpx's ASGI transport, run again through the actions, the CLI.

The browser tests (a real Chromium) are in tests/dashboard/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("chdb")
pytest.importorskip("starlette")
pytest.importorskip("httpx")

import httpx

import nova
from nova._clickhouse import ClickHouseTaskRecorder
from nova._recording import TaskEvent, TaskStatus
from nova.dashboard._actions import RERUN_HEADER, Actions
from nova.dashboard._app import create_app
from nova.dashboard._cli import add_dashboard_parser, run_dashboard
from nova.dashboard._queries import DashboardQueries, ListFilter, split_runs
from nova.dashboard._security import BasicAuth, check_bind, safe_back
from nova.dashboard._views import payload_view, task_url
from nova.sim import SimBroker, VirtualClock
from tests.dashboard import scenario as sc

BASE = "http://127.0.0.1"


SERVER_URL = os.environ.get("NOVA_CLICKHOUSE_URL")
Records = tuple[Callable[[], ClickHouseTaskRecorder], sc.Scenario]  # (a recorder over them, the run)


@pytest.fixture(scope="module", params=[
    pytest.param("chdb", id="chdb"),
    pytest.param("server", id="server", marks=pytest.mark.skipif(
        SERVER_URL is None, reason="set NOVA_CLICKHOUSE_URL to run against a ClickHouse server")),
])
def records(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Records]:
    """The scripted run, on a virtual clock that starts 20 minutes ago, recorded in chDB or on a server."""
    url = f"chdb://{tmp_path_factory.mktemp('dash') / 'records'}" if request.param == "chdb" else SERVER_URL
    assert url is not None
    table = f"nova_dash_test_{uuid.uuid4().hex[:12]}"

    def recorder(**kw: Any) -> ClickHouseTaskRecorder:
        return ClickHouseTaskRecorder.from_url(url, table, store_payload=True, **kw)

    async def build() -> sc.Scenario:
        clock = VirtualClock(datetime.now(UTC) - timedelta(minutes=20))
        made = recorder(clock=clock)
        try:
            scenario = await sc.run(SimBroker(clock=clock), made)
            assert scenario.worker is not None
            await scenario.worker.stop()
        finally:
            await made.close()
        return scenario

    yield recorder, asyncio.run(build())

    if request.param == "server":
        async def drop() -> None:
            made = recorder()
            await made._run("drop", lambda client: client.command(f"DROP TABLE IF EXISTS {made._quoted}"))
            await made.close()

        asyncio.run(drop())


@pytest.fixture
async def queries(records: Records) -> AsyncIterator[DashboardQueries]:
    recorder = records[0]()
    yield DashboardQueries(recorder)
    await recorder.close()


def http_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, follow_redirects=False)


@pytest.fixture
async def client_for(records: Records) -> AsyncIterator[Any]:
    """Makes HTTP clients of an app over the records (with create_app's keyword arguments)."""
    made: list[tuple[httpx.AsyncClient, ClickHouseTaskRecorder]] = []

    def make(**kw: Any) -> httpx.AsyncClient:
        recorder = records[0]()
        made.append((http_client(create_app(recorder, **kw)), recorder))
        return made[-1][0]

    yield make
    for http, recorder in made:
        await http.aclose()
        await recorder.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


# -- queries -------------------------------------------------------------------------------
async def test_overview_counts_each_queue_and_status(queries: DashboardQueries,
                                                     records: Records) -> None:
    overview = await queries.overview("1h")
    assert {q.queue: dict(q.counts) for q in overview.queues} == sc.EXPECTED
    assert overview.totals == {TaskStatus.COMPLETED: 7, TaskStatus.FAILED: 3, TaskStatus.PENDING: 1,
                               TaskStatus.QUEUED: 1}
    # the task nobody consumes waits; the delayed one is not due yet, so it does not
    oldest = overview.oldest_waiting
    assert oldest is not None and oldest.queue == "idle"
    assert oldest.oldest_waiting_id == records[1].id("idle")
    assert [q.queue for q in overview.queues if q.oldest_waiting_id] == ["idle"]


async def test_overview_series_count_the_run(queries: DashboardQueries) -> None:
    overview = await queries.overview("1h")
    assert len(overview.buckets) == len(overview.completed) == len(overview.wait_p99) >= 60
    assert sum(overview.completed) == 7
    assert sum(overview.retried) == 5  # two reports, two invoices and the hostile task, once each
    assert sum(overview.failed) == 3
    assert sum(overview.started) == 15  # attempts: 4 emails, 2x2 reports, 2x2 invoices, 2 hostile, 1 blob
    busy = [i for i, n in enumerate(overview.started) if n]
    assert busy and all(overview.wait_p50[i] is not None and overview.duration_p99[i] is not None for i in busy)
    # the retries waited their 200 ms backoff (virtual time: exactly), nothing waited for long
    assert max(w for w in overview.wait_p99 if w is not None) <= 1.0


async def test_an_empty_window_has_buckets_but_no_numbers(queries: DashboardQueries) -> None:
    overview = await queries.overview("15m", now=datetime.now(UTC) + timedelta(days=2))
    assert sum(overview.completed) == 0 and all(w is None for w in overview.wait_p50)
    assert overview.totals  # counts are "now", whatever the window


async def test_the_status_filter_finds_exactly_those_tasks(queries: DashboardQueries,
                                                           records: Records) -> None:
    s = records[1]
    failed = await queries.tasks(ListFilter.of(TaskStatus.FAILED))
    assert {r.task_id for r in failed.records} == {*s.ids["invoice"], *s.ids["hostile"]}
    assert all(r.status is TaskStatus.FAILED and r.retry_count == 1 for r in failed.records)
    assert failed.next_offset is None
    email = await queries.tasks(ListFilter(queue="email"))
    assert {r.task_id for r in email.records} == set(s.ids["email"])
    reports = await queries.tasks(ListFilter(type="report.build", statuses=(TaskStatus.COMPLETED,)))
    assert {r.task_id for r in reports.records} == set(s.ids["report"])
    assert all(r.error == "RuntimeError: report store busy" for r in reports.records)
    assert (await queries.tasks(ListFilter(queue="email", statuses=(TaskStatus.FAILED,)))).records == []


async def test_pages_walk_every_task_once_newest_first(queries: DashboardQueries) -> None:
    seen: list[str] = []
    offset: int | None = 0
    updated: list[datetime] = []
    while offset is not None:
        page = await queries.tasks(ListFilter(), limit=3, offset=offset)
        seen += [r.task_id for r in page.records]
        updated += [r.updated_at for r in page.records]
        offset = page.next_offset
    assert len(seen) == len(set(seen)) == 12
    assert updated == sorted(updated, reverse=True)


async def test_time_filters_and_the_id_prefix(queries: DashboardQueries, records: Records) -> None:
    s = records[1]
    assert (await queries.tasks(ListFilter(since=datetime.now(UTC)))).records == []
    everything = await queries.tasks(ListFilter(since=datetime.now(UTC) - timedelta(hours=1)))
    assert len(everything.records) == 12
    assert (await queries.tasks(ListFilter(until=datetime.now(UTC) - timedelta(hours=1)))).records == []
    target = s.id("binary")
    found = await queries.tasks(ListFilter(id_prefix=target))
    assert [r.task_id for r in found.records] == [target]
    assert (await queries.tasks(ListFilter(id_prefix="no-such-id"))).records == []


async def test_a_task_story_has_its_attempts_and_errors(queries: DashboardQueries,
                                                        records: Records) -> None:
    story = await queries.task(records[1].id("invoice"))
    assert story is not None
    assert story.record.status is TaskStatus.FAILED and story.record.payload == b'{"invoice": 4711}'
    assert [(e.status, e.attempt) for e in story.events] == [
        (TaskStatus.QUEUED, 1), (TaskStatus.PROCESSING, 1), (TaskStatus.RETRYING, 1),
        (TaskStatus.PROCESSING, 2), (TaskStatus.FAILED, 2)]
    assert [e.error for e in story.events if e.error] == ['ValueError: invoice {"invoice": 4711} has no lines'] * 2
    assert len(story.runs) == 1
    assert await queries.task("no-such-task") is None


async def test_top_errors_count_retries_and_dead_letters(queries: DashboardQueries) -> None:
    errors = {e: (n, tasks) for e, n, tasks, _ in await queries.top_errors(timedelta(hours=1))}
    assert errors == {
        "RuntimeError: report store busy": (2, 2),
        'ValueError: invoice {"invoice": 4711} has no lines': (2, 1),
        'ValueError: invoice {"invoice": 4712} has no lines': (2, 1),
        f"ValueError: {sc.HOSTILE_ERROR}": (2, 1),
    }


def test_runs_split_where_a_finished_task_is_queued_again() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)

    def ev(status: TaskStatus, n: int) -> TaskEvent:
        return TaskEvent("t", "x", "q", 2, status, t0 + timedelta(seconds=n), n)

    events = [ev(TaskStatus.QUEUED, 1), ev(TaskStatus.PROCESSING, 2), ev(TaskStatus.FAILED, 3),
              ev(TaskStatus.QUEUED, 4), ev(TaskStatus.PROCESSING, 5), ev(TaskStatus.COMPLETED, 6)]
    assert [len(r) for r in split_runs(events)] == [3, 3]
    assert [len(r) for r in split_runs(events[:3])] == [3]
    assert split_runs([]) == []


# -- run again and delete -------------------------------------------------------------------
async def test_run_again_sends_a_dead_letter_back_and_the_worker_completes_it(tmp_path: Path) -> None:
    clock = VirtualClock(datetime.now(UTC) - timedelta(minutes=5))
    broker = SimBroker(clock=clock)
    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path / 'r'}", store_payload=True, clock=clock)
    scenario = await sc.run(broker, recorder)
    assert scenario.worker is not None
    actions = Actions(recorder, nova.TaskQueue(broker, topic_prefix=sc.PREFIX))
    try:
        invoice, email = scenario.id("invoice"), scenario.id("email")
        scenario.fixed.add("invoice.create")
        outcomes = await actions.rerun([invoice, email, "no-such-task"])
        assert [o.ok for o in outcomes] == [True, False, False]
        assert "completed, not failed" in outcomes[1].message and "no such task" in outcomes[2].message
        # the QUEUED step is recorded at once (the worker may already be past it): a second
        # click finds the task no longer failed and sends nothing
        assert (await recorder.get(invoice)).status is not TaskStatus.FAILED  # type: ignore[union-attr]
        again = await actions.rerun([invoice])
        assert not again[0].ok and ", not failed" in again[0].message

        expected = {**sc.EXPECTED, "default": {TaskStatus.FAILED: 2, TaskStatus.COMPLETED: 2,
                                               TaskStatus.PENDING: 1}}
        await sc.settle(broker, recorder, expected)
        record = await recorder.get(invoice)
        assert record is not None and record.status is TaskStatus.COMPLETED
        assert record.headers == {RERUN_HEADER: "1"} and record.payload == b'{"invoice": 4711}'
        runs = split_runs(await recorder.history(invoice))
        assert [[e.status for e in run] for run in runs] == [
            [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.RETRYING, TaskStatus.PROCESSING,
             TaskStatus.FAILED],
            [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.COMPLETED]]
        assert runs[1][0].queue == "default" and runs[1][-1].attempt == 1
        assert scenario.calls["invoice.create"] == 5  # 2 x 2 attempts, then the run again

        deleted = await actions.delete([scenario.id("invoice", 1), "no-such-task"])
        assert [o.ok for o in deleted] == [True, False]
        assert await recorder.get(scenario.id("invoice", 1)) is None
    finally:
        await scenario.worker.stop()
        await recorder.close()


async def test_run_again_needs_the_payload_and_a_broker(tmp_path: Path) -> None:
    recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp_path / 'r'}")  # payloads not stored
    t0 = datetime.now(UTC)
    await recorder.record([
        TaskEvent("t1", "x", "default", 2, TaskStatus.QUEUED, t0, 1, payload=b"p"),
        TaskEvent("t1", "x", "default", 2, TaskStatus.FAILED, t0, 2, error="E"),
    ])
    try:
        queue = nova.TaskQueue(SimBroker(), topic_prefix=sc.PREFIX)
        [outcome] = await Actions(recorder, queue).rerun(["t1"])
        assert not outcome.ok and "store_payload=True" in outcome.message
        [outcome] = await Actions(recorder, None).rerun(["t1"])
        assert not outcome.ok and "--broker" in outcome.message
        with pytest.raises(ValueError, match="at most 500"):
            await Actions(recorder, None).rerun([f"t{i}" for i in range(501)])
    finally:
        await recorder.close()


# -- HTTP: pages, API, safety ----------------------------------------------------------------
async def test_pages_and_api_answer(client_for: Any, records: Records) -> None:
    client = client_for()
    for path in ("/", "/?window=7d", "/tasks", "/tasks?status=failed&queue=default", "/failures",
                 "/failures?tab=retrying", task_url(records[1].id("binary"))):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["x-frame-options"] == "DENY"
    tasks = (await client.get("/api/tasks", params={"status": "failed"})).json()
    assert len(tasks["tasks"]) == 3 and tasks["next_offset"] is None
    overview = (await client.get("/api/overview", params={"window": "15m"})).json()
    assert overview["totals"] == {"pending": 1, "queued": 1, "completed": 7, "failed": 3}
    idle = next(q for q in overview["queues"] if q["queue"] == "idle")
    assert idle["oldest_waiting"]["id"] == records[1].id("idle") and idle["oldest_waiting"]["age_seconds"] > 0
    task = (await client.get(f"/api/tasks/{records[1].id('binary')}")).json()
    assert task["task"]["payload"] == {"encoding": "base64", "data": base64.b64encode(sc.BINARY).decode(),
                                       "size": 512, "truncated": False}
    assert [e["status"] for e in task["runs"][0]] == ["queued", "processing", "completed"]
    failures = (await client.get("/api/failures")).json()
    assert failures["tab"] == "dead" and len(failures["tasks"]) == 3 and len(failures["top_errors"]) == 4
    meta = (await client.get("/api/meta")).json()
    assert meta["queues"] == ["default", "email", "idle", "reports"] and meta["can_rerun"] is False
    assert (await client.get("/api/tasks/no-such-task")).status_code == 404
    assert (await client.get("/api/overview", params={"window": "2y"})).json()["error"].startswith("window:")
    assert "neither a duration" in (await client.get("/api/tasks", params={"since": "soon"})).json()["error"]
    assert (await client.get("/tasks", params={"status": "nope"})).status_code == 400


async def test_the_id_search_goes_to_the_task(client_for: Any, records: Records) -> None:
    client = client_for()
    target = records[1].id("email", 2)
    response = await client.get("/tasks", params={"q": target})
    assert response.status_code == 303 and response.headers["location"] == task_url(target)
    prefix = (await client.get("/tasks", params={"q": target[:-1]})).text
    assert target in prefix


async def test_hostile_text_is_shown_as_text(client_for: Any, records: Records) -> None:
    client = client_for()
    pages = [(await client.get("/tasks")).text, (await client.get("/failures")).text,
             (await client.get(task_url(records[1].id("hostile")))).text]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(" in html
    task_page = pages[2]
    assert "&lt;img src=x onerror=alert(&#39;header&#39;)&gt;" in task_page  # header and payload
    # the only scripts are the dashboard's own files
    assert re.findall(r"<script[^>]*>", task_page) == [
        '<script src="/static/htmx.min.js" defer>', '<script src="/static/uPlot.iife.min.js" defer>',
        '<script src="/static/dashboard.js" defer>']


async def test_every_action_needs_the_pages_csrf_token(client_for: Any, records: Records) -> None:
    client = client_for()
    target = records[1].id("email", 3)
    token = csrf_of((await client.get(task_url(target))).text)
    form = {"ids": target, "back": "/tasks"}
    assert (await client.post("/actions/delete", data=form)).status_code == 403  # no token
    assert (await client.post("/actions/delete", data={**form, "csrf": "0" * 64})).status_code == 403
    other = http_client(client._transport.app)  # type: ignore[attr-defined]  # another browser: another cookie
    await other.get("/")
    assert (await other.post("/actions/delete", data={**form, "csrf": token})).status_code == 403
    evil = await client.post("/actions/delete", data={**form, "csrf": token}, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403
    assert (await client.get(f"/api/tasks/{target}")).status_code == 200  # nothing was deleted so far
    done = await client.post("/actions/delete", data={**form, "csrf": token}, headers={"origin": BASE})
    assert done.status_code == 303 and done.headers["location"].startswith("/tasks?notice=")
    assert "record deleted" in (await client.get(done.headers["location"])).text
    assert (await client.get(f"/api/tasks/{target}")).status_code == 404
    assert (await client.get("/actions/delete")).status_code == 405
    assert (await client.post("/actions/explode", data={**form, "csrf": token})).status_code == 404


async def test_read_only_offers_and_takes_no_action(client_for: Any, records: Records) -> None:
    client = client_for(read_only=True)
    html = (await client.get(task_url(records[1].id("invoice")))).text + (await client.get("/failures")).text
    assert "/actions/" not in html and 'name="csrf"' not in html and 'id="read-only"' in html
    writable = client_for()
    token = csrf_of((await writable.get(task_url(records[1].id("invoice")))).text)
    client.cookies = writable.cookies
    refused = await client.post("/actions/delete", data={"ids": records[1].id("invoice"), "csrf": token})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert (await client.get("/api/meta")).json()["read_only"] is True


async def test_basic_auth_guards_every_path(client_for: Any) -> None:
    client = client_for(auth=BasicAuth("admin", "s3cret:x"), loopback_only_hosts=False)
    for path in ("/", "/api/meta", "/static/dashboard.js"):
        refused = await client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert (await client.get("/", auth=("admin", "wrong"))).status_code == 401
    assert (await client.get("/", auth=("admin", "s3cret:x"))).status_code == 200
    assert (await client.get("/static/htmx.min.js", auth=("admin", "s3cret:x"))).status_code == 200


async def test_a_loopback_dashboard_answers_only_to_loopback_host_names(client_for: Any) -> None:
    client = client_for()
    assert (await client.get("/", headers={"host": "rebound.example:8080"})).status_code == 421
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "localhost"):
        assert (await client.get("/api/meta", headers={"host": host})).status_code == 200, host


# -- safety rules and CLI -----------------------------------------------------------------
def test_binding_beyond_loopback_without_auth_is_refused_with_the_reason() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, 8080, None)
    with pytest.raises(nova.ConfigurationError, match=r"refusing to listen on 0\.0\.0\.0:8080 without --auth: "
                                                      r"the dashboard shows every recorded task's payload"):
        check_bind("0.0.0.0", 8080, None)
    check_bind("0.0.0.0", 8080, BasicAuth("a", "b"))
    with pytest.raises(nova.ConfigurationError, match="USER:PASSWORD"):
        BasicAuth.parse("nopassword")
    assert "s3cret" not in repr(BasicAuth.parse("admin:s3cret"))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nova")
    add_dashboard_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dashboard", *argv])


def test_the_cli_refuses_before_serving(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.delenv("NOVA_RECORDER", raising=False)
    monkeypatch.delenv("NOVA_DASHBOARD_AUTH", raising=False)
    assert run_dashboard(parse()) == 2
    assert "--recorder" in capsys.readouterr().err
    url = f"chdb://{tmp_path / 'r'}"
    assert run_dashboard(parse("--recorder", url, "--host", "0.0.0.0")) == 2
    assert "refusing to listen on 0.0.0.0:8080 without --auth" in capsys.readouterr().err
    assert run_dashboard(parse("--recorder", url, "--broker", "sim://")) == 2
    assert "in-memory broker" in capsys.readouterr().err
    assert run_dashboard(parse("--recorder", "mysql://x", "--auth", "a:b")) == 2
    assert "chdb://" in capsys.readouterr().err


def test_help_documents_every_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "nova.cli", "dashboard", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--recorder", "--table", "--broker", "--topic-prefix", "--host", "--port", "--read-only", "--auth",
                 "--refresh", "/api/", "127.0.0.1", "CSRF"):
        assert flag in out, flag


def test_import_nova_imports_no_web_library() -> None:
    code = ("import sys, nova, nova.cli, nova.dashboard\n"
            "nova.cli._build_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'jinja2', 'uvicorn', 'chdb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- formatting ----------------------------------------------------------------------------
def test_payloads_show_as_text_json_or_hex() -> None:
    assert payload_view(None).kind == "none"
    assert payload_view(b"hello").text == "hello"
    assert payload_view(b'{"a": [1]}').kind == "json"
    binary = payload_view(b"\x00\xffab")
    assert binary.kind == "hex" and binary.text == "00000000  00 ff 61 62" + " " * 36 + "  |..ab|"
    cut = payload_view("é".encode() * 3000, limit=4097)  # the limit falls inside a character
    assert cut.kind == "text" and cut.truncated and cut.text == "é" * 2048 and cut.size == 6000


def test_back_links_stay_on_the_site() -> None:
    assert safe_back("/tasks?status=failed") == "/tasks?status=failed"
    for bad in ("//evil.example/x", "http://evil.example/", "tasks", "/\\evil", None, "/x\nSet-Cookie: a=b"):
        assert safe_back(bad) == "/"
    assert task_url("a/b <c>?") == "/tasks/a%2Fb%20%3Cc%3E%3F"


def test_the_readme_commands_serve_the_demos_records(tmp_path: Path) -> None:
    """`nova demo --recorder chdb://DIR` then `nova dashboard --recorder chdb://DIR`, as the README says."""
    url = f"chdb://{tmp_path / 'nova-demo'}"
    demo = subprocess.run([sys.executable, "-m", "nova.cli", "demo", "--quiet", "--recorder", url],
                          capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "nova.cli", "dashboard", "--recorder", url, "--port", str(port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            banner = server.stdout.readline()  # printed once the records were read, just before serving
            assert banner.startswith(f"nova dashboard on http://127.0.0.1:{port}/") and "(20 tasks;" in banner, banner
            deadline = time.monotonic() + 30
            while True:
                try:
                    overview = httpx.get(f"http://127.0.0.1:{port}/api/overview", timeout=5).json()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            assert overview["totals"] == {"completed": 20}
            assert {q["queue"] for q in overview["queues"]} == {"default", "reports"}
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            assert page.status_code == 200 and "nova dashboard" in page.text
        finally:
            server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit status 0
            _, errors = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in errors, errors
