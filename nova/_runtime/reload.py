"""``nova worker --reload``: notice changed source files by polling their modification times
(no dependency; a poll of a project's few hundred files costs milliseconds)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["FileWatcher", "source_roots"]

_SKIP = {"__pycache__", "node_modules", "site-packages", "dist-packages", "build", "dist"}
MAX_FILES = 20_000


def source_roots(module_name: str) -> list[Path]:
    """Where the app's code lives: its top-level package's directory, or the directory of a
    top-level module (found without importing it)."""
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return [Path(cwd)]
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else [Path(cwd)]


class FileWatcher:
    """``changed()`` lists the ``*.py`` files under ``roots`` added, removed or modified since
    the last call (the first call only takes stock)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._seen: dict[str, int] | None = None

    def _scan(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP
                           and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
                for name in files:
                    if name.endswith(".py"):
                        path = os.path.join(folder, name)
                        try:
                            found[path] = os.stat(path).st_mtime_ns
                        except OSError:
                            continue
                if len(found) > MAX_FILES:
                    return found
        return found

    def changed(self) -> list[str]:
        now = self._scan()
        before, self._seen = self._seen, now
        if before is None:
            return []
        return sorted(p for p in now.keys() | before.keys() if now.get(p) != before.get(p))
