"""The ClickHouse recorder's table and queries (SQL text only; ``nova._clickhouse`` runs them).

The table holds one row per lifecycle event (``ReplacingMergeTree(version)``, sorted by
``(task_id, version, status)``); a task's state is the fold of its events in SQL.
"""

from __future__ import annotations

from nova._recording import STATUS_RANK, TaskStatus

__all__ = [
    "_COLUMNS",
    "_COLUMN_NAMES",
    "_COLUMN_TYPES",
    "_CREATE",
    "_HISTORY",
    "_INSERT_SETTINGS",
    "_JSON_INPUT_TYPES",
    "_LATEST",
    "_NEWEST_FIRST",
    "_PAGE",
    "_RANKS",
    "_STATE",
    "_TERMINAL",
]

_TERMINAL = [s.value for s in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
                               TaskStatus.TIMEOUT, TaskStatus.SKIPPED)]
_RANKS = [s.value for s in sorted(STATUS_RANK, key=STATUS_RANK.__getitem__)]  # indexOf = rank + 1

# (name, type) of what record() inserts; retry_count and recorded_at fill themselves.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("task_id", "String"),
    ("version", "Int64"),
    ("at", "DateTime64(3, 'UTC')"),
    ("status", "LowCardinality(String)"),
    ("queue", "LowCardinality(String)"),
    ("type", "LowCardinality(String)"),
    ("priority", "Int32"),
    ("attempt", "Int32"),
    ("error", "Nullable(String)"),
    ("eta", "Nullable(DateTime64(3, 'UTC'))"),
    ("headers", "Map(String, String)"),
    ("payload", "Nullable(String)"),
)
_COLUMN_NAMES = [name for name, _ in _COLUMNS]
_COLUMN_TYPES = [kind for _, kind in _COLUMNS]
# What chDB reads a JSON batch as: ClickHouse parses a LowCardinality(String) from JSON
# one temporary column per value (~5x a String), so those come in as Strings and the
# insert converts whole columns (about a third less of chDB's CPU per event).
_JSON_INPUT_TYPES = {name: "String" if kind == "LowCardinality(String)" else kind for name, kind in _COLUMNS}

# A batch is tens of thousands of small rows: one thread parses and writes it (about
# half the CPU of the default parallel parsing, and an in-process chDB competes with
# tasks for CPU), and the replacing merge is left to FINAL and background merges
# (reads never see a duplicate either way).
_INSERT_SETTINGS = {"max_threads": 1, "input_format_parallel_parsing": 0, "optimize_on_insert": 0}

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    task_id String,
    version Int64,
    at DateTime64(3, 'UTC'),
    status LowCardinality(String),
    queue LowCardinality(String),
    type LowCardinality(String),
    priority Int32,
    attempt Int32,
    retry_count UInt32 MATERIALIZED toUInt32(greatest(attempt - 1, 0)),
    error Nullable(String),
    eta Nullable(DateTime64(3, 'UTC')),
    headers Map(String, String),
    payload Nullable(String),
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (task_id, version, status)
"""

# The fold of apply_event, in SQL: one row per task, events ordered by r_key
# = event_order() = (version, lifecycle rank). Aliases are r_* so they never
# shadow the columns the aggregates read. {where} is one of the fixed clauses
# in this module, never user text; every value is a bound parameter.
_LATEST = """
WITH (version, indexOf({{ranks:Array(String)}}, status)) AS r_key
SELECT
    task_id,
    argMax(type, r_key) AS r_type,
    argMax(queue, r_key) AS r_queue,
    argMax(priority, r_key) AS r_priority,
    argMax(status, r_key) AS r_status,
    toUInt32(greatest(max(attempt) - 1, 0)) AS r_retry_count,
    argMaxIf(error, r_key, isNotNull(error)) AS r_error,
    toUnixTimestamp64Milli(argMin(at, r_key)) AS r_created_ms,
    toUnixTimestamp64Milli(argMax(at, r_key)) AS r_updated_ms,
    toUnixTimestamp64Milli(argMinIf(toNullable(at), r_key, status = 'processing')) AS r_started_ms,
    toUnixTimestamp64Milli(argMaxIf(toNullable(at), r_key, has({{terminal:Array(String)}}, status)))
        AS r_completed_ms,
    toUnixTimestamp64Milli(argMaxIf(eta, r_key, isNotNull(eta))) AS r_eta_ms,
    argMaxIf(headers, r_key, notEmpty(headers)) AS r_headers,
    argMaxIf(payload, r_key, isNotNull(payload)) AS r_payload,
    max(version) AS r_version
FROM {table} FINAL
{where}
GROUP BY task_id
"""

# What list() filters and sorts on, per task (the same expressions as _LATEST).
_PAGE = """
WITH (version, indexOf({{ranks:Array(String)}}, status)) AS r_key
SELECT
    task_id,
    argMax(type, r_key) AS r_type,
    argMax(queue, r_key) AS r_queue,
    argMax(status, r_key) AS r_status,
    toUnixTimestamp64Milli(argMax(at, r_key)) AS r_updated_ms,
    max(version) AS r_version
FROM {table} FINAL
{where}
GROUP BY task_id
"""
_NEWEST_FIRST = "r_updated_ms DESC, r_version DESC, task_id DESC"

# Just the current queue and status of every task, for counts.
_STATE = """
WITH (version, indexOf({{ranks:Array(String)}}, status)) AS r_key
SELECT task_id, argMax(queue, r_key) AS r_queue, argMax(status, r_key) AS r_status
FROM {table} FINAL
GROUP BY task_id
"""

_HISTORY = """
SELECT task_id, type, queue, priority, status, toUnixTimestamp64Milli(at), version, attempt,
       error, toUnixTimestamp64Milli(eta), headers, payload
FROM {table} FINAL
WHERE task_id = {{task_id:String}}
ORDER BY version, indexOf({{ranks:Array(String)}}, status)
"""
