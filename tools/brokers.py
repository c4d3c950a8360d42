"""Start and stop real brokers as local processes (no Docker needed).

    python tools/brokers.py up kafka|rabbitmq|rocketmq|all
    python tools/brokers.py down kafka|rabbitmq|rocketmq|all
    python tools/brokers.py restart kafka|rabbitmq|rocketmq
    python tools/brokers.py env [kafka|rabbitmq|rocketmq|all]   # prints `export NOVA_...=...` lines

Downloads are cached under ``~/.cache/nova/`` keyed by version; state (data,
logs, pids, certificates) lives under ``~/.cache/nova/run/<broker>/``.
Everything binds to 127.0.0.1. Each broker's logic lives in
``tools/harness/<broker>.py`` exposing ``up() -> None``, ``down() -> None``,
``restart() -> None`` and ``env() -> dict[str, str]``.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType

BROKERS = ("kafka", "rabbitmq", "rocketmq")
VERBS = ("up", "down", "restart", "env")


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(f"harness.{name}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(__doc__, file=sys.stderr)
        return 2
    verb, names = argv[0], argv[1:] or (["all"] if argv[0] == "env" else [])
    if not names:
        print(f"say which broker: {', '.join(BROKERS)} or all", file=sys.stderr)
        return 2
    targets = list(BROKERS) if names == ["all"] else names
    for name in targets:
        if name not in BROKERS:
            print(f"unknown broker {name!r}; choose from {', '.join(BROKERS)}", file=sys.stderr)
            return 2
    for name in targets:
        module = _module(name)
        if verb == "env":
            for key, value in module.env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif verb == "up":
            module.up()
        elif verb == "down":
            module.down()
        else:
            module.restart()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
