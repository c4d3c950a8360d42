"""Running ``nova worker`` in subprocesses for tests: an app module written per test, its
handlers keeping a ledger file, health probes, and waits on conditions with deadlines.

The app module (``workerapp.py`` in the test's directory) builds its broker with
``make_broker()`` from the ``NOVA_TEST_*`` variables the test sets, so the test process
and the workers share one broker configuration (and a fresh topic prefix).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import nova

ROOT = Path(__file__).resolve().parent.parent

APP_MODULE = '''\
import asyncio
import logging
import os
import pathlib

import nova
from tests.worker_support import make_broker

LEDGER = pathlib.Path(os.environ["NOVA_TEST_LEDGER"])
RELEASE = pathlib.Path(os.environ["NOVA_TEST_RELEASE"])


def note(event, task):
    with LEDGER.open("a") as ledger:
        ledger.write(f"{event} {task.id} {os.getpid()} {task.attempt}\\n")


class SeededApp(nova.App):
    """Enqueues one slow task once it consumes (a sim:// broker lives in the worker only)."""

    async def start(self, *args, **kwargs):
        await super().start(*args, **kwargs)
        if os.environ.get("NOVA_TEST_SEED"):
            await self.enqueue(nova.Task("slow", b"seed"))


app = SeededApp(make_broker(), topic_prefix=os.environ["NOVA_TEST_PREFIX"], group_id="workers")


@app.task("slow")
async def slow(task):
    note("start", task)
    logging.getLogger("workerapp").info("slow task started")
    for _ in range(6000):  # until the test releases it (at most about 2 minutes)
        if RELEASE.exists():
            break
        await asyncio.sleep(0.02)
    note("done", task)


@app.task("quick")
async def quick(task):
    note("done", task)
'''


def make_broker() -> Any:
    """The broker named by NOVA_TEST_BROKER, with the options the worker tests need."""
    name = os.environ.get("NOVA_TEST_BROKER", "sim")
    if name == "sim":
        from nova.sim import SimBroker

        return SimBroker(clock=nova.SystemClock())
    if name == "kafka":
        # (A killed consumer's partitions move on after session_timeout_ms, 30 s by default.)
        return nova.KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"],
                                partitions=int(os.environ.get("NOVA_TEST_PARTITIONS", "1")))
    if name == "rabbitmq":
        return nova.RabbitMQBroker(os.environ["NOVA_RABBITMQ_URL"])
    if name == "rocketmq":
        kwargs: dict[str, Any] = {"namesrv": os.environ["NOVA_ROCKETMQ_NAMESRV"],
                                  # an unacked task comes back after this (10 s is RocketMQ's minimum)
                                  "consume_timeout": timedelta(seconds=ROCKETMQ_INVISIBLE)}
        if os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY"):
            kwargs["auth"] = (os.environ["NOVA_ROCKETMQ_ACCESS_KEY"], os.environ["NOVA_ROCKETMQ_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"):
            kwargs["admin_auth"] = (os.environ["NOVA_ROCKETMQ_ADMIN_ACCESS_KEY"],
                                    os.environ["NOVA_ROCKETMQ_ADMIN_SECRET_KEY"])
        if os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS"):
            kwargs["timer_precision"] = timedelta(milliseconds=int(os.environ["NOVA_ROCKETMQ_TIMER_PRECISION_MS"]))
        return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **kwargs)
    raise ValueError(f"unknown NOVA_TEST_BROKER {name!r}")


ROCKETMQ_INVISIBLE = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        time.sleep(0.02)


def probe(port: int, path: str) -> tuple[int | None, str]:
    """GET ``path`` from the health port: (status, body), or (None, "") if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return None, ""
    finally:
        conn.close()


@dataclass
class Entry:
    event: str
    task_id: str
    pid: int
    attempt: int


class Setup:
    """One test's app module, ledger, release file and environment."""

    def __init__(self, directory: Path, broker: str, **env: str) -> None:
        self.dir = directory
        self.ledger = directory / "ledger"
        self.release_file = directory / "release"
        self.prefix = "wk-" + uuid.uuid4().hex[:10]
        (directory / "workerapp.py").write_text(APP_MODULE)
        self.ledger.touch()
        self.env = {**os.environ, "NOVA_TEST_BROKER": broker, "NOVA_TEST_LEDGER": str(self.ledger),
                    "NOVA_TEST_RELEASE": str(self.release_file), "NOVA_TEST_PREFIX": self.prefix,
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    **env}
        self.workers: list[WorkerProcess] = []

    def entries(self) -> list[Entry]:
        out = []
        for line in self.ledger.read_text().splitlines():
            event, task_id, pid, attempt = line.split()
            out.append(Entry(event, task_id, int(pid), int(attempt)))
        return out

    def started(self, task_id: str | None = None) -> list[Entry]:
        return [e for e in self.entries() if e.event == "start" and (task_id is None or e.task_id == task_id)]

    def done(self, task_id: str | None = None) -> list[Entry]:
        return [e for e in self.entries() if e.event == "done" and (task_id is None or e.task_id == task_id)]

    def release(self) -> None:
        self.release_file.touch()

    def worker(self, *args: str) -> WorkerProcess:
        worker = WorkerProcess(self, list(args))
        self.workers.append(worker)
        return worker

    def queue(self, **options: Any) -> nova.TaskQueue:
        """A producer on the same broker and prefix as the workers, with more TaskQueue ``options``."""
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            broker = make_broker()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return nova.TaskQueue(broker, topic_prefix=self.prefix, group_id="workers", close_broker=True, **options)

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.kill()


class WorkerProcess:
    """``python -m nova.cli worker workerapp:app ARGS`` in the test's directory, output to a file."""

    def __init__(self, setup: Setup, args: list[str]) -> None:
        self.log_path = setup.dir / f"worker-{len(setup.workers)}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nova.cli", "worker", *args], cwd=setup.dir, env=setup.env,
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, within: float) -> int:
        try:
            code = self.process.wait(within)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the worker did not exit within {within:g} s:\n{self.output}") from exc
        self._log.close()
        return code

    def wait_for_output(self, text: str, within: float) -> None:
        wait_until(lambda: text in self.output or self.process.poll() is not None, within, f"{text!r} in the log")
        assert text in self.output, f"the worker exited ({self.process.returncode}) before {text!r}:\n{self.output}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._log.close()


def child_pids(supervisor_pid: int) -> list[int]:
    """The live children of a process (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == supervisor_pid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
