"""Finding the App that ``nova worker module:attr`` names, with errors that say what to fix."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
import types

from nova._app import App

__all__ = ["AppLoadError", "load_app", "split_spec"]

_MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class AppLoadError(Exception):
    """The app could not be loaded (``nova worker`` exits 2). ``detail``: a traceback worth showing."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"shop.tasks:app"`` -> ``("shop.tasks", "app")``; ``"shop.tasks"`` -> ``("shop.tasks", None)``."""
    module, sep, attr = spec.partition(":")
    if module.endswith(".py") or "/" in module or "\\" in module:
        name = module.removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
        raise AppLoadError(f"APP is a module name with dots, not a file path: e.g. {name}:{attr or 'app'}")
    if not _MODULE_RE.fullmatch(module) or (sep and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr)):
        raise AppLoadError(f"APP must be module:attribute, e.g. shop.tasks:app; got {spec!r}")
    return module, attr or None


def _what(obj: object) -> str:
    if inspect.isclass(obj):
        return "a class"
    if isinstance(obj, types.ModuleType):
        return "a module"
    if inspect.isroutine(obj):
        return "a function"
    return f"a {type(obj).__name__}"


def load_app(spec: str) -> App:
    """Import the module (from the current directory first) and return its ``nova.App``."""
    module_name, attr = split_spec(spec)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"module {module_name!r} not found (looked in {cwd} and the installed packages): "
                               "check the name, or run nova worker from your project's directory") from exc
        raise AppLoadError(f"importing {module_name} failed: {exc}", traceback.format_exc()) from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module_name} failed: {type(exc).__name__}: {exc}",
                           traceback.format_exc()) from exc
    apps = [name for name, value in vars(module).items() if isinstance(value, App)]
    if attr is None:
        if "app" in apps or len(apps) != 1:
            if not apps:
                raise AppLoadError(f"{module_name} has no nova.App: name one, e.g. {module_name}:app")
            if "app" not in apps:
                raise AppLoadError(f"{module_name} has several nova.App ({', '.join(apps)}): name one, "
                                   f"e.g. {module_name}:{apps[0]}")
            attr = "app"
        else:
            attr = apps[0]
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            hint = f" (its nova.App: {', '.join(apps)})" if apps else ""
            raise AppLoadError(f"{module_name} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise AppLoadError(f"{attr!r} in {module_name} is {_what(obj)}, expected a nova.App")
    return obj
