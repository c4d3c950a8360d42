"""The dashboard's web app (Starlette, Jinja2, htmx): pages, the JSON API, the two actions.

    app = create_app(recorder, queue=queue)          # an ASGI app; `nova dashboard` serves it

Pages are rendered on the server and work without JavaScript; htmx (vendored, in
``static/``) swaps in filtered lists and the overview's refresh, and uPlot draws the
charts from numbers the page carries as JSON data.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nova._cli_tasks import parse_when
from nova._clickhouse import ClickHouseTaskRecorder
from nova._errors import NovaError
from nova._queue import TaskQueue
from nova._recording import TaskStatus
from nova.dashboard import _views as views
from nova.dashboard._actions import Actions, Outcome
from nova.dashboard._queries import FAILED_STATUSES, WINDOWS, DashboardQueries, ListFilter, TaskPage, parse_window
from nova.dashboard._security import BasicAuth, Csrf, SafetyMiddleware, safe_back, same_origin

__all__ = ["create_app"]

HERE = Path(__file__).parent
PAGE_SIZES = (20, 50, 100, 200)
MAX_FORM_BYTES = 256 * 1024
# the queue table's columns: these, and any other status some task has now
_MAIN_COLUMNS = (TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.RETRYING, TaskStatus.COMPLETED,
                 TaskStatus.FAILED)
_NOTICES = 200  # outcomes of recent actions kept for the page that follows them


class BadRequest(ValueError):
    """A query parameter the dashboard cannot use; the message says which and why."""


@dataclass(frozen=True, slots=True)
class _Settings:
    read_only: bool
    refresh_seconds: int
    source: str


class _Dashboard:
    def __init__(self, recorder: ClickHouseTaskRecorder, queue: TaskQueue | None, settings: _Settings) -> None:
        self.queries = DashboardQueries(recorder)
        self.actions = Actions(recorder, queue)
        self.settings = settings
        self.csrf = Csrf()
        self.notices: OrderedDict[str, list[Outcome]] = OrderedDict()
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters.update(utc=views.utc, duration=views.duration, short_error=views.short_error,
                           task_url=views.task_url, payload_view=views.payload_view, between=views.between)
        env.globals.update(statuses=list(TaskStatus), failed_statuses=FAILED_STATUSES, windows=list(WINDOWS),
                           settings=settings, payload_limit=views.PAYLOAD_LIMIT)
        self.templates = Jinja2Templates(env=env)

    # -- helpers ---------------------------------------------------------------------
    def render(self, request: Request, name: str, started: float, status_code: int = 200,
               **context: Any) -> Response:
        now = datetime.now(UTC)
        cookie = request.scope["state"]["csrf_cookie"]
        context.update(
            request=request, now=now, csrf_token=self.csrf.token(cookie),
            can_act=not self.settings.read_only, can_rerun=not self.settings.read_only and self.actions.can_rerun,
            ago=lambda value: views.ago(value, now),
            elapsed_ms=lambda: f"{(time.perf_counter() - started) * 1000:.0f}",
            notice=self.notices.get(request.query_params.get("notice", ""), []),
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        return response

    def _filter(self, request: Request) -> tuple[ListFilter, int, int]:
        p = request.query_params
        statuses: tuple[TaskStatus, ...] = ()
        status = p.get("status", "")
        if status == "failures":
            statuses = FAILED_STATUSES
        elif status:
            try:
                statuses = (TaskStatus(status),)
            except ValueError:
                raise BadRequest(f"status: {status!r} is not one of {', '.join(s.value for s in TaskStatus)}"
                                 ) from None
        now = datetime.now(UTC)
        return ListFilter(
            statuses=statuses,
            queue=p.get("queue") or None,
            type=p.get("type") or None,
            since=_when(p.get("since"), "since", now),
            until=_when(p.get("until"), "until", now),
            id_prefix=(p.get("q") or "").strip() or None,
        ), _int(p.get("limit"), "limit", 50, 1, max(PAGE_SIZES)), _int(p.get("offset"), "offset", 0, 0, 10**7)

    def _notice(self, outcomes: list[Outcome]) -> str:
        key = Csrf.new_cookie()[:16]
        self.notices[key] = outcomes
        while len(self.notices) > _NOTICES:
            self.notices.popitem(last=False)
        return key

    # -- pages -----------------------------------------------------------------------
    async def overview_page(self, request: Request) -> Response:
        started = time.perf_counter()
        window = parse_window(request.query_params.get("window"))
        overview = await self.queries.overview(window)
        columns = [s for s in TaskStatus if s in _MAIN_COLUMNS or overview.totals.get(s)]
        return self.render(request, "overview.html", started, overview=overview, columns=columns,
                           chart=views.overview_json(overview)["series"], page="overview")

    async def tasks_page(self, request: Request) -> Response:
        started = time.perf_counter()
        queues, types = await self.queries.names()
        try:
            where, limit, offset = self._filter(request)
        except BadRequest as exc:
            return self.render(request, "tasks.html", started, 400, error=str(exc), page_=None, where=None,
                               queues=queues, types=types, query=request.query_params, page="tasks")
        if where.id_prefix and not offset:
            exact = await self.queries.records([where.id_prefix])
            if exact:
                return RedirectResponse(views.task_url(exact[0].task_id), status_code=303)
        result = await self.queries.tasks(where, limit=limit, offset=offset)
        return self.render(request, "tasks.html", started, error=None, page_=result, where=where, queues=queues,
                           types=types, query=request.query_params, page="tasks",
                           newer=_link(request, max(offset - limit, 0)) if offset else None,
                           older=_link(request, result.next_offset) if result.next_offset is not None else None)

    async def task_page(self, request: Request) -> Response:
        started = time.perf_counter()
        task_id = request.path_params["task_id"]
        story = await self.queries.task(task_id)
        if story is None:
            return self.render(request, "missing.html", started, 404, task_id=task_id, page="tasks")
        return self.render(request, "task.html", started, story=story, page="tasks",
                           rerunnable=story.record.status in FAILED_STATUSES)

    async def _failures(self, request: Request) -> tuple[str, TaskPage, list[tuple[str, int, int, datetime]]]:
        tab = "retrying" if request.query_params.get("tab") == "retrying" else "dead"
        offset = _int(request.query_params.get("offset"), "offset", 0, 0, 10**7)
        statuses = (TaskStatus.RETRYING,) if tab == "retrying" else FAILED_STATUSES
        result = await self.queries.tasks(ListFilter(statuses=statuses), limit=50, offset=offset)
        return tab, result, await self.queries.top_errors(timedelta(hours=24))

    async def failures_page(self, request: Request) -> Response:
        started = time.perf_counter()
        tab, result, errors = await self._failures(request)
        offset = result.offset
        return self.render(request, "failures.html", started, page="failures", tab=tab, page_=result, errors=errors,
                           newer=_link(request, max(offset - 50, 0)) if offset else None,
                           older=_link(request, result.next_offset) if result.next_offset is not None else None)

    # -- actions ---------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        if request.path_params["action"] not in ("rerun", "delete"):
            return PlainTextResponse("No such action.\n", status_code=404)
        if self.settings.read_only:
            return PlainTextResponse("This dashboard is read-only: it takes no actions.\n", status_code=403)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("Too many tasks selected at once.\n", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=False)
        token = _first(form, "csrf")
        if not same_origin(request.scope) or not self.csrf.valid(request.scope["state"]["csrf_cookie"], token):
            return PlainTextResponse(
                "Refused: this form's security token does not match (or it came from another site). "
                "Reload the page and try again.\n", status_code=403)
        ids = form.get("ids", [])
        back = safe_back(_first(form, "back"))
        if not ids:
            outcomes = [Outcome("", False, "no task selected")]
        else:
            try:
                if request.path_params["action"] == "rerun":
                    outcomes = await self.actions.rerun(ids)
                else:
                    outcomes = await self.actions.delete(ids)
            except ValueError as exc:
                outcomes = [Outcome("", False, str(exc))]
        separator = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{separator}notice={self._notice(outcomes)}", status_code=303)

    # -- JSON API --------------------------------------------------------------------
    async def api_overview(self, request: Request) -> Response:
        window = request.query_params.get("window") or "1h"
        if window not in WINDOWS:
            return _json_error(400, f"window: {window!r} is not one of {', '.join(WINDOWS)}")
        return _json(views.overview_json(await self.queries.overview(window)))

    async def api_tasks(self, request: Request) -> Response:
        try:
            where, limit, offset = self._filter(request)
        except BadRequest as exc:
            return _json_error(400, str(exc))
        return _json(views.page_json(await self.queries.tasks(where, limit=limit, offset=offset)))

    async def api_task(self, request: Request) -> Response:
        story = await self.queries.task(request.path_params["task_id"])
        if story is None:
            return _json_error(404, "no such task recorded")
        return _json(views.story_json(story))

    async def api_failures(self, request: Request) -> Response:
        tab, result, errors = await self._failures(request)
        return _json({"tab": tab, **views.page_json(result), "top_errors": [
            {"error": e, "events": n, "tasks": tasks, "last_seen": views.iso(last)} for e, n, tasks, last in errors]})

    async def api_meta(self, request: Request) -> Response:
        queues, types = await self.queries.names()
        return _json({"queues": queues, "types": types, "statuses": [s.value for s in TaskStatus],
                      "windows": list(WINDOWS), "read_only": self.settings.read_only,
                      "can_rerun": not self.settings.read_only and self.actions.can_rerun,
                      "source": self.settings.source})


def _first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers={"cache-control": "no-store"})


def _json_error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _when(text: str | None, name: str, now: datetime) -> datetime | None:
    if not text:
        return None
    try:
        value = parse_when(text)
    except argparse.ArgumentTypeError as exc:
        raise BadRequest(f"{name}: {exc}") from None
    return now - value if isinstance(value, timedelta) else value


def _int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}")
    return value


def _link(request: Request, offset: int) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("offset", "notice")]
    params.append(("offset", str(offset)))
    return f"{request.url.path}?{urlencode(params)}"


def _errors(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Turn a recorder failure or a bad parameter into a plain answer instead of a 500 with a trace."""

    async def wrapped(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except BadRequest as exc:
            if request.url.path.startswith("/api/"):
                return _json_error(400, str(exc))
            return PlainTextResponse(f"{exc}\n", status_code=400)
        except NovaError as exc:
            if request.url.path.startswith("/api/"):
                return _json_error(503, f"the task records could not be read: {exc}")
            return PlainTextResponse(f"The task records could not be read: {exc}\n", status_code=503)
        return response

    return wrapped


def create_app(
    recorder: ClickHouseTaskRecorder,
    *,
    queue: TaskQueue | None = None,
    read_only: bool = False,
    auth: BasicAuth | None = None,
    loopback_only_hosts: bool = True,
    refresh_seconds: int = 10,
    source: str | None = None,
    on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
) -> Starlette:
    """The dashboard as an ASGI app over ``recorder``.

    ``queue`` (a TaskQueue on the broker your workers consume) enables "run again";
    ``read_only`` hides and refuses every action; ``auth`` requires HTTP Basic on every
    request; ``loopback_only_hosts`` answers only requests whose Host is a loopback name
    (the default, for a dashboard on 127.0.0.1); ``refresh_seconds`` is the overview's
    refresh interval (0: never).

    >>> app = create_app(ClickHouseTaskRecorder.from_url("chdb:///tmp/nova-demo"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8080)                               # doctest: +SKIP
    """
    settings = _Settings(read_only=read_only, refresh_seconds=max(0, int(refresh_seconds)),
                         source=source if source is not None else repr(recorder))
    dash = _Dashboard(recorder, queue, settings)
    routes = [
        Route("/", _errors(dash.overview_page)),
        Route("/tasks", _errors(dash.tasks_page)),
        Route("/tasks/{task_id:path}", _errors(dash.task_page)),
        Route("/failures", _errors(dash.failures_page)),
        Route("/actions/{action:str}", _errors(dash.action), methods=["POST"]),
        Route("/api/overview", _errors(dash.api_overview)),
        Route("/api/tasks", _errors(dash.api_tasks)),
        Route("/api/tasks/{task_id:path}", _errors(dash.api_task)),
        Route("/api/failures", _errors(dash.api_failures)),
        Route("/api/meta", _errors(dash.api_meta)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for close in on_shutdown:
            await close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SafetyMiddleware, auth=auth, loopback_only_hosts=loopback_only_hosts)
    return app
