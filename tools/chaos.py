"""The chaos run: tasks of every kind flow while workers are killed and the broker restarts;
then every confirmed task must have run, none before its due time.

    python tools/chaos.py --broker kafka|rabbitmq|rocketmq [--minutes 2] [--tasks N] [--workers 3]
                          [--rate 100] [--kill-every 5] [--broker-faults restart|node|none]
                          [--nodes 3] [--drain-timeout 240] [--seed S] [--dir DIR]
    nox -s chaos -- --broker kafka --minutes 2
    nox -s soak -- --broker kafka --tasks 1000000

What runs (the app is ``tools/chaos_app.py``; the broker's endpoints come from the exported
``NOVA_<BROKER>_*`` variables, else from ``python tools/brokers.py env``):

- a producer process enqueues a steady mix at ``--rate`` tasks/s: immediate and delayed
  (1-30 s) tasks, all three priorities, single enqueues and batches of 2-20, to a queue of
  single-task handlers (async and sync) and a queue with a batch handler;
- ``--workers`` processes run ``nova worker chaos_app:app``;
- faults: every ``--kill-every`` seconds (on average) a random worker gets ``kill -9`` and is
  started again a second later; every 30-60 s the broker restarts (the harness's
  ``restart``), or on a cluster (``--nodes 3``) a random node stops and starts 10-20 s later;
- after ``--minutes`` (or once ``--tasks`` enqueues are confirmed) the producer stops, faults stop,
  and the run drains until every confirmed task ran (or ``--drain-timeout`` passes).

The ledger lives in the run's directory (``artifacts/chaos/...`` unless ``--dir``), one
append-only file per process, so no fault can corrupt another process's lines:

    enqueued.log    E <id> <kind> <priority> <due|-> <confirmed at>     a confirmed enqueue
                    U <id> <kind> <priority> <due|-> <failed at>        an enqueue that raised
    done-<w>.log    D <id> <start> <end> <attempt>                      a handler returned
                    M <id>                                              a payload that is not the id
    faults.log      S|K <worker> <t>                                    a worker started, killed
                    X|T <worker> <t> <exit code>                        died unasked, stopped at the end
                    FB|FE <fault> <t> <detail>                          a broker fault began, ended
                    P <phase> <t>                                       produce, drain, end

The summary: enqueued, completed, lost (must be 0), duplicates (and how many a kill or a
broker fault explains), early deliveries (must be 0), lateness of delayed tasks, kills,
broker restarts, tasks/s. The exit code is 1 on any loss, early delivery, foreign or
corrupted ledger line, 0 otherwise; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
BROKERS = ("kafka", "rabbitmq", "rocketmq")
ENDPOINT_VARS = {"kafka": "NOVA_KAFKA_BOOTSTRAP", "rabbitmq": "NOVA_RABBITMQ_URL",
                 "rocketmq": "NOVA_ROCKETMQ_ENDPOINTS"}
KINDS = {"a": "async", "s": "sync", "b": "bulk"}

#: A duplicate counts as explained by a broker fault when the fault overlaps the time from this
#: long before the first completion (an ack or commit still in flight) up to the second one.
ACK_MARGIN = 10.0
#: A producer still running this long after its --minutes is killed (its enqueues time out after
#: 120 s), and a harness fault still under way after HARNESS_BOUND is killed: CI must not hang.
PRODUCER_GRACE = 180.0
HARNESS_BOUND = 600.0


# ---------------------------------------------------------------------------------- the ledger

class LedgerFile:
    """An append-only file one process writes lines to.

    Each ``append`` is one ``write(2)`` on an ``O_APPEND`` descriptor: once it returns the line is
    in the kernel, so a ``kill -9`` of the process cannot lose or tear it. ``fsync`` (at most once
    a second, in a thread, and at exit) guards only against the machine itself going down; the
    reader ignores a last line without its newline.
    """

    def __init__(self, path: Path, *, fsync_every: float = 1.0) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = False
        self._closed = threading.Event()
        self._every = fsync_every
        threading.Thread(target=self._sync_loop, name="chaos-ledger-fsync", daemon=True).start()
        atexit.register(self.close)

    def append(self, text: str) -> None:
        data = text.encode()
        written = os.write(self._fd, data)
        if written != len(data):  # a regular file takes a small write whole; say so if not
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        self._dirty = True

    def _sync_loop(self) -> None:
        while not self._closed.wait(self._every):
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            self._dirty = False
            os.fsync(self._fd)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.sync()
            os.close(self._fd)



@dataclass(frozen=True, slots=True)
class Enqueued:
    kind: str
    priority: int
    due: float | None  # None: immediate
    at: float  # confirmed (or failed) at


@dataclass(frozen=True, slots=True)
class Completion:
    start: float
    end: float
    worker: str
    attempt: int


@dataclass
class Ledger:
    """Everything the run's files say, fed line by line (``feed``)."""

    enqueued: dict[str, Enqueued] = field(default_factory=dict)
    unconfirmed: dict[str, Enqueued] = field(default_factory=dict)
    completions: dict[str, list[Completion]] = field(default_factory=dict)
    mismatches: set[str] = field(default_factory=set)
    started: dict[str, float] = field(default_factory=dict)
    kills: dict[str, float] = field(default_factory=dict)
    exits: dict[str, tuple[float, int]] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)  # exit code of each worker stopped at the end
    faults: list[tuple[str, float, float | None]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    enqueued_twice: set[str] = field(default_factory=set)
    corrupt: list[str] = field(default_factory=list)
    torn: int = 0
    done_lines: int = 0

    def death(self, worker: str) -> float | None:
        """When ``worker`` was killed or died unasked (None: it lived to the end)."""
        died = self.kills.get(worker)
        if died is None and worker in self.exits:
            died = self.exits[worker][0]
        return died

    def deaths(self) -> list[float]:
        return sorted([*self.kills.values(), *(at for at, _ in self.exits.values())])

    def feed(self, source: str, worker: str, line: str) -> None:
        """One complete line of ``source`` (``enqueued``, ``done`` or ``faults``)."""
        try:
            self._feed(source, worker, line.split())
        except (ValueError, IndexError, KeyError):
            self.corrupt.append(f"{source}-{worker}: {line[:200]!r}")

    def _feed(self, source: str, worker: str, f: list[str]) -> None:
        tag = f[0]
        if source == "enqueued" and tag in ("E", "U") and len(f) == 6 and f[2] in KINDS:
            entry = Enqueued(f[2], int(f[3]), None if f[4] == "-" else float(f[4]), float(f[5]))
            if tag == "E":
                if f[1] in self.enqueued:
                    self.enqueued_twice.add(f[1])
                self.enqueued[f[1]] = entry
            else:
                self.unconfirmed[f[1]] = entry
        elif source == "done" and tag == "D" and len(f) == 5:
            self.completions.setdefault(f[1], []).append(Completion(float(f[2]), float(f[3]), worker, int(f[4])))
            self.done_lines += 1
        elif source == "done" and tag == "M" and len(f) == 2:
            self.mismatches.add(f[1])
        elif source == "faults" and tag in ("S", "K") and len(f) == 3:
            (self.started if tag == "S" else self.kills)[f[1]] = float(f[2])
        elif source == "faults" and tag == "X" and len(f) == 4:
            self.exits[f[1]] = (float(f[2]), int(f[3]))
        elif source == "faults" and tag == "T" and len(f) == 4:
            self.stops[f[1]] = int(f[3])
        elif source == "faults" and tag == "FB" and len(f) >= 3:
            self.faults.append((f[1], float(f[2]), None))
        elif source == "faults" and tag == "FE" and len(f) >= 3:
            for i in range(len(self.faults) - 1, -1, -1):
                name, begin, end = self.faults[i]
                if name == f[1] and end is None:
                    self.faults[i] = (name, begin, float(f[2]))
                    break
            else:
                raise ValueError("a fault ended that never began")
        elif source == "faults" and tag == "P" and len(f) == 3:
            self.phases[f[1]] = float(f[2])
        else:
            raise ValueError(tag)


class LedgerReader:
    """Reads a run directory's ledger files incrementally: only what was appended since the
    last ``poll``; a last line without its newline waits for the rest (``finish`` counts it torn)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    @staticmethod
    def _source(path: Path) -> tuple[str, str] | None:
        name = path.name
        if name == "enqueued.log":
            return "enqueued", "producer"
        if name == "faults.log":
            return "faults", "chaos"
        if name.startswith("done-") and name.endswith(".log"):
            return "done", name[len("done-"):-len(".log")]
        return None

    def poll(self, ledger: Ledger) -> None:
        for path in sorted(self.dir.glob("*.log")):
            source = self._source(path)
            if source is None:
                continue
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
            if not data:
                continue
            self._offsets[path] = self._offsets.get(path, 0) + len(data)
            lines = (self._partial.pop(path, b"") + data).split(b"\n")
            if lines[-1]:
                self._partial[path] = lines[-1]
            for raw in lines[:-1]:
                if raw:
                    ledger.feed(*source, raw.decode("utf-8", "replace"))

    def finish(self, ledger: Ledger) -> None:
        self.poll(ledger)
        ledger.torn += sum(1 for rest in self._partial.values() if rest)
        self._partial.clear()


def read_ledger(directory: Path) -> Ledger:
    ledger = Ledger()
    reader = LedgerReader(directory)
    reader.finish(ledger)
    return ledger


# --------------------------------------------------------------------------------- the summary

@dataclass
class Summary:
    enqueued: int = 0
    completed: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    duplicates: int = 0  # completions beyond the first
    duplicate_tasks: int = 0
    explained_by_kill: int = 0
    explained_by_forwarder_kill: int = 0
    explained_by_broker: int = 0
    unexplained: int = 0
    unexplained_examples: list[str] = field(default_factory=list)
    early: int = 0
    early_max_ms: float = 0.0
    early_examples: list[str] = field(default_factory=list)
    delayed: int = 0
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    lateness_max_ms: float | None = None
    kills: int = 0
    unasked_exits: int = 0
    unclean_stops: int = 0  # workers that did not exit 0 on the final SIGTERM
    broker_faults: dict[str, int] = field(default_factory=dict)
    refused_enqueues: int = 0  # tasks whose enqueue raised
    refused_but_ran: int = 0
    unknown: int = 0  # completions of ids never enqueued
    unknown_examples: list[str] = field(default_factory=list)
    mismatches: int = 0
    corrupt: int = 0
    corrupt_examples: list[str] = field(default_factory=list)
    torn: int = 0
    enqueued_twice: int = 0
    tasks_per_s: float = 0.0
    tasks_per_s_producing: float = 0.0
    produce_s: float | None = None
    drain_s: float | None = None

    @property
    def ok(self) -> bool:
        return (self.enqueued > 0 and self.lost == 0 and self.early == 0 and self.unknown == 0
                and self.mismatches == 0 and self.corrupt == 0 and self.enqueued_twice == 0)

    def failures(self) -> list[str]:
        out = []
        if self.enqueued == 0:
            out.append("nothing was enqueued")
        for count, what in ((self.lost, "lost"), (self.early, "early"), (self.unknown, "unknown ids completed"),
                            (self.mismatches, "payloads not their task's"), (self.corrupt, "corrupt ledger lines"),
                            (self.enqueued_twice, "ids enqueued twice")):
            if count:
                out.append(f"{count} {what}")
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of ``values`` at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def explain(entry: Enqueued, first: Completion, again: Completion, ledger: Ledger) -> str:
    """Why a task ran again:

    ``kill``       the worker that ran it first died (our kill -9, or unasked) after the handler
                   returned and before the task ran again: its ack was not flushed;
    ``forwarder``  a delayed task, and a worker died while the task was in the delay tiers: a
                   forwarder killed between re-publishing a hop and acking it sends the hop twice;
    ``broker``     a broker restart or node stop overlapped the time from ``ACK_MARGIN`` before
                   the first run's end to the second run's start;
    ``unexplained`` otherwise.
    """
    died = ledger.death(first.worker)
    if died is not None and first.end <= died <= again.start:
        return "kill"
    if entry.due is not None:
        held_until = min(first.start, again.start)
        if any(entry.at <= t <= held_until for t in ledger.deaths()):
            return "forwarder"
    for _, begin, end in ledger.faults:
        if begin <= again.start and (end is None or end >= first.end - ACK_MARGIN):
            return "broker"
    return "unexplained"


def summarize(ledger: Ledger, *, examples: int = 5) -> Summary:
    s = Summary(enqueued=len(ledger.enqueued), kills=len(ledger.kills), unasked_exits=len(ledger.exits),
                unclean_stops=sum(1 for code in ledger.stops.values() if code != 0),
                mismatches=len(ledger.mismatches), corrupt=len(ledger.corrupt),
                corrupt_examples=ledger.corrupt[:examples], torn=ledger.torn,
                enqueued_twice=len(ledger.enqueued_twice), refused_enqueues=len(ledger.unconfirmed))
    for name, _, _ in ledger.faults:
        s.broker_faults[name] = s.broker_faults.get(name, 0) + 1
    lateness: list[float] = []
    first_at: float | None = None
    last_end: float | None = None
    for task_id, entry in ledger.enqueued.items():
        first_at = entry.at if first_at is None else min(first_at, entry.at)
        runs = ledger.completions.get(task_id)
        if not runs:
            s.lost += 1
            if len(s.lost_examples) < examples:
                due = "now" if entry.due is None else _iso(entry.due)
                s.lost_examples.append(f"{task_id} ({KINDS[entry.kind]}, priority {entry.priority}, due {due}, "
                                       f"confirmed {_iso(entry.at)})")
            continue
        s.completed += 1
        runs = sorted(runs, key=lambda c: (c.start, c.end))
        last_end = max(last_end or 0.0, runs[0].end)
        if entry.due is not None:
            s.delayed += 1
            lateness.append(runs[0].start - entry.due)
            for run in runs:
                if run.start < entry.due:
                    s.early += 1
                    early_ms = (entry.due - run.start) * 1000
                    s.early_max_ms = max(s.early_max_ms, early_ms)
                    if len(s.early_examples) < examples:
                        s.early_examples.append(f"{task_id} ran {early_ms:.1f} ms before its due time "
                                                f"{_iso(entry.due)} (worker {run.worker}, attempt {run.attempt})")
        if len(runs) > 1:
            s.duplicate_tasks += 1
            for before, again in itertools.pairwise(runs):
                s.duplicates += 1
                why = explain(entry, before, again, ledger)
                if why == "kill":
                    s.explained_by_kill += 1
                elif why == "forwarder":
                    s.explained_by_forwarder_kill += 1
                elif why == "broker":
                    s.explained_by_broker += 1
                else:
                    s.unexplained += 1
                    if len(s.unexplained_examples) < examples:
                        s.unexplained_examples.append(
                            f"{task_id}: ran {_iso(before.start)}-{_iso(before.end)} on {before.worker}, again "
                            f"{_iso(again.start)} on {again.worker} (attempt {again.attempt})")
    for task_id in ledger.completions:
        if task_id in ledger.enqueued:
            continue
        if task_id in ledger.unconfirmed:
            s.refused_but_ran += 1
        else:
            s.unknown += 1
            if len(s.unknown_examples) < examples:
                s.unknown_examples.append(task_id)
    if lateness:
        s.lateness_p50_ms = percentile(lateness, 0.50) * 1000
        s.lateness_p99_ms = percentile(lateness, 0.99) * 1000
        s.lateness_max_ms = max(lateness) * 1000
    if first_at is not None and last_end is not None and last_end > first_at:
        s.tasks_per_s = s.completed / (last_end - first_at)
    phases = ledger.phases
    if "produce" in phases and "drain" in phases:
        s.produce_s = phases["drain"] - phases["produce"]
        began, ended = phases["produce"], phases["drain"]
        ran = sum(1 for runs in ledger.completions.values() if began <= min(c.end for c in runs) <= ended)
        s.tasks_per_s_producing = ran / s.produce_s if s.produce_s > 0 else 0.0
    if "drain" in phases and "end" in phases:
        s.drain_s = phases["end"] - phases["drain"]
    return s


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if abs(value) >= 1000 else f"{value:.0f} ms"


def format_summary(s: Summary, title: str, problems: Sequence[str] = ()) -> str:
    """The one summary a run prints; ``problems``: the run's own failures (a producer or harness killed)."""
    names = {"restart": ("broker restart", "broker restarts"), "node-stop": ("node stop", "node stops")}
    faults = ", ".join(f"{n} {names.get(name, (name, name))[n != 1]}"
                       for name, n in sorted(s.broker_faults.items())) or "none"
    refused = ""
    if s.refused_enqueues:
        refused = f" (and {s.refused_enqueues} whose enqueue raised; {s.refused_but_ran} of those ran anyway)"
    phases = ""
    if s.produce_s is not None:
        phases = f": {s.produce_s:.0f} s of tasks and faults"
        if s.drain_s is not None:
            phases += f", then {s.drain_s:.1f} s of drain"
    lines = [
        f"chaos summary ({title}){phases}",
        f"  enqueued      {s.enqueued}{refused}",
        f"  completed     {s.completed}",
        f"  lost          {s.lost}",
        f"  duplicates    {s.duplicates} runs beyond the first, of {s.duplicate_tasks} tasks; explained: "
        f"{s.explained_by_kill} by a kill of the worker that ran it, {s.explained_by_forwarder_kill} by a kill "
        f"while it was delayed, {s.explained_by_broker} by a broker fault; {s.unexplained} unexplained",
        f"  early         {s.early}" + (f" (up to {s.early_max_ms:.1f} ms)" if s.early else ""),
        f"  lateness      p50 {_ms(s.lateness_p50_ms)}, p99 {_ms(s.lateness_p99_ms)}, "
        f"max {_ms(s.lateness_max_ms)} ({s.delayed} delayed tasks, first run's start - due time)",
        f"  kills         {s.kills} (kill -9){f'; {s.unasked_exits} worker exits unasked' if s.unasked_exits else ''}",
        f"  restarts      {faults}",
        f"  tasks/s       {s.tasks_per_s_producing:.1f} while producing (tasks first run then / that time); "
        f"{s.tasks_per_s:.1f} overall (first confirmed enqueue to last first run)",
    ]
    for label, count, items in (("lost", s.lost, s.lost_examples), ("early", s.early, s.early_examples),
                                ("unexplained duplicates", s.unexplained, s.unexplained_examples),
                                ("unknown ids completed", s.unknown, s.unknown_examples),
                                ("corrupt ledger lines", s.corrupt, s.corrupt_examples)):
        if count:
            lines.append(f"  {label}, e.g.: " + "; ".join(items))
    for count, what in ((s.mismatches, "payloads that were not their task's id"),
                        (s.enqueued_twice, "ids the producer confirmed twice"),
                        (s.torn, "torn last lines (a process died mid-write; ignored)"),
                        (s.unclean_stops, "workers that did not exit 0 on the final SIGTERM")):
        if count:
            lines.append(f"  {count} {what}")
    failures = s.failures() + list(problems)
    lines.append("result: OK" if not failures else "result: FAILED: " + ", ".join(failures))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the producer

@dataclass(frozen=True)
class Plan:
    queue_kind: str  # "work" or "bulk"
    kinds: tuple[str, ...]  # one of KINDS per task
    priority: int
    delay: float | None
    single: bool


def plan_enqueue(rng: random.Random) -> Plan:
    """The next enqueue of the mix: 70 % to the single-task queue (async and sync types),
    30 % to the batch queue; 40 % delayed 1-30 s; any priority; 60 % single, else 2-20 tasks."""
    bulk = rng.random() < 0.3
    single = rng.random() < 0.6
    count = 1 if single else rng.randint(2, 20)
    kinds = tuple("b" if bulk else rng.choice("as") for _ in range(count))
    delay = rng.uniform(1.0, 30.0) if rng.random() < 0.4 else None
    return Plan("bulk" if bulk else "work", kinds, rng.choice((1, 2, 3)), delay, single)


async def _produce(opts: argparse.Namespace) -> int:
    import chaos_app

    import nova

    app = chaos_app.app
    run_dir = Path(opts.dir)
    ledger = LedgerFile(run_dir / "enqueued.log")
    rng = random.Random(opts.seed)
    tag = uuid.uuid4().hex[:8]
    seq = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    for attempt in range(60):  # the broker may be restarting
        try:
            await app.connect()
            break
        except Exception as exc:  # the broker may be restarting: try again, then give up
            print(f"producer: cannot connect yet ({exc!r})", file=sys.stderr)
            if attempt == 59:
                raise
            await asyncio.sleep(2)
    slots = asyncio.Semaphore(opts.in_flight)
    pending: set[asyncio.Task[None]] = set()
    counts = {"confirmed": 0, "refused": 0, "in flight": 0}  # in flight: enqueues not answered yet
    last_warning = [0.0]

    async def send(plan: Plan, ids: list[str]) -> None:
        tasks = [nova.Task(KINDS[k], i.encode(), id=i) for k, i in zip(plan.kinds, ids, strict=True)]
        priority = nova.Priority(plan.priority)
        due = None if plan.delay is None else datetime.now(UTC).timestamp() + plan.delay
        process_at = None if due is None else datetime.fromtimestamp(due, UTC)
        try:
            if plan.single:
                await asyncio.wait_for(app.enqueue(tasks[0], priority=priority, process_at=process_at),
                                       opts.enqueue_timeout)
            else:
                await asyncio.wait_for(app.enqueue_batch(tasks, priority=priority, process_at=process_at),
                                       opts.enqueue_timeout)
        except Exception as exc:  # noqa: BLE001 - a refused enqueue is part of the run: note it
            tag_ = "U"
            counts["refused"] += len(tasks)
            if time.monotonic() - last_warning[0] > 5:
                last_warning[0] = time.monotonic()
                print(f"producer: enqueue of {len(tasks)} task(s) raised {exc!r}", file=sys.stderr)
        else:
            tag_ = "E"
            counts["confirmed"] += len(tasks)
        finally:
            counts["in flight"] -= len(tasks)
        at = time.time()
        when = "-" if process_at is None else repr(process_at.timestamp())
        ledger.append("".join(f"{tag_} {i} {k} {plan.priority} {when} {at!r}\n"
                              for k, i in zip(plan.kinds, ids, strict=True)))

    started = time.monotonic()
    deadline = started + opts.seconds if opts.seconds else float("inf")
    next_at = started
    # --tasks counts confirmed enqueues: one that raised while the broker restarted is
    # replaced, so a soak of a million tasks runs a million through the workers.
    while not stop.is_set() and counts["confirmed"] < opts.tasks and time.monotonic() < deadline:
        room = opts.tasks - counts["confirmed"] - counts["in flight"]
        if room <= 0:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            continue
        plan = plan_enqueue(rng)
        if len(plan.kinds) > room:
            plan = Plan(plan.queue_kind, plan.kinds[:room], plan.priority, plan.delay, room == 1)
        now = time.monotonic()
        if next_at > now:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - now)
            if stop.is_set():
                break
        # A steady rate: after a stall (the broker restarting) no burst to catch up.
        next_at = max(next_at + len(plan.kinds) / opts.rate, time.monotonic() - 1.0)
        await slots.acquire()
        ids = []
        for _ in plan.kinds:
            ids.append(f"{tag}{seq:08x}")
            seq += 1
        job = asyncio.create_task(send(plan, ids))
        pending.add(job)
        counts["in flight"] += len(ids)
        job.add_done_callback(pending.discard)
        job.add_done_callback(lambda _: slots.release())
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    ledger.close()
    with contextlib.suppress(Exception):
        await app.stop()
    print(f"producer: {counts['confirmed']} confirmed, {counts['refused']} refused in "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def produce_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="chaos.py produce")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--tasks", type=int, default=sys.maxsize)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--enqueue-timeout", type=float, default=120.0)
    return asyncio.run(_produce(parser.parse_args(argv)))


