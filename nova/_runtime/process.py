"""One worker process: run an App's handlers until a signal, then stop the way the signals ask.

    first SIGTERM/SIGINT   stop fetching; running handlers finish (up to --shutdown-timeout,
                           then they are cancelled, their tasks unacked); partial batches go
                           to the batch handler; acks are flushed; exit 0
    second signal          cancel the handlers, ack nothing more, leave the group; exit 1
    third signal           exit 1 at once

A broker that cannot be reached, or refuses the credentials, within 15 s is exit 3; so is a
consumer whose subscription fails later (a supervisor, or Kubernetes, starts a new process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from nova._app import App
from nova._errors import BrokerError, ConfigurationError, NovaError, ValidationError
from nova._naming import ready_topic
from nova._runtime.health import HttpServer, start_endpoints
from nova._runtime.logs import flush_logs
from nova._runtime.metrics import app_registries, content_type, render, write_snapshot
from nova._runtime.options import ChildLink, ExitCode, WorkerOptions
from nova._task import Priority
from nova.brokers._common import scrub

__all__ = ["PartitionCounts", "die_with_supervisor", "install_early_signal_handlers", "run_process"]

log = logging.getLogger("nova.runtime")

#: How long the broker may take to answer (or refuse) the first connection.
CONNECT_WITHIN = 15.0
#: How long a forced stop may take before the process just exits.
FORCED_WITHIN = 5.0
HEARTBEAT = 1.0

T = TypeVar("T")

# Child states reported to the supervisor, one byte each.
STARTING, READY, STOPPING = b"S", b"R", b"T"


_early_signals = [0]


def install_early_signal_handlers() -> None:
    """Count SIGTERM/SIGINT from now until the worker's own handlers take over (while the app
    is imported): they count as the first (and second) signal then."""

    def count(signum: int, frame: object) -> None:
        _early_signals[0] += 1
        if _early_signals[0] > 1:
            os._exit(ExitCode.FORCED)  # a second signal: at once, even in the middle of an import

    signal.signal(signal.SIGTERM, count)
    signal.signal(signal.SIGINT, count)


@runtime_checkable
class PartitionCounts(Protocol):
    """Optional on a broker: how many partitions a topic has (None: unknown). With it,
    ``nova worker --processes N`` warns when N is more than a queue's topics can feed."""

    async def partitions_of(self, topic: str) -> int | None: ...


class _HandlerThreads(ThreadPoolExecutor):
    """The executor sync handlers run in: as many threads as handlers may run at once, and a
    count of the ones still running (a handler thread cannot be killed; exit does not wait for it)."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="nova-handler")
        self._lock = threading.Lock()
        self.busy = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        def counted() -> T:
            with self._lock:
                self.busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.busy -= 1

        return super().submit(counted)


def die_with_supervisor(link: ChildLink) -> bool:
    """Ask Linux to send SIGTERM when the supervisor dies; False if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    return os.getppid() == link.supervisor_pid


