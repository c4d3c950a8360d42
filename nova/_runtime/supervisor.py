"""``nova worker --processes N`` (and ``--reload``): a supervisor of worker processes.

Each child is ``python -m nova._runtime`` with the worker's options, in its own process
group (a terminal's Ctrl-C reaches the supervisor only, which forwards it once). A child
reports its state (starting, ready, stopping) through a pipe, once a second: that is what
the supervisor's /livez and /readyz answer from. A child asks Linux for SIGTERM when the
supervisor dies (prctl PR_SET_PDEATHSIG) and also watches its parent pid, so no child
outlives it; the supervisor reaps every child, so none is left a zombie.

- A child that dies while the supervisor runs is restarted, its exit code or signal logged
  ("killed by SIGKILL, out of memory?"); one that dies again within 10 s of its start waits
  1, 2, 4 ... 30 s first. One that exits 2 or 3 before it was ever ready (bad app, broker
  unreachable) stops them all: the supervisor exits with that code.
- First SIGTERM/SIGINT: every child gets SIGTERM (a graceful stop); second: SIGTERM again
  (they stop at once); third: SIGKILL. The supervisor exits once every child has: 0 if
  each stopped cleanly, else 1.
- ``--reload``: when a source file changes, every child is stopped gracefully and started
  again; a child that fails before it is ready waits for the next change.
- ``--metrics-port``: the children write their metrics to files in a directory of the
  supervisor's, which /metrics sums (``nova._runtime.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from nova._runtime.health import start_endpoints
from nova._runtime.metrics import MetricsFiles, content_type
from nova._runtime.options import CHILD_ENV, ChildLink, ExitCode, WorkerOptions
from nova._runtime.process import READY, STARTING, STOPPING
from nova._runtime.reload import FileWatcher, source_roots

__all__ = ["Supervisor", "describe_exit"]

log = logging.getLogger("nova.supervisor")

#: A child that dies sooner than this after its start is restarted after a backoff.
QUICK_DEATH = 10.0
MAX_BACKOFF = 30.0
#: A child not heard from for this long is reported not live (its event loop is stuck).
SILENT_LIMIT = 10.0
#: ... unless it started less than this ago (importing the app may take a while).
START_GRACE = 60.0
RELOAD_POLL = 1.0

_STATES = {STARTING: "starting", READY: "ready", STOPPING: "stopping"}


def describe_exit(code: int) -> str:
    """``-9`` -> "killed by SIGKILL (out of memory?)", ``3`` -> "exited with code 3"."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exited with code {code}"


@dataclass
class _Child:
    index: int
    generation: int
    process: asyncio.subprocess.Process
    status_fd: int
    started: float = field(default_factory=time.monotonic)
    state: bytes = STARTING
    heard: float | None = None
    ever_ready: bool = False
    exit_code: int | None = None