# ------------------------------------------------------------------------------ the orchestrator

class FaultLog:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def write(self, *fields: object) -> None:
        self._file.write(" ".join(repr(f) if isinstance(f, float) else str(f) for f in fields) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


@dataclass
class WorkerProc:
    slot: int
    name: str
    proc: subprocess.Popen[bytes]
    started: float
    log: Path


class Chaos:
    def __init__(self, opts: argparse.Namespace, env: dict[str, str], run_dir: Path) -> None:
        self.opts = opts
        self.env = env
        self.dir = run_dir
        self.rng = random.Random(opts.seed)
        self.faults = FaultLog(run_dir / "faults.log")
        self.workers: dict[int, WorkerProc] = {}
        self.respawn_at: dict[int, float] = {}
        self.incarnations = 0
        self.producer: subprocess.Popen[bytes] | None = None
        self.harness: subprocess.Popen[bytes] | None = None  # a restart, stop-node or start-node under way
        self.harness_what: tuple[str, str] = ("", "")
        self.stopped_node: int | None = None
        self.ledger = Ledger()
        self.reader = LedgerReader(run_dir)
        self.harness_failures = 0
        self.problems: list[str] = []  # what makes the run fail besides the ledger's verdict

    # -- workers --------------------------------------------------------------------
    def spawn(self, slot: int) -> WorkerProc:
        self.incarnations += 1
        name = f"w{slot}.{self.incarnations}"
        log = self.dir / f"worker-{name}.out"
        env = {**self.env, "CHAOS_WORKER": name}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nova.cli", "worker", "chaos_app:app", "--concurrency",
                 str(self.opts.concurrency), "--shutdown-timeout", "10", "--log-level", "info"],
                cwd=TOOLS, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        worker = WorkerProc(slot, name, proc, time.time(), log)
        self.workers[slot] = worker
        self.faults.write("S", name, worker.started)
        return worker

    def start_first(self, slot: int, within: float = 180.0) -> None:
        """Start a worker before the run and wait until it consumes (again if it could not reach
        the broker: someone may be restarting it)."""
        deadline = time.monotonic() + within
        while True:
            worker = self.spawn(slot)
            if self.wait_ready(worker, deadline - time.monotonic()):
                return
            code = worker.proc.poll()
            output = worker.log.read_text(errors="replace")[-3000:]
            if code is None:
                raise SystemExit(f"chaos: worker {worker.name} did not get ready within {within:g} s:\n{output}")
            self.faults.write("X", worker.name, time.time(), code)
            del self.workers[slot]
            if code != 3 or time.monotonic() > deadline:
                raise SystemExit(f"chaos: worker {worker.name} exited with {code} before it was ready:\n{output}")
            print(f"chaos: worker {worker.name} cannot reach the broker yet; trying again", file=sys.stderr)
            time.sleep(5)

    def wait_ready(self, worker: WorkerProc, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if b"ready: consuming" in worker.log.read_bytes():
                return True
            if worker.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def kill_one(self) -> None:
        alive = [w for w in self.workers.values() if w.proc.poll() is None]
        if not alive:
            return
        victim = self.rng.choice(alive)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self.faults.write("K", victim.name, time.time())
        del self.workers[victim.slot]
        self.respawn_at[victim.slot] = time.monotonic() + 1.0

    def reap(self) -> None:
        """Note workers that died unasked and schedule their restart."""
        for slot, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is not None:
                self.faults.write("X", worker.name, time.time(), code)
                print(f"chaos: worker {worker.name} exited with {code} unasked (see {worker.log.name})",
                      file=sys.stderr)
                del self.workers[slot]
                self.respawn_at[slot] = time.monotonic() + 2.0

    def respawn_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.respawn_at.items()):
            if at <= now:
                del self.respawn_at[slot]
                self.spawn(slot)

    # -- broker faults ----------------------------------------------------------------
    def _harness(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.dir / "harness.out").open("ab")
        return subprocess.Popen([sys.executable, str(TOOLS / "brokers.py"), *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def begin_fault(self) -> None:
        broker = self.opts.broker
        if self.opts.broker_faults == "restart":
            nodes = ["--nodes", str(self.opts.nodes)] if self.opts.nodes > 1 else []
            self.harness = self._harness("restart", broker, *nodes)
            self.harness_what = ("restart", "restart")
            self.faults.write("FB", "restart", time.time(), broker)
        else:
            node = self.rng.randint(1, self.opts.nodes)
            self.harness = self._harness("stop-node", broker, str(node))
            self.harness_what = ("node-stop", str(node))
            self.stopped_node = node
            self.faults.write("FB", "node-stop", time.time(), node)

    def harness_step(self) -> float | None:
        """Advance a fault under way; the seconds until the next fault once it is over."""
        if self.harness is None or self.harness.poll() is None:
            return None
        code = self.harness.returncode
        kind, detail = self.harness_what
        self.harness = None
        if code != 0:
            self.harness_failures += 1
            print(f"chaos: the harness's {kind} {detail} exited with {code} (see harness.out)", file=sys.stderr)
        if kind == "restart":
            self.faults.write("FE", "restart", time.time(), code)
            return self.rng.uniform(30, 60)
        if kind == "node-stop":
            self.harness_what = ("node-down", detail)
            return None  # started again by start_node_due
        self.faults.write("FE", "node-stop", time.time(), code)  # node-start done
        self.stopped_node = None
        return self.rng.uniform(30, 60)

    def start_node(self) -> None:
        assert self.stopped_node is not None
        self.harness = self._harness("start-node", self.opts.broker, str(self.stopped_node))
        self.harness_what = ("node-start", str(self.stopped_node))

    def settle_broker(self) -> None:
        """Wait out a fault under way and bring a stopped node back (before the drain, and on exit)."""
        while True:
            if self.harness is not None:
                try:
                    self.harness.wait(HARNESS_BOUND)
                except subprocess.TimeoutExpired:
                    self.harness.kill()
                    self.harness.wait()
                    self.problems.append(f"the harness's {' '.join(self.harness_what)} took over "
                                         f"{HARNESS_BOUND:g} s: killed")
                self.harness_step()
                continue
            if self.harness_what[0] == "node-down":
                self.start_node()
                continue
            return

    # -- the run ------------------------------------------------------------------------
    def progress(self, phase: str, began: float) -> None:
        self.reader.poll(self.ledger)
        ran = sum(1 for i in self.ledger.enqueued if i in self.ledger.completions)
        print(f"chaos: {phase} {time.monotonic() - began:5.0f} s: enqueued {len(self.ledger.enqueued)}, "
              f"ran {ran}, kills {len(self.ledger.kills)}, broker faults {len(self.ledger.faults)}, "
              f"workers up {sum(1 for w in self.workers.values() if w.proc.poll() is None)}", file=sys.stderr)

    def run(self) -> Summary:
        opts = self.opts
        print(f"chaos: run directory {self.dir}", file=sys.stderr)
        for slot in range(opts.workers):  # one by one: a group joined by all at once rebalances for longer
            self.start_first(slot)
        self.faults.write("P", "produce", time.time())
        produce = [sys.executable, str(TOOLS / "chaos.py"), "produce", "--dir", str(self.dir), "--rate",
                   str(opts.rate), "--seed", str(opts.seed)]
        if opts.tasks:
            produce += ["--tasks", str(opts.tasks)]
        if opts.minutes:
            produce += ["--seconds", str(opts.minutes * 60)]
        producer_log = (self.dir / "producer.out").open("wb")
        self.producer = subprocess.Popen(produce, cwd=TOOLS, env=self.env, stdout=producer_log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        began = time.monotonic()
        next_kill = began + self._kill_gap() if opts.kill_every > 0 else float("inf")
        next_fault = began + self.rng.uniform(30, 60) if opts.broker_faults != "none" else float("inf")
        node_back_at = 0.0
        next_report = began + opts.report_every
        produce_until = began + opts.minutes * 60 + PRODUCER_GRACE if opts.minutes else float("inf")
        while self.producer.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            if now >= produce_until:
                self.producer.kill()
                self.producer.wait()
                self.problems.append(f"the producer ran {PRODUCER_GRACE:g} s past --minutes: killed")
                break
            self.reap()
            self.respawn_due()
            if now >= next_kill:
                self.kill_one()
                next_kill = now + self._kill_gap()
            gap = self.harness_step()
            if gap is not None:
                next_fault = time.monotonic() + gap
            if self.harness_what[0] == "node-down" and self.harness is None:
                if not node_back_at:
                    node_back_at = now + self.rng.uniform(10, 20)
                elif now >= node_back_at:
                    node_back_at = 0.0
                    self.start_node()
            if self.harness is None and self.harness_what[0] != "node-down" and now >= next_fault:
                next_fault = float("inf")
                self.begin_fault()
            if now >= next_report:
                next_report = now + opts.report_every
                self.progress("faults", began)
        if self.producer.returncode != 0:
            self.problems.append(f"the producer exited with {self.producer.returncode}")
            print(f"chaos: the producer exited with {self.producer.returncode}:\n"
                  + (self.dir / "producer.out").read_text(errors="replace")[-3000:], file=sys.stderr)
        self.faults.write("P", "drain", time.time())
        self.settle_broker()
        self.drain()
        self.faults.write("P", "end", time.time())
        self.stop_workers()
        self.reader.finish(self.ledger)
        return summarize(self.ledger)

    def _kill_gap(self) -> float:
        return self.rng.uniform(0.5, 1.5) * self.opts.kill_every

    def drain(self) -> None:
        """Keep every worker slot running until each confirmed task ran, or the drain timeout."""
        began = time.monotonic()
        deadline = began + self.opts.drain_timeout
        next_report = began + self.opts.report_every
        for slot in list(self.respawn_at):
            self.respawn_at[slot] = 0.0
        self.reader.poll(self.ledger)
        missing = list(self.ledger.enqueued)
        while time.monotonic() < deadline:
            self.reap()
            self.respawn_due()
            self.reader.poll(self.ledger)
            missing = [i for i in missing if i not in self.ledger.completions]
            if not missing:
                print(f"chaos: drained in {time.monotonic() - began:.1f} s", file=sys.stderr)
                return
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + self.opts.report_every
                print(f"chaos: drain {time.monotonic() - began:5.0f} s: {len(missing)} confirmed task(s) not run yet",
                      file=sys.stderr)
            time.sleep(0.5)
        print(f"chaos: the drain timed out after {self.opts.drain_timeout:g} s", file=sys.stderr)
        if self.opts.broker == "rabbitmq" and self.opts.nodes == 1:
            self._show_rabbitmq_queues()

    def _show_rabbitmq_queues(self) -> None:
        """Where the missing tasks may wait: the run's queues that still hold messages."""
        from harness import rabbitmq as harness  # tools/ is on the path: chaos.py runs from there

        try:
            rows = harness.queues(self.env["CHAOS_PREFIX"])
        except Exception as exc:  # noqa: BLE001 - a diagnostic; the summary follows anyway
            print(f"chaos: cannot list RabbitMQ's queues: {exc}", file=sys.stderr)
            return
        print(f"chaos: the run's queues holding messages: {len(rows)}"
              + "".join(f"\n  {name}: ready {ready}, unacked {unacked}, consumers {consumers}"
                        for name, ready, unacked, consumers in rows), file=sys.stderr)

    def stop_workers(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers.values():
            try:
                code = worker.proc.wait(40)
            except subprocess.TimeoutExpired:
                print(f"chaos: worker {worker.name} did not stop within 40 s: killed", file=sys.stderr)
                worker.proc.kill()
                code = worker.proc.wait()
            self.faults.write("T", worker.name, time.time(), code)
        self.workers.clear()
        self.respawn_at.clear()

    def cleanup(self) -> None:
        """Leave nothing running and the broker whole (also after an error or Ctrl-C)."""
        if self.producer is not None and self.producer.poll() is None:
            self.producer.kill()
            self.producer.wait()
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        self.workers.clear()
        self.settle_broker()
        self.faults.close()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def broker_env(broker: str, nodes: int | None) -> tuple[dict[str, str], int]:
    """The broker's ``NOVA_*`` variables: the exported ones when they are for this node count,
    else the harness's (``python tools/brokers.py env``); and the node count."""
    exported_nodes = int(os.environ.get(f"NOVA_{broker.upper()}_NODES") or 1)
    if os.environ.get(ENDPOINT_VARS[broker]) and nodes in (None, exported_nodes):
        return {}, exported_nodes
    nodes = nodes or 1
    args = [sys.executable, str(TOOLS / "brokers.py"), "env", broker] + (["--nodes", str(nodes)] if nodes > 1 else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env, nodes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chaos.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, choices=BROKERS)
    parser.add_argument("--minutes", type=float, default=None,
                        help="how long the producer enqueues while faults run (default 2, or until --tasks)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="stop once this many enqueues are confirmed (one that raised is replaced)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="nova worker --concurrency (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=100.0, help="tasks enqueued per second (default: %(default)s)")
    parser.add_argument("--kill-every", type=float, default=5.0, metavar="SECONDS",
                        help="kill -9 a random worker every this many seconds on average; 0: never "
                             "(default: %(default)s)")
    parser.add_argument("--broker-faults", choices=("restart", "node", "none"), default=None,
                        help="every 30-60 s: restart the broker, or stop and start one node of a cluster "
                             "(default: node on a cluster, else restart)")
    parser.add_argument("--no-broker-restarts", action="store_true", help="the same as --broker-faults none")
    parser.add_argument("--nodes", type=int, default=None,
                        help="run on the harness's N-node cluster (default: what NOVA_<BROKER>_NODES says, else 1)")
    parser.add_argument("--drain-timeout", type=float, default=240.0, metavar="SECONDS",
                        help="how long the final drain may take (default: %(default)s)")
    parser.add_argument("--report-every", type=float, default=15.0, metavar="SECONDS",
                        help="progress lines on stderr (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="for the mix and the faults (default: random)")
    parser.add_argument("--dir", type=Path, default=None, help="the run's directory (default: artifacts/chaos/...)")
    opts = parser.parse_args(argv)
    if opts.minutes is None and opts.tasks is None:
        opts.minutes = 2.0
    for name in ("workers", "concurrency"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if opts.rate <= 0 or (opts.tasks is not None and opts.tasks < 1) or (
            opts.minutes is not None and opts.minutes <= 0):
        parser.error("--rate, --tasks and --minutes must be positive")
    if opts.seed is None:
        opts.seed = random.SystemRandom().randrange(1 << 30)
    if opts.no_broker_restarts:
        opts.broker_faults = "none"
    return opts


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "produce":
        return produce_main(argv[1:])
    opts = parse_args(argv)
    env, opts.nodes = broker_env(opts.broker, opts.nodes)
    if opts.broker_faults is None:
        opts.broker_faults = "node" if opts.nodes > 1 else "restart"
    if opts.broker_faults == "node" and opts.nodes < 2:
        print("chaos.py: --broker-faults node needs a cluster (--nodes 3)", file=sys.stderr)
        return 2
    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = opts.dir or ROOT / "artifacts" / "chaos" / f"{opts.broker}-{stamp}-{prefix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), str(TOOLS), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, **env, "CHAOS_BROKER": opts.broker, "CHAOS_PREFIX": prefix,
                "CHAOS_DIR": str(run_dir), "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    title = (f"{opts.broker}{f' ({opts.nodes} nodes)' if opts.nodes > 1 else ''}, {opts.workers} workers, "
             f"{opts.rate:g} tasks/s offered, kill -9 every ~{opts.kill_every:g} s, broker faults: "
             f"{opts.broker_faults}, seed {opts.seed}")
    print(f"chaos: {title}", file=sys.stderr)
    chaos = Chaos(opts, full_env, run_dir)
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        summary = chaos.run()
    finally:
        chaos.cleanup()
        signal.signal(signal.SIGTERM, previous)
    text = format_summary(summary, title, chaos.problems)
    print(text)
    (run_dir / "summary.txt").write_text(text + "\n")
    ok = summary.ok and not chaos.problems
    (run_dir / "summary.json").write_text(json.dumps({"title": title, **asdict(summary), "ok": ok,
                                                     "problems": chaos.problems}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
