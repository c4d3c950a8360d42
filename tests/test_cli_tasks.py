"""``nova tasks``: parse real argv with the real parser, run against chDB, read stdout."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("chdb")

from nova._cli_tasks import add_tasks_parser, parse_when, run_tasks
from nova._clickhouse import ClickHouseTaskRecorder
from nova._recording import TaskEvent, TaskStatus

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nova")
    add_tasks_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["tasks", *argv])


def event(task_id: str, status: TaskStatus, seconds: int, **kw: Any) -> TaskEvent:
    fields: dict[str, Any] = {"type": "email", "queue": "mail", "priority": 2,
                              "at": T0 + timedelta(seconds=seconds)}
    fields.update(kw)
    return TaskEvent(task_id=task_id, status=status, version=seconds, **fields)


@pytest.fixture
async def url(tmp_path: Path) -> str:
    """A chDB recorder holding: t-ok (completed), t-bad (failed after 2 retries), t-bill (queued, billing)."""
    url = f"chdb://{tmp_path / 'tasks'}"
    recorder = ClickHouseTaskRecorder.from_url(url)
    await recorder.record([
        event("t-ok", TaskStatus.QUEUED, 1, headers={"tenant": "acme"}),
        event("t-ok", TaskStatus.PROCESSING, 2),
        event("t-ok", TaskStatus.COMPLETED, 3),
        event("t-bad", TaskStatus.QUEUED, 10),
        event("t-bad", TaskStatus.PROCESSING, 11),
        event("t-bad", TaskStatus.RETRYING, 12,
              error="Traceback (most recent call last):\nValueError: first"),
        event("t-bad", TaskStatus.PROCESSING, 13, attempt=2),
        event("t-bad", TaskStatus.RETRYING, 14, attempt=2, error="ValueError: second"),
        event("t-bad", TaskStatus.PROCESSING, 15, attempt=3),
        event("t-bad", TaskStatus.FAILED, 16, attempt=3, error="ValueError: " + "x" * 200),
        event("t-bill", TaskStatus.QUEUED, 20, queue="billing", type="invoice"),
    ])
    await recorder.close()
    return url


def lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


async def test_list_prints_newest_first(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("--recorder", url)) == 0
    out = capsys.readouterr().out
    rows = lines(out)
    assert rows[0] == ["ID", "TYPE", "QUEUE", "STATUS", "RETRIES", "UPDATED", "(UTC)", "ERROR"]
    assert [r[0] for r in rows[1:-1]] == ["t-bill", "t-bad", "t-ok"]
    assert rows[1][:5] == ["t-bill", "invoice", "billing", "queued", "0"]
    assert rows[2][:5] == ["t-bad", "email", "mail", "failed", "2"]
    assert "2030-01-01 00:00:16.000" in out
    assert "ValueError: xxx" in out
    assert "x" * 100 not in out  # long errors are cut in the table
    assert out.strip().endswith("(3 tasks)")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--status", "failed"], ["t-bad"]),
        (["--status", "completed"], ["t-ok"]),
        (["--queue", "billing"], ["t-bill"]),
        (["--type", "email"], ["t-bad", "t-ok"]),
        (["--since", "2030-01-01T00:00:10Z"], ["t-bill", "t-bad"]),
        (["--until", "2030-01-01T00:00:16"], ["t-ok"]),
        (["--limit", "1"], ["t-bill"]),
        (["--limit", "1", "--offset", "1"], ["t-bad"]),
    ],
)
async def test_list_filters(url: str, capsys: pytest.CaptureFixture[str], argv: list[str],
                            expected: list[str]) -> None:
    assert await run_tasks(parse("--recorder", url, *argv)) == 0
    rows = lines(capsys.readouterr().out)
    assert [r[0] for r in rows[1:-1]] == expected


async def test_list_says_when_more_rows_exist(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("--recorder", url, "--limit", "2")) == 0
    assert capsys.readouterr().out.strip().endswith("(2 tasks; --offset/--limit for more)")


async def test_list_relative_since(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # everything above happened in 2030, which is after "one hour ago"; nothing is before it
    assert await run_tasks(parse("--recorder", url, "--until", "1h")) == 0
    assert capsys.readouterr().out.strip() == "no tasks match"
    assert await run_tasks(parse("--recorder", url, "--since", "1h", "--status", "queued")) == 0
    assert [r[0] for r in lines(capsys.readouterr().out)[1:-1]] == ["t-bill"]


async def test_show_prints_state_and_history(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("show", "t-bad", "--recorder", url)) == 0
    out = capsys.readouterr().out
    state, history = out.split("\n\n")
    fields = {row[0]: " ".join(row[1:]) for row in lines(state)}
    assert fields["task"] == "t-bad"
    assert fields["status"] == "failed"
    assert fields["retries"] == "2"
    assert fields["created"] == "2030-01-01 00:00:10.000"
    assert fields["started"] == "2030-01-01 00:00:11.000"
    assert fields["completed"] == "2030-01-01 00:00:16.000"
    assert fields["error"] == "ValueError: " + "x" * 200  # in full here
    rows = lines(history)
    assert rows[0] == ["AT", "(UTC)", "STATUS", "ATTEMPT", "QUEUE", "ERROR"]
    assert [r[2] for r in rows[1:]] == [
        "queued", "processing", "retrying", "processing", "retrying", "processing", "failed"]
    assert rows[3][-2:] == ["ValueError:", "first"]  # a traceback shows as its last line


async def test_show_due_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"chdb://{tmp_path / 'due'}"
    recorder = ClickHouseTaskRecorder.from_url(url)
    await recorder.record([event("later", TaskStatus.QUEUED, 1, eta=T0 + timedelta(hours=1))])
    await recorder.close()
    assert await run_tasks(parse("show", "later", "--recorder", url)) == 0
    state, history = capsys.readouterr().out.split("\n\n")
    assert "eta        2030-01-01 01:00:00.000" in state
    rows = lines(history)
    assert rows[0] == ["AT", "(UTC)", "STATUS", "ATTEMPT", "QUEUE", "DUE", "(UTC)", "ERROR"]
    assert rows[1][-2:] == ["2030-01-01", "01:00:00.000"]


async def test_show_headers(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("--recorder", url, "show", "t-ok")) == 0  # --recorder before show works too
    assert "headers    tenant=acme" in capsys.readouterr().out


async def test_show_unknown_task(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("show", "nope", "--recorder", url)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no recorded task 'nope'" in captured.err


async def test_stats(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("stats", "--recorder", url)) == 0
    per_status, per_queue = capsys.readouterr().out.split("\n\n")
    assert lines(per_status) == [
        ["STATUS", "TASKS"], ["queued", "1"], ["completed", "1"], ["failed", "1"], ["total", "3"]]
    assert lines(per_queue) == [
        ["QUEUE", "QUEUED", "COMPLETED", "FAILED", "TOTAL"],
        ["billing", "1", "0", "0", "1"],
        ["mail", "0", "1", "1", "2"],
    ]


async def test_empty_recorder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"chdb://{tmp_path / 'empty'}"
    assert await run_tasks(parse("--recorder", url)) == 0
    assert capsys.readouterr().out.strip() == "no tasks match"
    assert await run_tasks(parse("stats", "--recorder", url)) == 0
    assert capsys.readouterr().out.strip() == "no tasks recorded"


async def test_recorder_from_the_environment(url: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_RECORDER", url)
    assert await run_tasks(parse("--status", "failed")) == 0
    assert "t-bad" in capsys.readouterr().out


async def test_no_recorder(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOVA_RECORDER", raising=False)
    assert await run_tasks(parse("stats")) == 2
    assert "--recorder" in capsys.readouterr().err


async def test_bad_url_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("--recorder", "http://nova:s3cr3t@host:port/db")) == 2
    assert await run_tasks(parse("--recorder", "mysql://nova:s3cr3t@host/db")) == 2
    captured = capsys.readouterr()
    assert "invalid" in captured.err or "must start with" in captured.err
    assert "s3cr3t" not in captured.err + captured.out


async def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_tasks(parse("--recorder", "http://nova:s3cr3t@127.0.0.1:1/db")) == 1
    captured = capsys.readouterr()
    assert "127.0.0.1:1" in captured.err
    assert "s3cr3t" not in captured.err + captured.out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("2d12h", timedelta(days=2, hours=12)),
        ("1w", timedelta(weeks=1)),
        ("2030-01-31T12:00:00Z", datetime(2030, 1, 31, 12, tzinfo=UTC)),
        ("2030-01-31 12:00", datetime(2030, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime | timedelta) -> None:
    assert parse_when(text) == expected


@pytest.mark.parametrize("argv", [["--since", "yesterday"], ["--limit", "-1"], ["--status", "bogus"]])
def test_bad_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    capsys.readouterr()
