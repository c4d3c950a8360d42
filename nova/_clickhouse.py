"""Task recording in ClickHouse: :class:`ClickHouseTaskRecorder`, on clickhouse-connect.

One code path for the embedded engine (chDB, in-process, the default for local
use) and for a ClickHouse server:

    recorder = ClickHouseTaskRecorder.from_url("chdb:///var/lib/nova/tasks")
    recorder = ClickHouseTaskRecorder.from_url("https://nova:secret@ch.example:8443/ops")
    queue = nova.TaskQueue(broker, recorder=recorder)
    ...
    record = await recorder.get(task_id)      # latest state, never a stale row
    failed = await recorder.list(status=nova.TaskStatus.FAILED, limit=20)

The table holds one row per lifecycle event (``ReplacingMergeTree(version)``,
sorted by ``(task_id, version, status)``, so a re-sent batch replaces itself
instead of doubling). A task's state is the fold of its events in
``event_order`` (version, then lifecycle rank), computed in SQL with
``argMax``-style aggregates over ``FINAL`` rows; it equals what
:func:`nova._recording.fold_events` gives, except that timestamps are stored to
the millisecond. Payloads are stored only with ``store_payload=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from nova._clickhouse_sql import (
    _COLUMN_NAMES,
    _COLUMN_TYPES,
    _CREATE,
    _HISTORY,
    _INSERT_SETTINGS,
    _JSON_INPUT_TYPES,
    _LATEST,
    _NEWEST_FIRST,
    _PAGE,
    _RANKS,
    _STATE,
    _TERMINAL,
)
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConfigurationTypeError,
    NovaError,
    ValidationError,
    ValidationTypeError,
)
from nova._errors import ConnectionError as NovaConnectionError
from nova._recording import (
    EVENT_FIELDS,
    EventColumns,
    TaskEvent,
    TaskRecord,
    TaskStatus,
    columns_from_events,
    write_pending,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from nova._clock import Clock

__all__ = ["ClickHouseTaskRecorder"]

T = TypeVar("T")
_Rows = list[Sequence[Any]]  # spelled once here: the class's list() method shadows the builtin

EXTRA_HINT = "pip install 'nova-taskqueue[clickhouse]'"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_AUTH_CODES = {192, 193, 194, 195, 516}  # unknown user, wrong password, ..., authentication failed

@dataclass(frozen=True, slots=True)
class _Target:
    """Where to connect: a chDB location or a server. ``password`` never leaves this object."""

    kind: str  # "chdb" | "http" | "https"
    path: str | None = None  # chdb directory; None = in memory
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str = field(default="", repr=False)
    database: str | None = None

    def describe(self) -> str:
        if self.kind == "chdb":
            return f"chdb://{self.path or 'memory'}"
        user = f"{self.username}:***@" if self.username else ""
        db = f"/{self.database}" if self.database else ""
        return f"{self.kind}://{user}{self.host}:{self.port}{db}"


def _parse_url(url: str) -> _Target:
    if not isinstance(url, str):
        raise ConfigurationTypeError(f"recorder URL must be a str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # the URL may hold a password: name the problem, not the URL
        raise ConfigurationError(f"invalid ClickHouse recorder URL: {exc}") from None
    if parts.scheme == "chdb":
        if parts.username or parts.password:
            raise ConfigurationError("chdb URL takes no user or password (chDB runs in this process)")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"chdb URL takes no query or fragment: {url!r}")
        if parts.netloc in ("memory", ":memory:") and parts.path in ("", "/"):
            return _Target("chdb")
        if parts.netloc == "" and parts.path.startswith("/") and parts.path != "/":
            path = unquote(parts.path)
            if "?" in path:  # chDB reads what follows "?" as engine options
                raise ConfigurationError(f"a chDB directory cannot contain '?': {path!r}")
            return _Target("chdb", path=path)
        raise ConfigurationError(
            f"chdb URL must be chdb:///absolute/path or chdb://memory, got {url!r}")
    if parts.scheme in ("http", "https"):
        safe = _Target(parts.scheme, host=parts.hostname or "").describe()
        if not parts.hostname:
            raise ConfigurationError(f"ClickHouse URL needs a host: {safe}")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"ClickHouse URL takes no query or fragment: {safe}")
        database = unquote(parts.path.strip("/")) or None
        if database is not None and not _IDENTIFIER.fullmatch(database):
            raise ConfigurationError(f"ClickHouse database name must match {_IDENTIFIER.pattern}")
        return _Target(
            parts.scheme,
            host=parts.hostname,
            port=port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else "",
            database=database,
        )
    raise ConfigurationError(
        "ClickHouse recorder URL must start with chdb://, http:// or https://"
        + ("" if "@" in url else f", got {url!r}"))


def _quote_table(table: str) -> tuple[str, str, str | None]:
    """Validate ``table`` or ``database.table``; return (quoted, table, database)."""
    if not isinstance(table, str):
        raise ConfigurationTypeError(f"table name must be a str, got {type(table).__name__}")
    names = table.split(".")
    if len(names) > 2 or not all(_IDENTIFIER.fullmatch(n) for n in names):
        raise ConfigurationError(
            f"invalid ClickHouse table name {table!r}: use letters, digits and _ "
            "(optionally database.table), starting with a letter or _")
    quoted = ".".join(f"`{n}`" for n in names)
    if len(names) == 2:
        return quoted, names[1], names[0]
    return quoted, names[0], None


def _import_clickhouse_connect() -> Any:
    try:
        import clickhouse_connect
    except ImportError as exc:
        raise ImportError(f"ClickHouseTaskRecorder needs clickhouse-connect: {EXTRA_HINT}") from exc
    return clickhouse_connect


def _ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _status(value: str) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        return TaskStatus.UNKNOWN


def _check_ranges(columns: EventColumns) -> None:
    """Refuse integers the table's columns cannot hold (before any SQL)."""
    for index, name, low, high in ((6, "version", _INT64_MIN, _INT64_MAX),
                                   (3, "priority", _INT32_MIN, _INT32_MAX),
                                   (7, "attempt", _INT32_MIN, _INT32_MAX)):
        values = columns[index]
        # priorities and attempts take a few values: their set is 3x faster than min() and max()
        distinct = values if index == 6 else set(values)
        if min(distinct) < low or max(distinct) > high:
            bad = next(v for v in values if not low <= v <= high)
            raise ValueError(f"{name}={bad} does not fit the table's column")


