"""``nova worker``: run an App's handlers in production.

    cli.py         the command line (flags, help, exit codes) and what it starts
    loading.py     module:attr -> the nova.App, or an error that says what to fix (exit 2)
    process.py     one worker process: signals, broker deadline (exit 3), graceful/forced stop
    supervisor.py  --processes N / --reload: children, restarts, signal forwarding, health for all
    health.py      /livez and /readyz on a tiny asyncio HTTP server
    reload.py      changed source files, by polling modification times
    logs.py        one log format, each line naming its process and task
    options.py     the options, the exit codes, a child's link to its supervisor
    __main__.py    a worker process started by the supervisor
"""

from nova._runtime.cli import add_worker_parser, run_worker

__all__ = ["add_worker_parser", "run_worker"]
