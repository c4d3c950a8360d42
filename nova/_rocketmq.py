from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Any


def _client() -> Any:
    if "rocketmq" not in sys.modules:
        stub = types.ModuleType("rocketmq.v5.log.log_config")
        log = logging.getLogger("rocketmq-python-client")
        log.setLevel(logging.WARNING)
        stub.logger = log  # type: ignore[attr-defined]
        sys.modules.setdefault("rocketmq.v5.log.log_config", stub)
    return importlib.import_module("rocketmq")
