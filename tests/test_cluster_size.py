"""tools/harness/cluster_size.py: the node-count checks the three cluster harnesses share."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nova_cluster_size", ROOT / "tools" / "harness" / "cluster_size.py")
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module  # dataclasses look their module up there
_spec.loader.exec_module(_module)
ClusterSize = _module.ClusterSize


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
