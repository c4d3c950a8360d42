"""``nova worker`` in subprocesses, on a sim:// broker inside each worker (no real broker):
help, loading errors, signals and exit codes, health, the supervisor and --reload.

The real-broker versions (redelivery, competing workers) are in tests/brokers/test_worker_runtime.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nova
from nova._runtime.cli import add_worker_arguments
from nova._runtime.loading import AppLoadError, load_app, split_spec
from nova._runtime.options import ChildLink, ExitCode, WorkerOptions
from nova._runtime.process import READY, _WorkerProcess
from nova._runtime.supervisor import describe_exit
from tests.worker_support import Setup, child_pids, free_port, is_running, probe, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and Linux signals")

START = 60.0  # a Python process importing nova and the app, on a busy 2-core machine


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path, "sim", NOVA_TEST_SEED="1")
    yield s
    s.cleanup()


def test_help_documents_every_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "nova.cli", "worker", "--help"], capture_output=True, text=True,
                         check=True).stdout
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    flags = [s for action in parser._actions if action.help != argparse.SUPPRESS
             for s in action.option_strings if s.startswith("--")]
    assert len(flags) >= 10
    for flag in flags:
        assert flag in out
    for text in ("exit codes", "0  stopped cleanly", "2  usage error", "3  the broker is unreachable",
                 "second signal", "/livez", "/readyz", "/metrics"):
        assert text in out


@pytest.mark.parametrize(("spec", "message"), [
    ("workerapp:slow", "'slow' in workerapp is a function, expected a nova.App"),
    ("workerapz:app", "module 'workerapz' not found"),
    ("workerapp:ap", "workerapp has no attribute 'ap' (its nova.App: app)"),
    ("workerapp.py", "APP is a module name with dots, not a file path: e.g. workerapp:app"),
    ("workerapp:nova", "'nova' in workerapp is a module, expected a nova.App"),
])
def test_a_bad_app_is_exit_2_saying_what_to_fix(setup: Setup, spec: str, message: str) -> None:
    worker = setup.worker(spec)
    assert worker.wait(START) == 2
    assert f"nova worker: error: {message}" in worker.output


def test_an_import_error_inside_the_app_shows_its_traceback(setup: Setup) -> None:
    (setup.dir / "broken.py").write_text("import nova\nimport not_a_module_anywhere\n")
    worker = setup.worker("broken:app")
    assert worker.wait(START) == 2
    assert "Traceback" in worker.output and "broken.py" in worker.output
    assert "nova worker: error: importing broken failed: No module named 'not_a_module_anywhere'" in worker.output


def test_bad_flags_are_exit_2(setup: Setup) -> None:
    worker = setup.worker("workerapp:app", "--concurrency", "0")
    assert worker.wait(START) == 2
    assert "--concurrency: must be at least 1" in worker.output


def test_sigterm_lets_the_running_handler_finish_then_exit_0(setup: Setup) -> None:
    port = free_port()
    worker = setup.worker("workerapp:app", "--health-port", str(port), "--health-host", "127.0.0.1")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "ready")
    assert probe(port, "/livez") == (200, "ok\n")
    wait_until(lambda: len(setup.started()) == 1, 30, "the seeded task started")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: probe(port, "/readyz") == (503, "stopping\n"), 30, "not ready while stopping")
    assert probe(port, "/livez")[0] == 200  # still alive: the handler is finishing
    setup.release()
    assert worker.wait(30) == 0
    task_id = setup.started()[0].task_id
    assert [e.event for e in setup.entries() if e.task_id == task_id] == ["start", "done"]
    assert f"workerapp [task={task_id} type=slow queue=default attempt=1]: slow task started" in worker.output
    assert "stopped (exit 0)" in worker.output


def test_a_second_signal_stops_at_once_with_exit_1(setup: Setup) -> None:
    worker = setup.worker("workerapp:app")
    wait_until(lambda: len(setup.started()) == 1, START, "the seeded task started")
    worker.signal(signal.SIGINT)
    worker.wait_for_output("SIGINT: stopping", 30)
    worker.signal(signal.SIGINT)
    assert worker.wait(30) == 1
    assert setup.done() == []  # cancelled, never finished (and so never acked)
    assert "stopped at once (exit 1)" in worker.output


def test_the_shutdown_timeout_cancels_a_handler_that_does_not_finish(setup: Setup) -> None:
    worker = setup.worker("workerapp:app", "--shutdown-timeout", "0.5")
    wait_until(lambda: len(setup.started()) == 1, START, "the seeded task started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert setup.done() == []


def test_processes_restart_a_killed_child_and_stop_together(setup: Setup) -> None:
    port = free_port()
    supervisor = setup.worker("workerapp:app", "--processes", "2", "--health-port", str(port),
                              "--health-host", "127.0.0.1")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, START, "both workers ready")
    status, body = probe(port, "/readyz")
    assert status == 200 and body.count(": ready") == 2, body
    children = child_pids(supervisor.pid)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    supervisor.wait_for_output(f"(pid {children[0]}) killed by SIGKILL (out of memory?)", 30)
    wait_until(lambda: len(child_pids(supervisor.pid)) == 2 and probe(port, "/readyz")[0] == 200, START,
               "a new worker ready")
    replaced = child_pids(supervisor.pid)
    assert children[0] not in replaced and children[1] in replaced
    assert probe(port, "/livez")[0] == 200
    supervisor.signal(signal.SIGTERM)
    setup.release()
    assert supervisor.wait(60) == 0
    assert not any(is_running(pid) for pid in replaced)
    assert "supervisor stopped (exit 0)" in supervisor.output


def test_children_die_with_a_killed_supervisor(setup: Setup) -> None:
    supervisor = setup.worker("workerapp:app", "--processes", "2")
    wait_until(lambda: len(child_pids(supervisor.pid)) == 2, START, "two workers")
    children = child_pids(supervisor.pid)
    wait_until(lambda: len(setup.started()) == 2, START, "both workers consuming")
    setup.release()
    supervisor.process.kill()
    supervisor.wait(30)
    wait_until(lambda: not any(is_running(pid) for pid in children), 60, "the orphaned workers exited")


def test_a_child_that_cannot_start_stops_the_supervisor_with_its_code(setup: Setup) -> None:
    (setup.dir / "badconf.py").write_text(
        "import nova\napp = nova.App('sim://')\n"
        "@app.task('x', queue='q')\nasync def x(task): ...\n")
    supervisor = setup.worker("badconf:app", "--processes", "2", "--queues", "nope")
    assert supervisor.wait(START) == 2
    assert "no handlers on queue(s) 'nope'" in supervisor.output
    assert "could not start (exited with code 2): stopping" in supervisor.output


def test_reload_restarts_the_worker_when_the_code_changes(setup: Setup) -> None:
    supervisor = setup.worker("workerapp:app", "--reload")
    supervisor.wait_for_output("ready: consuming default", START)
    supervisor.wait_for_output("watching", START)
    first = child_pids(supervisor.pid)
    setup.release()  # the seeded task finishes, so the restart is quick
    module = setup.dir / "workerapp.py"
    module.write_text(module.read_text() + "\n# changed\n")
    os.utime(module, (module.stat().st_atime, module.stat().st_mtime + 5))
    supervisor.wait_for_output("workerapp.py changed: restarting the workers", 30)
    wait_until(lambda: supervisor.output.count("ready: consuming default") == 2, START, "the new worker ready")
    assert child_pids(supervisor.pid) != first
    supervisor.signal(signal.SIGINT)
    assert supervisor.wait(60) == 0


def test_split_spec_and_load_app_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_spec("shop.tasks:app") == ("shop.tasks", "app")
    assert split_spec("shop.tasks") == ("shop.tasks", None)
    with pytest.raises(AppLoadError, match="module:attribute"):
        split_spec("shop tasks:app")
    (tmp_path / "twoapps.py").write_text("import nova\na = nova.App('sim://')\nb = nova.App('sim://')\n")
    (tmp_path / "oneapp.py").write_text("import nova\nworker = nova.App('sim://')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError, match=r"several nova\.App \(a, b\): name one, e\.g\. twoapps:a"):
        load_app("twoapps")
    assert load_app("oneapp") is load_app("oneapp:worker")


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL (out of memory?)"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(3) == "exited with code 3"


async def test_a_consumer_that_stops_reading_ends_the_worker_with_exit_3(caplog: pytest.LogCaptureFixture) -> None:
    from nova.sim import SimBroker

    app = nova.App(SimBroker(clock=nova.SystemClock()))

    @app.task("x")
    async def x(task: nova.Task) -> None: ...

    worker = _WorkerProcess(app, WorkerOptions(app="m:app"), None)
    run = asyncio.create_task(worker.run())
    async with asyncio.timeout(30):
        while worker.state != READY:  # noqa: ASYNC110 - a condition polled against a deadline
            await asyncio.sleep(0.01)
    assert worker.ready() == (True, "ready")
    pull = app._consumers[0].worker._pull_task  # type: ignore[union-attr]
    assert pull is not None
    pull.cancel()  # as if the subscription had failed
    await asyncio.wait({pull})
    assert worker.ready() == (False, "not consuming: default")
    async with asyncio.timeout(30):
        assert await run == ExitCode.BROKER
    assert "queue(s) default stopped consuming" in caplog.text


async def test_more_processes_than_partitions_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from nova.sim import SimBroker

    class TwoPartitions(SimBroker):
        async def partitions_of(self, topic: str) -> int | None:
            return 2 if topic.endswith("_normal") else None

    app = nova.App(TwoPartitions(clock=nova.SystemClock()), topic_prefix="shop")

    @app.task("x", queue="images")
    async def x(task: nova.Task) -> None: ...

    link = ChildLink(index=0, processes=3, supervisor_pid=os.getpid(), status_fd=-1)
    worker = _WorkerProcess(app, WorkerOptions(app="m:app", processes=3), link)
    with caplog.at_level(logging.WARNING, logger="nova.runtime"):
        await worker._warn_about_partitions(["images"])
    assert [r.getMessage() for r in caplog.records] == [
        "queue images (normal priority): 3 worker processes but its topic shop_images_normal has 2 partition(s): "
        "1 process(es) get none of its tasks; give the topic more partitions"]