class Supervisor:
    """Runs ``opts.processes`` worker processes until a signal (see the module docstring)."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.children: dict[int, _Child] = {}
        self.backoff: dict[int, float] = {}
        self.generation = 0
        self.signals = 0
        self.stopping = False
        self.fatal: int | None = None
        self.clean = True
        self._wake = asyncio.Event()  # stop asked, or a child ended
        self._watchers: set[asyncio.Task[None]] = set()
        self._waiting_for_change = False
        self._metrics: MetricsFiles | None = None
        if opts.metrics_port is not None:
            self._metrics = MetricsFiles(tempfile.mkdtemp(prefix="nova-metrics-"))
            self.opts = dataclasses.replace(opts, metrics_dir=str(self._metrics.directory))

    # -- children ---------------------------------------------------------------------
    async def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        link = ChildLink(index, self.opts.processes, os.getpid(), write_fd)
        env = {**os.environ, CHILD_ENV: link.encode()}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nova._runtime", *self.opts.child_argv(),
                pass_fds=(write_fd,), env=env, process_group=0)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        child = _Child(index, self.generation, process, read_fd)
        self.children[index] = child
        os.set_blocking(read_fd, False)
        asyncio.get_running_loop().add_reader(read_fd, self._read_status, child)
        log.info("worker %d started (pid %d)", index, process.pid)
        watcher = asyncio.get_running_loop().create_task(self._watch(child), name=f"nova-watch-{index}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _read_status(self, child: _Child) -> None:
        try:
            data = os.read(child.status_fd, 256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_status(child)
            return
        child.state = data[-1:]
        child.heard = time.monotonic()
        if child.state == READY:
            child.ever_ready = True

    def _close_status(self, child: _Child) -> None:
        if child.status_fd >= 0:
            asyncio.get_running_loop().remove_reader(child.status_fd)
            os.close(child.status_fd)
            child.status_fd = -1

    async def _watch(self, child: _Child) -> None:
        code = await child.process.wait()
        child.exit_code = code
        self._read_status(child)
        self._close_status(child)
        how = describe_exit(code)
        ran = time.monotonic() - child.started
        current = self.children.get(child.index) is child
        if current:
            del self.children[child.index]
        if self.stopping or child.generation != self.generation:
            if self.stopping:
                # (SIGTERM before it set its own handlers: it had not taken a task yet)
                self.clean = self.clean and (code == 0 or (code == -signal.SIGTERM and not child.ever_ready))
            log.info("worker %d (pid %d) stopped: %s", child.index, child.process.pid, how)
            self._wake.set()
            return
        if not child.ever_ready and code in (ExitCode.USAGE, ExitCode.BROKER):
            if self.opts.reload:
                log.error("worker %d (pid %d) could not start (%s): waiting for a change to the code",
                          child.index, child.process.pid, how)
                self._waiting_for_change = True
                self._wake.set()
                return
            log.error("worker %d (pid %d) could not start (%s): stopping", child.index, child.process.pid, how)
            self.fatal = code
            self.request_stop(None)
            return
        pause = 0.0
        if ran < QUICK_DEATH:
            pause = min(max(2 * self.backoff.get(child.index, 0.5), 1.0), MAX_BACKOFF)
            self.backoff[child.index] = pause
        else:
            self.backoff.pop(child.index, None)
        log.warning("worker %d (pid %d) %s after %.1f s; restarting%s", child.index, child.process.pid, how, ran,
                    f" in {pause:g} s" if pause else "")
        if pause:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    while not self.stopping:
                        self._wake.clear()
                        await self._wake.wait()
        if not self.stopping and child.generation == self.generation and child.index not in self.children:
            await self._spawn(child.index)

    def _signal_children(self, sig: signal.Signals) -> None:
        for child in list(self.children.values()):
            if child.exit_code is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    # -- signals ---------------------------------------------------------------------------
    def on_signal(self, sig: signal.Signals) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: stopping %d worker(s)", sig.name, len(self.children))
            self.request_stop(sig)
        elif self.signals == 2:
            log.warning("%s again: the workers stop at once", sig.name)
            self.clean = False
            self._signal_children(signal.SIGTERM)
        else:
            log.warning("%s a third time: killing the workers", sig.name)
            self._signal_children(signal.SIGKILL)

    def request_stop(self, sig: signal.Signals | None) -> None:
        self.stopping = True
        self._signal_children(signal.SIGTERM)
        self._wake.set()

    # -- health ------------------------------------------------------------------------------
    def _lines(self) -> str:
        now = time.monotonic()
        lines = []
        for index in range(self.opts.processes):
            child = self.children.get(index)
            if child is None:
                lines.append(f"worker {index}: not running")
                continue
            heard = "never" if child.heard is None else f"{now - child.heard:.1f} s ago"
            lines.append(f"worker {index} (pid {child.process.pid}): {_STATES.get(child.state, '?')}, "
                         f"heard {heard}")
        return "\n".join(lines)

    def live(self) -> tuple[bool, str]:
        now = time.monotonic()
        for child in self.children.values():
            since, limit = (child.started, START_GRACE) if child.heard is None else (child.heard, SILENT_LIMIT)
            if now - since > limit:
                return False, self._lines()
        return True, self._lines()

    def metrics(self) -> tuple[int, str, bytes]:
        assert self._metrics is not None
        live = {c.process.pid for c in self.children.values() if c.exit_code is None}
        return 200, content_type(), self._metrics.render(live)

    def ready(self) -> tuple[bool, str]:
        now = time.monotonic()
        ok = not self.stopping and len(self.children) == self.opts.processes and all(
            c.state == READY and c.heard is not None and now - c.heard <= SILENT_LIMIT
            for c in self.children.values())
        return ok, self._lines()

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        return asyncio.run(self._run())

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        servers = await start_endpoints(self.opts, live=self.live, ready=self.ready, metrics=self.metrics)
        if servers is None:
            self._remove_metrics()
            return ExitCode.USAGE
        watcher = None
        if self.opts.reload:
            watcher = loop.create_task(self._reload_loop(), name="nova-reload")
        log.info("supervisor (pid %d): %d worker process(es) of %s", os.getpid(), self.opts.processes,
                 self.opts.app)
        try:
            for index in range(self.opts.processes):
                await self._spawn(index)
            while not (self.stopping and not self.children):
                self._wake.clear()
                await self._wake.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for child in list(self.children.values()):  # only on an error of our own: leave no child behind
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
            if self._watchers:
                await asyncio.gather(*self._watchers, return_exceptions=True)
            for server in servers:
                await server.close()
            self._remove_metrics()
        code: int = ExitCode.OK if self.clean else ExitCode.FORCED
        if self.fatal is not None:
            code = self.fatal
        log.info("supervisor stopped (exit %d)", code)
        return code

    def _remove_metrics(self) -> None:
        if self._metrics is not None:
            shutil.rmtree(self._metrics.directory, ignore_errors=True)

    async def _reload_loop(self) -> None:
        watcher = FileWatcher(source_roots(self.opts.app.partition(":")[0]))
        await asyncio.to_thread(watcher.changed)
        log.info("watching %s for changes", ", ".join(map(str, watcher.roots)))
        while not self.stopping:
            await asyncio.sleep(RELOAD_POLL)
            changed = await asyncio.to_thread(watcher.changed)
            if not changed or self.stopping:
                continue
            log.info("%s changed: restarting the workers",
                     changed[0] + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))
            await self._restart_all()

    async def _restart_all(self) -> None:
        self.generation += 1
        self._waiting_for_change = False
        old = list(self.children.values())
        self.children.clear()  # (their watchers see an old generation: no restart of their own)
        for child in old:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        for child in old:
            await child.process.wait()
        self.backoff.clear()
        if not self.stopping:
            for index in range(self.opts.processes):
                if index not in self.children:
                    await self._spawn(index)
