"""The chaos run's ledger and summary (tools/chaos.py), without a broker: what counts as lost,
early, a duplicate and its explanation, and that a killed writer loses no line it wrote."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nova_tools_chaos", ROOT / "tools" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


chaos = _load()

T0 = 1_800_000_000.0


def write(directory: Path, name: str, *lines: str, end: str = "\n") -> None:
    with (directory / name).open("a") as f:
        f.write("\n".join(lines) + end)


def summary_of(directory: Path) -> object:
    return chaos.summarize(chaos.read_ledger(directory))


def test_a_clean_run_is_ok_with_its_lateness(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log",
          f"E t1 a 3 - {T0}",
          f"E t2 b 1 {T0 + 10} {T0}",
          f"E t3 s 2 {T0 + 5} {T0 + 1}")
    write(tmp_path, "done-w0.1.log",
          f"D t1 {T0 + 0.1} {T0 + 0.2} 1",
          f"D t2 {T0 + 10.05} {T0 + 10.1} 1")
    write(tmp_path, "done-w1.2.log", f"D t3 {T0 + 5.5} {T0 + 5.6} 1")
    s = summary_of(tmp_path)
    assert (s.enqueued, s.completed, s.lost, s.early, s.duplicates) == (3, 3, 0, 0, 0)
    assert s.delayed == 2
    assert s.lateness_p50_ms == pytest.approx(50, abs=0.01)
    assert s.lateness_p99_ms == pytest.approx(500, abs=0.01)
    assert s.ok
    text = chaos.format_summary(s, "kafka")
    assert "  lost          0\n" in text
    assert text.endswith("result: OK")


def test_a_confirmed_task_that_never_ran_is_lost_and_fails_the_run(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 a 3 - {T0}", f"E t2 a 3 {T0 + 3} {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0} 1")
    s = summary_of(tmp_path)
    assert (s.completed, s.lost) == (1, 1)
    assert s.lost_examples[0].startswith("t2 (async, priority 3, due ")
    assert not s.ok
    assert chaos.format_summary(s, "x").endswith("result: FAILED: 1 lost")


def test_a_producer_or_harness_the_run_had_to_kill_fails_a_run_that_lost_nothing(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 a 3 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0} 1")
    s = summary_of(tmp_path)
    assert s.ok
    assert chaos.format_summary(s, "x").endswith("result: OK")
    text = chaos.format_summary(s, "x", ["the producer ran 180 s past --minutes: killed"])
    assert text.endswith("result: FAILED: the producer ran 180 s past --minutes: killed")


def test_a_run_before_the_due_time_is_early_even_when_it_is_a_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 b 2 {T0 + 10} {T0}", f"E t2 a 2 {T0 + 10} {T0}")
    write(tmp_path, "done-w0.1.log",
          f"D t1 {T0 + 10.0} {T0 + 10.1} 1",   # exactly at the due time: not early
          f"D t2 {T0 + 10.2} {T0 + 10.3} 1",
          f"D t2 {T0 + 9.998} {T0 + 10.4} 1")  # a second run 2 ms early
    s = summary_of(tmp_path)
    assert s.early == 1
    assert s.early_max_ms == pytest.approx(2.0, abs=0.01)
    assert s.lateness_max_ms == pytest.approx(0.0, abs=0.01)  # the first run is the one that started first
    assert not s.ok
    assert "1 early" in chaos.format_summary(s, "x")


def test_duplicates_are_explained_by_a_kill_a_delayed_kill_or_a_broker_fault(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log",
          f"E k a 2 - {T0}",             # its worker died after running it: kill
          f"E f a 2 {T0 + 20} {T0}",     # delayed; a worker died while it waited: forwarder
          f"E b a 2 - {T0 + 50}",        # a broker restart in between: broker
          f"E u a 2 - {T0 + 100}")       # nothing in between: unexplained
    write(tmp_path, "done-w0.1.log", f"D k {T0 + 1} {T0 + 1.1} 1")
    write(tmp_path, "done-w1.2.log",
          f"D f {T0 + 20} {T0 + 20.1} 1", f"D f {T0 + 20.2} {T0 + 20.3} 1", f"D b {T0 + 51} {T0 + 51.1} 1",
          f"D u {T0 + 101} {T0 + 101.1} 1", f"D u {T0 + 102} {T0 + 102.1} 1")
    write(tmp_path, "done-w0.3.log", f"D k {T0 + 35} {T0 + 35.1} 1", f"D b {T0 + 70} {T0 + 70.1} 1")
    write(tmp_path, "faults.log",
          f"S w0.1 {T0 - 5}", f"S w1.2 {T0 - 5}",
          f"K w0.1 {T0 + 2}",
          f"S w0.3 {T0 + 3}",
          f"FB restart {T0 + 55} kafka", f"FE restart {T0 + 65} 0")
    s = summary_of(tmp_path)
    assert (s.duplicates, s.duplicate_tasks) == (4, 4)
    assert (s.explained_by_kill, s.explained_by_forwarder_kill, s.explained_by_broker, s.unexplained) == (1, 1, 1, 1)
    assert s.unexplained_examples[0].startswith("u: ran ")
    assert s.kills == 1
    assert s.broker_faults == {"restart": 1}
    assert "  restarts      1 broker restart\n" in chaos.format_summary(s, "x")
    assert s.ok  # duplicates are at-least-once; only losses and early runs fail a run


def test_a_kill_before_the_first_run_ended_does_not_explain_its_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t a 2 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t {T0 + 1} {T0 + 3} 1")
    write(tmp_path, "done-w1.2.log", f"D t {T0 + 40} {T0 + 40.1} 1")
    write(tmp_path, "faults.log", f"K w0.1 {T0 + 2}")  # ...yet its line is there: not this task's kill
    s = summary_of(tmp_path)
    assert (s.explained_by_kill, s.unexplained) == (0, 1)


def test_ids_nobody_enqueued_and_wrong_payloads_fail_the_run(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 a 2 - {T0}", f"U r1 a 2 - {T0}", f"U r2 a 2 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0} 1", f"D r1 {T0} {T0} 1", f"D zz {T0} {T0} 1", "M t1")
    s = summary_of(tmp_path)
    assert (s.refused_enqueues, s.refused_but_ran, s.unknown, s.mismatches) == (2, 1, 1, 1)
    assert s.unknown_examples == ["zz"]
    assert not s.ok
    assert s.failures() == ["1 unknown ids completed", "1 payloads not their task's"]


def test_a_torn_last_line_is_ignored_and_a_corrupt_one_fails(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 a 2 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0} 1", f"D t1 {T0 + 1}", end="")  # died mid-write
    s = summary_of(tmp_path)
    assert (s.torn, s.duplicates, s.corrupt) == (1, 0, 0)
    assert s.ok
    write(tmp_path, "done-w1.2.log", "D t1 not-a-time 1 1")
    s = summary_of(tmp_path)
    assert s.corrupt == 1
    assert "done-w1.2: 'D t1 not-a-time 1 1'" in s.corrupt_examples[0]
    assert not s.ok


def test_the_reader_takes_only_what_was_appended_and_waits_for_a_line_to_end(tmp_path: Path) -> None:
    ledger = chaos.Ledger()
    reader = chaos.LedgerReader(tmp_path)
    write(tmp_path, "enqueued.log", f"E t1 a 2 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0}", end="")
    reader.poll(ledger)
    assert list(ledger.enqueued) == ["t1"]
    assert ledger.completions == {}
    write(tmp_path, "done-w0.1.log", " 1")
    reader.poll(ledger)
    assert ledger.completions["t1"] == [chaos.Completion(T0, T0, "w0.1", 1)]
    reader.poll(ledger)
    assert ledger.done_lines == 1
    write(tmp_path, "notes.log", "anything")  # not a ledger file: not read
    reader.finish(ledger)
    assert (ledger.torn, ledger.corrupt) == (0, [])


def test_a_fault_that_ends_without_beginning_is_corrupt(tmp_path: Path) -> None:
    write(tmp_path, "enqueued.log", f"E t1 a 2 - {T0}")
    write(tmp_path, "done-w0.1.log", f"D t1 {T0} {T0} 1")
    write(tmp_path, "faults.log", f"FE restart {T0} 0", f"P produce {T0}", f"P drain {T0 + 60}", f"P end {T0 + 70}")
    s = summary_of(tmp_path)
    assert s.corrupt == 1
    assert (s.produce_s, s.drain_s) == (60, 10)


def test_lines_written_before_a_kill_9_are_all_there(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tools")!r})
        from chaos import LedgerFile
        ledger = LedgerFile(__import__("pathlib").Path({str(tmp_path / "done-w0.1.log")!r}), fsync_every=3600)
        for i in range(2000):
            ledger.append(f"D t{{i}} 1.0 2.0 1\\n")
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no fsync, no exit handlers
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -9
    ledger = chaos.read_ledger(tmp_path)
    assert ledger.done_lines == 2000
    assert ledger.torn == 0


def test_percentile_is_the_nearest_rank() -> None:
    assert chaos.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert chaos.percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    assert chaos.percentile([5.0], 0.99) == 5.0
    with pytest.raises(ValueError, match="no values"):
        chaos.percentile([], 0.5)


def test_the_mix_has_every_kind_priority_delay_and_batch_size() -> None:
    rng = random.Random(7)
    plans = [chaos.plan_enqueue(rng) for _ in range(2000)]
    assert {k for p in plans for k in p.kinds} == {"a", "s", "b"}
    assert {p.priority for p in plans} == {1, 2, 3}
    delays = [p.delay for p in plans if p.delay is not None]
    assert 0.3 < len(delays) / len(plans) < 0.5
    assert min(delays) >= 1.0 and max(delays) <= 30.0
    assert all(len(p.kinds) == 1 for p in plans if p.single)
    sizes = {len(p.kinds) for p in plans if not p.single}
    assert min(sizes) == 2 and max(sizes) == 20
    assert all(set(p.kinds) == {"b"} for p in plans if p.queue_kind == "bulk")
    assert all("b" not in p.kinds for p in plans if p.queue_kind == "work")