class _WorkerProcess:
    def __init__(self, app: App, opts: WorkerOptions, link: ChildLink | None) -> None:
        self.app = app
        self.opts = opts
        self.link = link
        self.state = STARTING
        self.signals = 0
        self.stop_requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.threads = _HandlerThreads(opts.concurrency * max(len(opts.queues or app.queues), 1) + 4)
        # The registries of the app's PrometheusMetrics (with --metrics-port, or for the supervisor's).
        self.registries: list[Any] = []

    # -- signals --------------------------------------------------------------------
    def on_signal(self, sig: signal.Signals) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: stopping; running handlers get up to %g s (a second signal stops at once)",
                     sig.name, self.opts.shutdown_timeout)
            self.stop_requested.set()
        elif self.signals == 2:
            log.warning("%s again: stopping at once; unfinished tasks will be redelivered", sig.name)
            self.forced.set()
        else:
            log.warning("%s a third time: exiting now", sig.name)
            flush_logs()
            os._exit(ExitCode.FORCED)

    # -- the supervisor link ------------------------------------------------------------
    def report(self) -> None:
        if self.link is None:
            return
        try:
            os.write(self.link.status_fd, self.state)
        except BlockingIOError:
            pass  # the supervisor is slow to read: the next heartbeat tells it
        except OSError:
            self.supervisor_gone()

    def supervisor_gone(self) -> None:
        if not self.stop_requested.is_set():
            log.warning("the supervisor is gone: stopping")
            self.stop_requested.set()

    async def heartbeat(self) -> None:
        while True:
            self.report()
            self.write_metrics()
            if self.link is not None and os.getppid() != self.link.supervisor_pid:
                self.supervisor_gone()
            await asyncio.sleep(HEARTBEAT)

    def set_state(self, state: bytes) -> None:
        self.state = state
        self.report()

    def write_metrics(self) -> None:
        """This process's metrics for the supervisor's /metrics (with --processes)."""
        if self.opts.metrics_dir is not None and self.registries:
            write_snapshot(self.opts.metrics_dir, self.registries)

    def metrics(self) -> tuple[int, str, bytes]:
        return 200, content_type(), render(self.registries)

    # -- health ---------------------------------------------------------------------------
    def live(self) -> tuple[bool, str]:
        return True, "ok"  # answered at all: the event loop turns

    def ready(self) -> tuple[bool, str]:
        if self.state == READY and self.app.consuming:
            return True, "ready"
        if self.state == READY:
            return False, f"not consuming: {', '.join(self.app.stalled_queues)}"
        return False, "stopping" if self.state == STOPPING else "starting"

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self.threads)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        self.signals, _early_signals[0] = _early_signals[0], 0
        if self.signals:
            self.stop_requested.set()
        if self.signals > 1:
            self.forced.set()
        if self.opts.metrics_port is not None or self.opts.metrics_dir is not None:
            self.registries = app_registries(self.app)  # before the app starts: it may add a PrometheusMetrics
        beat = loop.create_task(self.heartbeat(), name="nova-heartbeat")
        servers: list[HttpServer] = []
        if self.link is None:  # a supervisor's worker leaves them to the supervisor
            started = await start_endpoints(self.opts, live=self.live, ready=self.ready, metrics=self.metrics)
            if started is None:
                beat.cancel()
                return ExitCode.USAGE
            servers = started
        try:
            return await self._run()
        finally:
            beat.cancel()
            self.write_metrics()  # the final counts
            await self._close_broker()
            for server in servers:
                await server.close()

    async def _close_broker(self) -> None:
        """The process ends: close the broker even if the App does not own it (given as an object)."""
        try:
            async with asyncio.timeout(FORCED_WITHIN):
                await self.app.broker.close()
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            log.debug("closing the broker: %r", exc)

    async def _run(self) -> int:
        app, opts = self.app, self.opts
        queues = list(opts.queues) if opts.queues else list(app.queues)
        described = "; ".join(f"{q} ({', '.join(app.queues.get(q, []))})" for q in queues)
        log.info("starting: %s on %s, queues %s, concurrency %d", opts.app, _describe(app), described,
                 opts.concurrency)
        code = await self._start(queues)
        if code is not None:
            return code
        self.set_state(READY)
        log.info("ready: consuming %s", ", ".join(queues))
        if self.link is None or self.link.index == 0:
            await self._warn_about_partitions(queues)
        stalled = await self._wait_for_stop()
        return await self._stop(ExitCode.BROKER if stalled else ExitCode.OK)

    async def _start(self, queues: list[str]) -> int | None:
        """Connect and subscribe; an exit code if that failed or a signal came first."""
        try:
            try:
                await self._unless_stopped(asyncio.wait_for(self.app.connect(), CONNECT_WITHIN))
            except TimeoutError as exc:
                raise _NoAnswer from exc
            await self._unless_stopped(self.app.start(queues, concurrency=self.opts.concurrency,
                                                      prefetch=self.opts.prefetch))
        except _Interrupted:
            log.info("stopped before consuming")
            await self._close_quietly()
            return ExitCode.OK if not self.forced.is_set() else ExitCode.FORCED
        except _NoAnswer:
            log.error("the broker did not answer within %g s (%s)", CONNECT_WITHIN, _describe(self.app))
            await self._close_quietly()
            return ExitCode.BROKER
        except BrokerError as exc:
            log.error("cannot use the broker: %s", self._scrub(exc))
            await self._close_quietly()
            return ExitCode.BROKER
        except (ConfigurationError, ValidationError) as exc:
            log.error("%s", self._scrub(exc))
            await self._close_quietly()
            return ExitCode.USAGE
        except NovaError as exc:
            log.error("could not start: %s: %s", type(exc).__name__, self._scrub(exc))
            await self._close_quietly()
            return ExitCode.FORCED
        except Exception as exc:  # noqa: BLE001 - not nova's: shown whole, without the URL's password
            log.error("could not start: %s: %s", type(exc).__name__, self._scrub(exc))
            await self._close_quietly()
            return ExitCode.FORCED
        return None

    def _scrub(self, exc: BaseException) -> str:
        """The error's text without the password of the App's URL (adapters leave it out already)."""
        return scrub(str(exc), [self.app._url_password])

    async def _unless_stopped(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Interrupted
        task.result()

    async def _close_quietly(self) -> None:
        try:
            async with asyncio.timeout(FORCED_WITHIN):
                await self.app.stop(graceful=False)
        except Exception as exc:  # noqa: BLE001 - closing after a failure; the failure is what matters
            log.debug("closing after a failed start: %r", exc)

    async def _wait_for_stop(self) -> bool:
        """Until a signal (False) or a consumer stops reading (True)."""
        while not self.stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT):
                    await self.stop_requested.wait()
            stalled = self.app.stalled_queues
            if stalled and not self.stop_requested.is_set():
                log.error("queue(s) %s stopped consuming (see the error above): stopping this worker so that "
                          "a new one takes over", ", ".join(stalled))
                return True
        return False

    async def _stop(self, code: int) -> int:
        self.set_state(STOPPING)
        running = self.app.running_handlers
        if running:
            log.info("waiting for %d running handler(s), at most %g s", running, self.opts.shutdown_timeout)
        graceful = asyncio.ensure_future(self.app.stop(graceful=True,
                                                       timeout=timedelta(seconds=self.opts.shutdown_timeout)))
        forced = asyncio.ensure_future(self.forced.wait())
        await asyncio.wait((graceful, forced), return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not graceful.done():
            graceful.cancel()
            await asyncio.wait((graceful,))
            try:
                async with asyncio.timeout(FORCED_WITHIN):
                    await self.app.stop(graceful=False)
            except Exception as exc:  # noqa: BLE001 - exiting anyway; the broker redelivers
                log.warning("forced stop did not finish cleanly: %r", exc)
            log.info("stopped at once (exit 1)")
            return ExitCode.FORCED
        if graceful.cancelled() or graceful.exception() is not None:
            log.error("stopping failed: %r", "cancelled" if graceful.cancelled() else graceful.exception())
            return ExitCode.FORCED
        log.info("stopped (exit %d)", code)
        return code

    async def _warn_about_partitions(self, queues: list[str]) -> None:
        broker = self.app.broker
        processes = self.link.processes if self.link is not None else 1
        if processes < 2 or not isinstance(broker, PartitionCounts):
            return
        prefix = self.app._producer.prefix
        for queue in queues:
            for level in Priority:
                topic = ready_topic(prefix, queue, level)
                try:
                    partitions = await broker.partitions_of(topic)
                except Exception as exc:  # noqa: BLE001 - a warning's check must not stop the worker
                    log.debug("could not count the partitions of %s: %r", topic, exc)
                    continue
                if partitions is not None and partitions < processes:
                    log.warning("queue %s (%s priority): %d worker processes but its topic %s has %d partition(s): "
                                "%d process(es) get none of its tasks; give the topic more partitions",
                                queue, level.name.lower(), processes, topic, partitions, processes - partitions)


class _Interrupted(Exception):
    """A stop was asked before the app was consuming."""


class _NoAnswer(Exception):
    """The broker did not answer the first connection in time."""


def _describe(app: App) -> str:
    """The broker without secrets: its type and prefix."""
    return f"{type(app.broker).__name__} (topic prefix {app._producer.prefix!r})"


def run_process(app: App, opts: WorkerOptions, link: ChildLink | None = None) -> int:
    """Run one worker process to its end; returns the exit code (or exits at once when a
    sync handler's thread is still running, which nothing can stop)."""
    worker = _WorkerProcess(app, opts, link)
    if link is not None:
        os.set_blocking(link.status_fd, False)
    loop = asyncio.new_event_loop()
    started = time.monotonic()
    try:
        code = loop.run_until_complete(worker.run())
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    if worker.threads.busy:
        log.warning("%d sync handler(s) still running in threads: exiting without them (their tasks were not "
                    "acked and will be redelivered)", worker.threads.busy)
        flush_logs()
        os._exit(code)
    worker.threads.shutdown(wait=True)
    log.debug("ran %.1f s", time.monotonic() - started)
    return code


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does with tasks still pending when its main coroutine returns."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
