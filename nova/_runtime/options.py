"""What ``nova worker`` was asked to do, its exit codes, and the link a child keeps to its supervisor."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

__all__ = ["CHILD_ENV", "ChildLink", "ExitCode", "WorkerOptions"]

#: Set by the supervisor in each child's environment: "index:processes:supervisor_pid:status_fd".
CHILD_ENV = "NOVA_WORKER_CHILD"


class ExitCode(enum.IntEnum):
    OK = 0        # stopped cleanly: every task it took finished and was acked, or went back unacked
    FORCED = 1    # stopped at once (a second signal), or failed: unfinished tasks are redelivered
    USAGE = 2     # bad arguments, or the app could not be loaded
    BROKER = 3    # the broker is unreachable, refused the credentials, or failed while consuming


@dataclass(frozen=True)
class WorkerOptions:
    app: str
    queues: tuple[str, ...] | None = None
    concurrency: int = 8
    prefetch: int = 32
    processes: int = 1
    shutdown_timeout: float = 25.0
    health_port: int | None = None
    health_host: str = "0.0.0.0"  # probes come from outside the pod
    log_level: str = "info"
    log_format: str = "text"
    reload: bool = False
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"  # scraped from outside the pod
    #: A worker process of a supervisor serving --metrics-port: where it writes its metrics.
    metrics_dir: str | None = None

    def child_argv(self) -> list[str]:
        """The arguments of one worker process (no supervisor options)."""
        argv = [self.app, "--concurrency", str(self.concurrency), "--prefetch", str(self.prefetch),
                "--shutdown-timeout", f"{self.shutdown_timeout:g}", "--log-level", self.log_level,
                "--log-format", self.log_format]
        if self.queues:
            argv += ["--queues", *self.queues]
        if self.metrics_dir is not None:
            argv += ["--metrics-dir", self.metrics_dir]
        return argv


@dataclass(frozen=True)
class ChildLink:
    """A worker process's side of its supervisor: where to report its state, whom to outlive never."""

    index: int
    processes: int
    supervisor_pid: int
    status_fd: int

    def encode(self) -> str:
        return f"{self.index}:{self.processes}:{self.supervisor_pid}:{self.status_fd}"

    @classmethod
    def from_environment(cls) -> ChildLink | None:
        """The link the supervisor left in the environment (removed, so the handlers' own
        subprocesses do not see it)."""
        value = os.environ.pop(CHILD_ENV, None)
        if not value:
            return None
        index, processes, pid, fd = (int(part) for part in value.split(":"))
        return cls(index, processes, pid, fd)
