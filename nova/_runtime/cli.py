"""The ``nova worker`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nova._runtime.loading import AppLoadError, load_app
from nova._runtime.logs import FORMATS, LEVELS, setup_logging
from nova._runtime.options import ChildLink, ExitCode, WorkerOptions
from nova._runtime.process import die_with_supervisor, install_early_signal_handlers, run_process

__all__ = ["add_worker_parser", "run_child", "run_worker"]

DESCRIPTION = """\
Run the handlers of a nova.App until SIGTERM or SIGINT.

  nova worker shop.tasks:app                      every queue the app has handlers for
  nova worker shop.tasks:app --queues images --concurrency 16 --processes 2 \\
              --shutdown-timeout 30 --health-port 8081 --metrics-port 9464 --log-format json
  nova worker shop.tasks:app --reload             development: restart on code change
"""

EPILOG = """\
signals:
  first SIGTERM/SIGINT  stop fetching; running handlers finish (up to --shutdown-timeout,
                        then they are cancelled and their tasks stay unacked, so another
                        worker gets them); partial batches go to the batch handler; acks
                        are flushed; exit 0
  second signal         stop at once: handlers cancelled, nothing more acked (their tasks
                        are redelivered); exit 1

exit codes:
  0  stopped cleanly
  1  stopped at once (second signal) or failed
  2  usage error, or the app could not be loaded (the message says what to fix)
  3  the broker is unreachable or refused the credentials (within 15 s), or failed later

health (--health-port):
  GET /livez   200 while the event loop turns (with --processes: every worker's)
  GET /readyz  200 once every consumer is subscribed; 503 while connecting or stopping

metrics (--metrics-port, needs nova-taskqueue[metrics]):
  GET /metrics  the Prometheus text format of the app's nova.PrometheusMetrics (one is added
                if the app has none) and its registry's other metrics; with --processes the
                workers' samples summed (at most a second old)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = WorkerOptions(app="")
    parser.add_argument("app", metavar="APP",
                        help="the nova.App to run, as module:attribute (e.g. shop.tasks:app), imported from the "
                             "current directory first; 'module' alone finds the module's one App")
    parser.add_argument("--queues", nargs="+", metavar="QUEUE",
                        help="run only these queues' handlers (default: every queue the app has handlers for); "
                             "names separated by spaces or commas")
    parser.add_argument("--concurrency", type=_positive_int, default=defaults.concurrency, metavar="N",
                        help="task handlers running at once, per queue and process; sync handlers get as many "
                             "threads (default: %(default)s)")
    parser.add_argument("--prefetch", type=_positive_int, default=defaults.prefetch, metavar="N",
                        help="tasks fetched ahead per queue and priority level, at least --concurrency "
                             "(default: %(default)s)")
    parser.add_argument("--processes", type=_positive_int, default=defaults.processes, metavar="N",
                        help="worker processes, under a supervisor that restarts one that dies and forwards "
                             "signals; 1 runs the worker in this process (default: %(default)s)")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=defaults.shutdown_timeout, metavar="SECONDS",
                        help="on the first SIGTERM/SIGINT, how long running handlers may take to finish before "
                             "they are cancelled (their tasks then go back to the broker); keep it a few seconds "
                             "below Kubernetes' terminationGracePeriodSeconds (default: %(default)g)")
    parser.add_argument("--health-port", type=_port, default=None, metavar="PORT",
                        help="serve GET /livez and GET /readyz on this port (default: none)")
    parser.add_argument("--health-host", default=defaults.health_host, metavar="HOST",
                        help="address the health port listens on (default: %(default)s)")
    parser.add_argument("--log-level", choices=LEVELS, default=defaults.log_level,
                        help="log level; each line names its process and, in a handler, its task id, type, "
                             "queue and attempt (default: %(default)s)")
    parser.add_argument("--log-format", choices=FORMATS, default=defaults.log_format,
                        help="text lines, or one JSON object per line with the task's fields and the current "
                             "trace id as keys (default: %(default)s)")
    parser.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                        help="serve GET /metrics (Prometheus) on this port, e.g. 9464; needs "
                             "nova-taskqueue[metrics] (default: none)")
    parser.add_argument("--metrics-host", default=defaults.metrics_host, metavar="HOST",
                        help="address the metrics port listens on (default: %(default)s)")
    parser.add_argument("--metrics-dir", default=None, help=argparse.SUPPRESS)  # a supervisor's worker process
    parser.add_argument("--reload", action="store_true",
                        help="development: restart the workers when a .py file of the app's package changes")


def add_worker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker`` to the ``nova`` command's subcommands."""
    parser = sub.add_parser("worker", help="run a nova.App's handlers: nova worker shop.tasks:app",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_worker_arguments(parser)


def options_from_args(args: argparse.Namespace) -> WorkerOptions:
    queues = None
    if args.queues:
        queues = tuple(dict.fromkeys(q for item in args.queues for q in item.split(",") if q))
    return WorkerOptions(app=args.app, queues=queues or None, concurrency=args.concurrency, prefetch=args.prefetch,
                         processes=args.processes, shutdown_timeout=args.shutdown_timeout,
                         health_port=args.health_port, health_host=args.health_host, log_level=args.log_level,
                         log_format=args.log_format, reload=args.reload, metrics_port=args.metrics_port,
                         metrics_host=args.metrics_host, metrics_dir=args.metrics_dir)


def _load_error(exc: AppLoadError) -> int:
    if exc.detail:
        sys.stderr.write(exc.detail)
    sys.stderr.write(f"nova worker: error: {exc}\n")
    sys.stderr.flush()
    return ExitCode.USAGE


def _metrics_missing() -> int:
    """Exit 2 with a message naming the extra if --metrics-port cannot work here; 0 if it can."""
    try:
        import nova._prometheus  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(f"nova worker: error: --metrics-port: {exc}\n")
        sys.stderr.flush()
        return ExitCode.USAGE
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """``nova worker ...``: one worker here, or a supervisor of several (or of one, with --reload)."""
    install_early_signal_handlers()
    opts = options_from_args(args)
    setup_logging(opts.log_level, opts.log_format)
    if opts.metrics_port is not None:
        problem = _metrics_missing()
        if problem:
            return problem
    if opts.processes > 1 or opts.reload:
        from nova._runtime.supervisor import Supervisor

        if not opts.reload:  # a bad APP is exit 2 here, not a child restarted over and over
            try:
                load_app(opts.app)
            except AppLoadError as exc:
                return _load_error(exc)
        return Supervisor(opts).run()
    try:
        app = load_app(opts.app)
    except AppLoadError as exc:
        return _load_error(exc)
    return run_process(app, opts)


def run_child(argv: Sequence[str]) -> int:
    """A worker process of a supervisor (``python -m nova._runtime``)."""
    install_early_signal_handlers()
    parser = argparse.ArgumentParser(prog="nova worker (child)")
    add_worker_arguments(parser)
    opts = options_from_args(parser.parse_args(argv))
    setup_logging(opts.log_level, opts.log_format)
    link = ChildLink.from_environment()
    if link is not None and not die_with_supervisor(link):
        return ExitCode.OK  # the supervisor died before this process got going
    try:
        app = load_app(opts.app)
    except AppLoadError as exc:
        return _load_error(exc)
    return run_process(app, opts, link)
