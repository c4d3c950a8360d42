"""What the harness modules share: tools/harness/cluster_size.py (the cluster harnesses' node-count
checks) and tools/harness/processes.py (alive, command_line, port_open, stop_pids)."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"nova_harness_{name}", ROOT / "tools" / "harness" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ClusterSize = _load("cluster_size").ClusterSize
processes = _load("processes")


def test_counts_and_nodes_are_checked_against_what_up_recorded(tmp_path: Path) -> None:
    size = ClusterSize("rocketmq", tmp_path / "nodes", least=2, most=3, noun="broker")
    with pytest.raises(SystemExit, match=r"^a rocketmq cluster here has 2 to 3 brokers, not 4$"):
        size.check_count(4)
    setup = re.escape(f"no rocketmq cluster is set up in {tmp_path}: `python tools/brokers.py up rocketmq --nodes 2`")
    with pytest.raises(SystemExit, match=f"^{setup}$"):
        size.check_node(1)
    assert size.check_up(2) is None
    assert size.check_restart(3) is None
    size.record(2)
    assert (size.check_node(2), size.check_up(2), size.check_restart(None), size.check_restart(2)) == (2, 2, 2, 2)
    with pytest.raises(SystemExit, match=r"^the rocketmq cluster has brokers 1 to 2, not 3$"):
        size.check_node(3)
    with pytest.raises(SystemExit, match=r"^a 2-broker rocketmq cluster is set up in .*--nodes 2` first$"):
        size.check_up(3)
    with pytest.raises(SystemExit, match=r"has 2 brokers, not 3$"):
        size.check_restart(3)


def test_stop_pids_terms_then_kills_what_outlives_the_timeout() -> None:
    polite = subprocess.Popen(["sleep", "60"])
    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
                                stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"  # TERM ignored from now
        assert processes.alive(polite.pid) and processes.alive(stubborn.pid)
        processes.stop_pids([polite.pid, stubborn.pid], kill=False, timeout=0.5)
        assert not processes.alive(polite.pid) and not processes.alive(stubborn.pid)  # zombies count as gone
        assert (polite.wait(5), stubborn.wait(5)) == (-15, -9)
    finally:
        for process in (polite, stubborn):
            process.kill()
            process.wait()
        assert stubborn.stdout is not None
        stubborn.stdout.close()


def test_port_open_is_whether_something_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert processes.port_open(port)
    assert not processes.port_open(port)


def test_command_line_is_asked_again_while_empty_and_none_once_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-7f3a"])
    try:
        line = processes.command_line(child.pid)
        assert line is not None and b"marker-7f3a" in line
    finally:
        child.kill()
        child.wait()
    assert processes.command_line(child.pid) is None
    # A live process whose command line reads empty (memory being set up or torn down) is
    # not taken for gone: here, a stand-in /proc answer that stays empty.
    calls = []
    real_read = Path.read_bytes

    def empty_then_real(path: Path) -> bytes:
        calls.append(path)
        return b"" if len(calls) < 3 else real_read(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_bytes", empty_then_real)
        line = processes.command_line(os.getpid())
    assert line is not None and line and len(calls) == 3


def test_owned_pid_claims_only_a_live_process_with_the_markers(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert processes.owned_pid(pid_file, b"marker-5c1e") is None  # no file
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-5c1e"])
    try:
        pid_file.write_text(str(child.pid))
        assert processes.owned_pid(pid_file, b"marker-5c1e") == child.pid
        assert processes.owned_pid(pid_file, b"marker-5c1e", b"someone-else") is None  # a recycled pid
    finally:
        child.kill()
        child.wait()
    assert processes.owned_pid(pid_file, b"marker-5c1e") is None
    pid_file.write_text("not a pid")
    assert processes.owned_pid(pid_file) is None