def _json_default(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()  # not UTF-8: UnicodeDecodeError, and the caller uses Native
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dump_json(document: Mapping[str, Sequence[Any]]) -> bytes:
    """``document`` as compact UTF-8 JSON: orjson when installed, else the standard library."""
    try:
        import orjson
    except ImportError:
        return json.dumps(document, default=_json_default, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()
    return orjson.dumps(document, default=_json_default)


def _chdb_insert_json(client: Client, table: str, names: Sequence[str], structure: str, body: bytes) -> None:
    """Insert a JSONColumns document into ``table`` of an in-process chDB, read with ``structure``.

    chDB reads the file where this process wrote it (as ``raw_insert`` does); unlike
    ``raw_insert`` the columns are read as ``structure`` says, then converted by the insert.
    """
    fd, path = tempfile.mkstemp(prefix="nova-records-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(body)
        client.command(
            f"INSERT INTO {table} ({', '.join(names)}) "
            "SELECT * FROM file({path:String}, 'JSONColumns', {structure:String})",
            parameters={"path": path, "structure": structure}, settings=_INSERT_SETTINGS)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class ClickHouseTaskRecorder:
    """A QueryableTaskRecorder on ClickHouse (a server, or chDB in-process).

    ``client`` is a clickhouse-connect ``Client``; it stays yours (``close()``
    does not close it). :meth:`from_url` builds and owns one. Calls run in a
    worker thread, one at a time, so the event loop never waits on ClickHouse
    (through ``clock.run_sync`` when a clock is given, e.g. the engine's).

    >>> client = clickhouse_connect.get_client(dsn="chdb://memory")  # doctest: +SKIP
    >>> recorder = ClickHouseTaskRecorder(client, store_payload=False)   # doctest: +SKIP
    >>> await recorder.record([event])                                  # doctest: +SKIP
    >>> (await recorder.get(event.task_id)).status                      # doctest: +SKIP
    """

    def __init__(
        self,
        client: Client,
        table: str = "nova_task_records",
        *,
        store_payload: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._setup(client, None, table, store_payload, clock)

    def _setup(self, client: Client | None, target: _Target | None, table: str, store_payload: bool,
               clock: Clock | None) -> None:
        self._quoted, self._table, self._database = _quote_table(table)
        self._table_name = table
        self._client: Client | None = client
        self._target = target
        self._owns_client = client is None  # from_url: we connect, so we close
        self._store_payload = bool(store_payload)
        # one call at a time: an HTTP session and a chDB handle both refuse concurrent queries
        self._lock = threading.Lock()
        self._schema_ready = False
        self._closed = False
        self._clock = clock

    @classmethod
    def from_url(
        cls,
        url: str,
        table: str = "nova_task_records",
        *,
        store_payload: bool = False,
        clock: Clock | None = None,
    ) -> ClickHouseTaskRecorder:
        """A recorder for ``chdb:///abs/path``, ``chdb://memory`` or ``http(s)://user:pass@host:port/db``.

        Nothing connects until the first call; the URL and table are checked now,
        and what chDB imports on its first connect is imported now too (~0.2 s of
        Python imports that would otherwise hold the GIL while tasks run).

        >>> recorder = ClickHouseTaskRecorder.from_url("chdb:///tmp/nova-tasks")
        """
        target = _parse_url(url)
        _import_clickhouse_connect()
        if target.kind == "chdb":
            try:
                import chdb  # noqa: F401
            except ImportError as exc:
                raise ImportError(f"chdb:// recording needs chdb: {EXTRA_HINT}") from exc
            with contextlib.suppress(ImportError):  # chdb.connect() imports it (and numpy)
                importlib.import_module("chdb.state")
        recorder = cls.__new__(cls)
        recorder._setup(None, target, table, store_payload, clock)
        return recorder

    @property
    def store_payload(self) -> bool:
        """Whether payloads are stored (a sink does not even buffer them otherwise)."""
        return self._store_payload

    def __repr__(self) -> str:
        where = self._target.describe() if self._target is not None else "client"
        return (f"ClickHouseTaskRecorder({where}, table={self._table_name!r}, "
                f"store_payload={self._store_payload})")

    # -- plumbing ------------------------------------------------------------
    def _connect(self) -> Client:
        target = self._target
        assert target is not None
        clickhouse_connect = _import_clickhouse_connect()
        client: Client
        if target.kind == "chdb":
            try:  # path None: in memory
                client = clickhouse_connect.get_client(interface="chdb", path=target.path)
            except ImportError as exc:
                raise ImportError(f"chdb:// recording needs chdb: {EXTRA_HINT}") from exc
        else:
            client = clickhouse_connect.get_client(
                host=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                database=target.database,
                interface=target.kind,
            )
        return client

    def _translate(self, exc: Exception, action: str) -> NovaError:
        message = str(exc)
        secret = self._target.password if self._target is not None else ""
        if secret:
            message = message.replace(secret, "***")
        where = self._target.describe() if self._target is not None else "ClickHouse"
        text = f"task recorder {action} failed on {where}: {message}"
        code = getattr(exc, "code", None)
        from clickhouse_connect.driver import exceptions as ch

        if code in _AUTH_CODES:
            return AuthenticationError(text)
        if (isinstance(exc, ch.ProgrammingError) and self._client is None
                and self._target is not None and self._target.kind == "chdb"):
            return ConfigurationError(
                f"{text} (chDB hosts one database directory per process; close the other one first)")
        if isinstance(exc, ch.OperationalError) and not isinstance(exc, ch.StreamFailureError):
            return NovaConnectionError(text)
        return BrokerError(text)

    def _blocking(self, action: str, fn: Callable[[Client], T]) -> T:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            if self._closed:
                raise ClosedError("this ClickHouseTaskRecorder was closed")
            try:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
                if not self._schema_ready:
                    client.command(_CREATE.format(table=self._quoted))
                    self._schema_ready = True
                return fn(client)
            except ClickHouseError as exc:
                raise self._translate(exc, action) from exc

    async def _run(self, action: str, fn: Callable[[Client], T]) -> T:
        return await self._in_thread(lambda: self._blocking(action, fn))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        # through the engine's clock when given, so a VirtualClock knows a call is in flight
        if self._clock is not None:
            return await self._clock.run_sync(fn)
        return await asyncio.to_thread(fn)

    # -- TaskRecorder ----------------------------------------------------------
    async def record(self, events: Sequence[TaskEvent]) -> None:
        """Insert a batch of events in one INSERT (RecordingSink does the batching)."""
        try:
            columns = columns_from_events(events)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValidationError(f"not a valid TaskEvent batch: {exc}") from exc
        await self.record_columns(columns)

    async def record_columns(self, columns: EventColumns) -> None:
        """Insert the sink's batch in one INSERT, as :meth:`record` would its TaskEvents.

        The batch goes as one JSONColumns document: a C-speed dump of the columns
        (orjson when installed), which ClickHouse parses with the GIL released (chDB
        reads its LowCardinality columns as Strings, see ``_JSON_INPUT_TYPES``). A
        batch JSON cannot carry exactly (a payload that is not UTF-8, a time before
        1970) goes through clickhouse-connect's typed Native encoder instead.
        """
        try:
            if len(columns) != len(EVENT_FIELDS) or len({len(c) for c in columns}) != 1:
                raise ValueError(f"expected {len(EVENT_FIELDS)} columns of one length")
            if not columns[0]:
                return
            _check_ranges(columns)
            insert = self._json_insert(columns) or self._native_insert(columns)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValidationError(f"not a valid TaskEvent batch: {exc}") from exc
        await self._run("insert", insert)

    def _json_insert(self, columns: EventColumns) -> Callable[[Client], None] | None:
        """An insert of the batch as JSONColumns, or None if JSON cannot carry it exactly."""
        (task_ids, types, queues, priorities, statuses, ats, versions, attempts, errors, etas, headers,
         payloads) = columns
        # Epoch seconds as JSON numbers: DateTime64(3) keeps the first three decimals
        # (a float's shortest repr is exact to the microsecond). Text input has no
        # times before 1970, and tiny numbers may print as 1e-05.
        eta_seconds = None if etas.count(None) == len(etas) else [
            None if e is None else _utc(e).timestamp() for e in etas]
        if min(ats) < 1 or min((e for e in eta_seconds or () if e is not None), default=1) < 1:
            return None
        document: dict[str, Sequence[Any]] = {
            "task_id": task_ids, "version": versions, "at": ats, "status": statuses, "queue": queues,
            "type": types, "priority": priorities, "attempt": attempts,
        }
        if errors.count(None) != len(errors):  # else the column's default, NULL
            document["error"] = errors
        if eta_seconds is not None:  # else the column's default, NULL
            document["eta"] = eta_seconds
        if any(headers):  # else the column's default, an empty map
            document["headers"] = [dict(h) for h in headers]
        if self._store_payload:
            document["payload"] = payloads
        try:
            body = _dump_json(document)
        except (TypeError, ValueError):  # a payload that is not UTF-8, ...: Native carries any bytes
            return None
        names = list(document)
        if self._target is not None and self._target.kind == "chdb":
            structure = ", ".join(f"{name} {_JSON_INPUT_TYPES[name]}" for name in names)
            return lambda client: _chdb_insert_json(client, self._quoted, names, structure, body)

        def insert(client: Client) -> None:
            client.raw_insert(self._quoted, names, body, fmt="JSONColumns", settings=_INSERT_SETTINGS)

        return insert

    def _native_insert(self, columns: EventColumns) -> Callable[[Client], None]:
        """The batch through clickhouse-connect's typed Native encoder: any bytes, any time."""
        (task_ids, types, queues, priorities, statuses, ats, versions, attempts, errors, etas, headers,
         payloads) = columns
        native: list[Sequence[Any]] = [
            task_ids, versions, [datetime.fromtimestamp(a, UTC) for a in ats], statuses,
            queues, types, priorities, attempts, errors, [None if e is None else _utc(e) for e in etas],
            [dict(h) for h in headers],
            payloads if self._store_payload else [None] * len(task_ids),
        ]

        def insert(client: Client) -> None:
            client.insert(self._table, native, column_names=_COLUMN_NAMES, database=self._database,
                          column_type_names=_COLUMN_TYPES, column_oriented=True, settings=_INSERT_SETTINGS)

        return insert

    async def get(self, task_id: str) -> TaskRecord | None:
        """The latest state of one task, or None."""
        await write_pending(self)
        sql = _LATEST.format(table=self._quoted, where="WHERE task_id = {task_id:String}")
        rows = await self._query("get", sql, {"task_id": task_id})
        return self._to_record(rows[0]) if rows else None

    async def close(self) -> None:
        """Stop; close the client if :meth:`from_url` made it. Idempotent."""

        def close() -> None:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                if self._owns_client and self._client is not None:
                    self._client.close()
                self._client = None

        await self._in_thread(close)

    # -- queries ---------------------------------------------------------------
    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every event of one task, oldest (lowest version) first."""
        await write_pending(self)
        rows = await self._query("history", _HISTORY.format(table=self._quoted), {"task_id": task_id},
                                 formats={"payload": "bytes"})
        return [
            TaskEvent(
                task_id=r[0], type=r[1], queue=r[2], priority=r[3], status=_status(r[4]),
                at=_ms_to_datetime(r[5]) or _EPOCH, version=r[6], attempt=r[7], error=r[8],
                eta=_ms_to_datetime(r[9]), headers=dict(r[10]), payload=_as_bytes(r[11]),
            )
            for r in rows
        ]

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Records matching every given filter, newest (by update) first.

        >>> failed = await recorder.list(status=TaskStatus.FAILED, queue="email", limit=20)  # doctest: +SKIP
        """
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationTypeError(f"{name} must be an int >= 0, got {value!r}")
        if limit < 0 or offset < 0:
            raise ValidationError("limit and offset must be >= 0")
        await write_pending(self)
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        # A task's latest status/queue/type/update is one of its events, so a
        # task matching the filters has an event matching them: prefilter on
        # that (cheap, uses the sort key), then filter the folded state.
        inner: list[str] = []
        outer: list[str] = []
        if status is not None:
            params["status"] = TaskStatus(status).value
            inner.append("status = {status:String}")
            outer.append("r_status = {status:String}")
        if queue is not None:
            params["queue"] = queue
            inner.append("queue = {queue:String}")
            outer.append("r_queue = {queue:String}")
        if type is not None:
            params["type"] = type
            inner.append("type = {type:String}")
            outer.append("r_type = {type:String}")
        if since is not None:
            params["since_ms"] = _datetime_ms(since)
            inner.append("toUnixTimestamp64Milli(at) >= {since_ms:Int64}")
            outer.append("r_updated_ms >= {since_ms:Int64}")
        if until is not None:
            params["until_ms"] = -_datetime_ms(until, negate=True)  # ceil: keep sub-ms updates before it
            outer.append("r_updated_ms < {until_ms:Int64}")
        prefilter = ""
        if inner:
            prefilter = f"WHERE task_id IN (SELECT task_id FROM {self._quoted} WHERE {' AND '.join(inner)})"
        # Two phases: pick the page's ids with the few aggregates the filters and
        # the order need, then fold only those tasks fully (4x faster on big tables).
        page = (
            f"{_PAGE.format(table=self._quoted, where=prefilter)}"
            + (f" HAVING {' AND '.join(outer)}" if outer else "")
            + f" ORDER BY {_NEWEST_FIRST} LIMIT {{limit:UInt64}} OFFSET {{offset:UInt64}}"
        )
        where = f"WHERE task_id IN (SELECT task_id FROM ({page}))"
        sql = f"SELECT * FROM ({_LATEST.format(table=self._quoted, where=where)}) ORDER BY {_NEWEST_FIRST}"
        rows = await self._query("list", sql, params)
        return [self._to_record(r) for r in rows]

    async def counts(self) -> dict[TaskStatus, int]:
        """Number of tasks per current status."""
        await write_pending(self)
        sql = f"SELECT r_status, count() FROM ({_STATE.format(table=self._quoted)}) GROUP BY r_status"
        rows = await self._query("counts", sql, {})
        out: dict[TaskStatus, int] = {}
        for status, n in rows:
            key = _status(status)
            out[key] = out.get(key, 0) + n
        return out

    async def counts_by_queue(self) -> dict[str, dict[TaskStatus, int]]:
        """Number of tasks per current queue, then per current status."""
        await write_pending(self)
        sql = (f"SELECT r_queue, r_status, count() FROM ({_STATE.format(table=self._quoted)})"
               " GROUP BY r_queue, r_status")
        rows = await self._query("counts", sql, {})
        out: dict[str, dict[TaskStatus, int]] = {}
        for queue, status, n in rows:
            per_queue = out.setdefault(queue, {})
            key = _status(status)
            per_queue[key] = per_queue.get(key, 0) + n
        return out

    async def delete(self, task_id: str) -> bool:
        """Forget one task (a lightweight DELETE, visible at once); True if it was recorded."""
        await write_pending(self)
        params = {"task_id": task_id}

        def delete(client: Client) -> bool:
            found = client.query(f"SELECT count() FROM {self._quoted} WHERE task_id = {{task_id:String}}",
                                 parameters=params).result_rows[0][0]
            if found:
                client.command(f"DELETE FROM {self._quoted} WHERE task_id = {{task_id:String}}",
                               parameters=params)
            return bool(found)

        return await self._run("delete", delete)

    async def select(self, sql: str, parameters: Mapping[str, Any] | None = None, *,
                     column_formats: Mapping[str, str] | None = None,
                     settings: Mapping[str, Any] | None = None) -> _Rows:
        """Rows of a read query over the record table, which ``{table}`` in ``sql`` names.

        For readers that need aggregates the methods above do not give (the dashboard's
        per-minute series and percentiles). Values go in as bound parameters
        (``{name:Type}``), never into the SQL text.

        >>> rows = await recorder.select("SELECT status, count() FROM {table} GROUP BY status")  # doctest: +SKIP
        """
        text = sql.replace("{table}", self._quoted)
        params = dict(parameters or {})
        formats: dict[str, str | dict[str, str]] = dict(column_formats or {})
        options = dict(settings or {})

        def select(client: Client) -> _Rows:
            return list(client.query(text, parameters=params, column_formats=formats,
                                     settings=options).result_rows)

        return await self._run("select", select)

    # -- helpers ---------------------------------------------------------------
    async def _query(self, action: str, sql: str, params: Mapping[str, Any],
                     formats: Mapping[str, str] | None = None) -> _Rows:
        params = {"terminal": _TERMINAL, "ranks": _RANKS, **params}
        column_formats: dict[str, str | dict[str, str]] = dict(formats or {"r_payload": "bytes"})

        def query(client: Client) -> _Rows:
            used = {k: v for k, v in params.items() if "{" + k + ":" in sql}
            return list(client.query(sql, parameters=used, column_formats=column_formats).result_rows)

        return await self._run(action, query)

    def _to_record(self, r: Sequence[Any]) -> TaskRecord:
        return TaskRecord(
            task_id=r[0],
            type=r[1],
            queue=r[2],
            priority=r[3],
            status=_status(r[4]),
            retry_count=r[5],
            error=r[6],
            created_at=_ms_to_datetime(r[7]) or _EPOCH,
            updated_at=_ms_to_datetime(r[8]) or _EPOCH,
            started_at=_ms_to_datetime(r[9]),
            completed_at=_ms_to_datetime(r[10]),
            eta=_ms_to_datetime(r[11]),
            headers=dict(r[12]),
            payload=_as_bytes(r[13]),
            version=r[14],
        )


def _datetime_ms(value: datetime, *, negate: bool = False) -> int:
    """Epoch milliseconds (floor) of a datetime, naive meaning UTC; of its negation with ``negate``."""
    delta = _utc(value) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (-micros if negate else micros) // 1000
