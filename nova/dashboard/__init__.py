"""A web dashboard over the task records (``nova dashboard``; the ``dashboard`` extra).

    from nova.dashboard import create_app
    app = create_app(nova.ClickHouseTaskRecorder.from_url("chdb:///var/lib/nova/records"))
    # serve it with any ASGI server, e.g. uvicorn.run(app, host="127.0.0.1", port=8080)

``import nova`` does not import this package; this package imports Starlette and
Jinja2 only when :func:`create_app` (or :class:`DashboardQueries`) is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nova.dashboard._app import create_app
    from nova.dashboard._queries import DashboardQueries

__all__ = ["DashboardQueries", "create_app"]

_LAZY = {"create_app": "nova.dashboard._app", "DashboardQueries": "nova.dashboard._queries"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nova.dashboard' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
