"""``nova worker --metrics-port`` and ``--log-format json`` in subprocesses, on a sim:// broker
inside each worker: /metrics of one process and summed over --processes (a killed worker's
counts kept), JSON log lines naming the task and its trace. The summing rules are unit-tested
at the end."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova._runtime import cli
from nova._runtime.metrics import merge
from nova._runtime.options import ExitCode
from tests.observability_support import sample, spans, write_app
from tests.worker_support import Setup, child_pids, free_port, probe, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and Linux signals")

START = 60.0
COMPLETED = 'nova_tasks_processed_total{queue="default",status="completed",type="ok"}'
DEAD = 'nova_tasks_processed_total{queue="default",status="dead_lettered",type="bad"}'


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path, "sim", NOVA_TEST_SEED="ok:3,bad:1")
    write_app(s)
    yield s
    s.cleanup()


def scrape(port: int) -> str:
    status, text = probe(port, "/metrics")
    return text if status == 200 else ""


def test_metrics_port_serves_the_apps_metrics(setup: Setup) -> None:
    port = free_port()
    worker = setup.worker("obsapp:app", "--metrics-port", str(port))
    wait_until(lambda: sample(scrape(port), COMPLETED) == 3, START, "3 completed in /metrics")
    text = scrape(port)
    assert sample(text, DEAD) == 1
    assert sample(text, 'nova_tasks_enqueued_total{priority="normal",queue="default",type="ok"}') == 3
    assert sample(text, 'nova_task_duration_seconds_count{queue="default",type="ok"}') == 3
    assert sample(text, 'nova_tasks_in_progress{queue="default"}') == 0
    assert sample(text, 'nova_queue_backlog{priority="normal",queue="default"}') == 0
    assert "process_cpu_seconds_total" in text  # the default registry's own metrics come along
    assert probe(port, "/livez")[0] == 404  # health is --health-port's
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_health_and_metrics_may_share_a_port(setup: Setup) -> None:
    port = free_port()
    worker = setup.worker("obsapp:app", "--metrics-port", str(port), "--health-port", str(port))
    wait_until(lambda: sample(scrape(port), COMPLETED) == 3, START, "3 completed in /metrics")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "ready")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_metrics_are_summed_over_processes_and_a_killed_ones_are_kept(setup: Setup) -> None:
    port = free_port()
    worker = setup.worker("obsapp:app", "--processes", "2", "--metrics-port", str(port))
    # Each worker process has its own sim:// broker and enqueues its own tasks.
    wait_until(lambda: sample(scrape(port), COMPLETED) == 6, START, "6 completed over 2 processes")
    assert sample(scrape(port), DEAD) == 2
    [victim, *_] = child_pids(worker.pid)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in child_pids(worker.pid) and len(child_pids(worker.pid)) == 2, START,
               "the killed worker replaced")
    # The new one did its 3 more; the killed one's 3 are still counted: the counter never went down.
    seen: list[float | None] = []

    def counted() -> bool:
        seen.append(sample(scrape(port), COMPLETED))
        return seen[-1] == 9

    wait_until(counted, START, "9 completed")
    assert all(v is None or v >= 6 for v in seen), seen
    assert sample(scrape(port), 'nova_tasks_in_progress{queue="default"}') == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0


def test_json_logs_name_the_task_and_its_trace(setup: Setup) -> None:
    spans_file = setup.dir / "spans.jsonl"
    setup.env["NOVA_TEST_SPANS"] = str(spans_file)
    worker = setup.worker("obsapp:app", "--log-format", "json")
    wait_until(lambda: len([s for s in spans(spans_file) if s["name"] == "process default"]) == 4, START,
               "4 attempts traced")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    lines = [line for line in worker.output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    working = [r for r in records if r["message"] == "working on it"]
    assert len(working) == 3
    attempts = {s["attributes"]["messaging.message.id"]: s for s in spans(spans_file) if s["name"] == "process default"}
    for record in working:
        assert record["level"] == "INFO" and record["logger"] == "obsapp"
        assert record["task_type"] == "ok" and record["queue"] == "default" and record["attempt"] == 1
        assert record["order"] == "A-1"  # extra= fields come along
        span = attempts[record["task_id"]]
        assert (record["trace_id"], record["span_id"]) == (span["trace_id"], span["span_id"])
    dead = [r for r in records if "went to default_dlq" in r["message"]]
    assert len(dead) == 1 and dead[0]["task_type"] == "bad" and dead[0]["level"] == "WARNING"
    assert {"time", "process"} <= set(dead[0])


def test_metrics_port_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "nova._prometheus", raising=False)
    assert cli._metrics_missing() == ExitCode.USAGE
    assert "nova-taskqueue[metrics]" in capsys.readouterr().err


def family(name: str, kind: str, samples: list[tuple[str, dict[str, str], float]]) -> dict[str, object]:
    return {"name": name, "type": kind, "documentation": name, "unit": "",
            "samples": [[s, labels, v] for s, labels, v in samples]}


def test_merge_sums_what_adds_up_and_only_that() -> None:
    one = [family("nova_tasks_processed", "counter", [("nova_tasks_processed_total", {"status": "completed"}, 3),
                                                        ("nova_tasks_processed_created", {"status": "completed"}, 50)]),
           family("nova_queue_backlog", "gauge", [("nova_queue_backlog", {"queue": "q"}, 7)]),
           family("nova_tasks_in_progress", "gauge", [("nova_tasks_in_progress", {"queue": "q"}, 2)]),
           family("process_start_time_seconds", "gauge", [("process_start_time_seconds", {}, 100)]),
           family("process_max_fds", "gauge", [("process_max_fds", {}, 1024)])]
    two = [family("nova_tasks_processed", "counter", [("nova_tasks_processed_total", {"status": "completed"}, 4),
                                                        ("nova_tasks_processed_created", {"status": "completed"}, 40)]),
           family("nova_queue_backlog", "gauge", [("nova_queue_backlog", {"queue": "q"}, 5)]),
           family("nova_tasks_in_progress", "gauge", [("nova_tasks_in_progress", {"queue": "q"}, 1)]),
           family("process_start_time_seconds", "gauge", [("process_start_time_seconds", {}, 90)]),
           family("process_max_fds", "gauge", [("process_max_fds", {}, 1024)])]
    retired = {"nova_tasks_processed": ({"name": "nova_tasks_processed", "type": "counter", "documentation": "d",
                                         "unit": ""},
                                        {("nova_tasks_processed_total", (("status", "completed"),)): 10.0})}
    merged = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for metric in merge([one, two], retired) for s in metric.samples}
    assert merged == {
        ("nova_tasks_processed_total", (("status", "completed"),)): 17,   # 3 + 4 + 10 of an ended process
        ("nova_tasks_processed_created", (("status", "completed"),)): 40,  # the earliest
        ("nova_queue_backlog", (("queue", "q"),)): 7,                       # one backlog, seen by both
        ("nova_tasks_in_progress", (("queue", "q"),)): 3,
        ("process_start_time_seconds", ()): 90,
        ("process_max_fds", ()): 1024,
    }
