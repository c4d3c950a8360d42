"""``nova worker --metrics-port``: GET /metrics, the Prometheus text format of the app's metrics.

The app's ``nova.PrometheusMetrics`` (one is added to an App that has none) registers nova's
metrics in its registry (prometheus_client's default one unless the app chose another); the
worker serves that registry, so the process's own metrics and the app's are there too.

With ``--processes N`` the supervisor answers: each worker process writes its registry's
samples to a file in a directory of the supervisor's, once a second and when it stops, and a
scrape sums them (``merge``). A worker that ended is not forgotten: its counters, histograms
and summaries stay in the sums (as prometheus_client's multiprocess mode keeps them), its
gauges go. Sums are the rule; a few per-process facts do not add up and are merged otherwise:
``nova_queue_backlog`` (the processes share a queue's backlog) and ``*_max_fds`` take the
highest, ``process_start_time_seconds`` and ``*_created`` the earliest, info metrics the highest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from nova._app import App

__all__ = ["MetricsFiles", "app_registries", "content_type", "merge", "render", "write_snapshot"]

log = logging.getLogger("nova.runtime")

_SUFFIX = ".metrics.json"
_COUNTING = ("counter", "histogram", "summary", "gaugehistogram")
_HIGHEST = {"nova_queue_backlog", "process_max_fds"}
_EARLIEST = {"process_start_time_seconds"}


def app_registries(app: App) -> list[CollectorRegistry]:
    """The registries of the app's PrometheusMetrics, after giving it one if it has none.
    Raises ImportError (naming the extra) without prometheus_client."""
    from nova._prometheus import PrometheusMetrics

    found = [m for m in app.middleware if isinstance(m, PrometheusMetrics)]
    if not found:
        added = PrometheusMetrics()
        app._add_middleware(added)
        found = [added]
    return list({id(m.registry): m.registry for m in found}.values())


def content_type() -> str:
    """The content type of what ``render`` makes (prometheus_client's text format)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return str(CONTENT_TYPE_LATEST)


def render(registries: Iterable[CollectorRegistry]) -> bytes:
    from prometheus_client import generate_latest

    return b"".join(generate_latest(registry) for registry in registries)


# -- a worker process's side ------------------------------------------------------------
def _families(registries: Iterable[CollectorRegistry]) -> list[dict[str, Any]]:
    return [{"name": family.name, "type": family.type, "documentation": family.documentation, "unit": family.unit,
             "samples": [[s.name, s.labels, s.value] for s in family.samples]}
            for registry in registries for family in registry.collect()]


def write_snapshot(directory: str, registries: Iterable[CollectorRegistry]) -> None:
    """This process's samples, as a file the supervisor reads (replaced whole, never half written)."""
    path = Path(directory) / f"{os.getpid()}{_SUFFIX}"
    part = path.with_suffix(".part")
    try:
        part.write_text(json.dumps(_families(registries), separators=(",", ":")))
        os.replace(part, path)
    except OSError as exc:  # the supervisor's directory went away: it is stopping
        log.debug("could not write metrics for the supervisor: %s", exc)


# -- the supervisor's side ----------------------------------------------------------------
_Key = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and labels


class MetricsFiles:
    """The worker processes' metric files in one directory, summed (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        # What ended processes counted, kept: family name -> (its header, samples).
        self._retired: dict[str, tuple[dict[str, Any], dict[_Key, float]]] = {}

    def render(self, live: set[int]) -> bytes:
        """The sums over the processes in ``live`` and the counts of those that ended."""
        from prometheus_client import CollectorRegistry, generate_latest

        snapshots = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                pid = int(path.name[: -len(_SUFFIX)])
                families = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if pid in live:
                snapshots.append(families)
            else:
                self._retire(families)
                with contextlib.suppress(OSError):
                    path.unlink()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge(snapshots, self._retired)))
        data: bytes = generate_latest(registry)
        return data

    def _retire(self, families: list[dict[str, Any]]) -> None:
        for family in families:
            if family["type"] not in _COUNTING:
                continue
            _, kept = self._retired.setdefault(family["name"], ({k: v for k, v in family.items() if k != "samples"},
                                                               {}))
            for name, labels, value in family["samples"]:
                if not name.endswith("_created"):
                    key = (name, tuple(sorted(labels.items())))
                    kept[key] = kept.get(key, 0.0) + value


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge(snapshots: list[list[dict[str, Any]]],
          retired: dict[str, tuple[dict[str, Any], dict[_Key, float]]] | None = None) -> list[Metric]:
    """The families of several processes' snapshots as one (see the module docstring)."""
    from prometheus_client.core import Metric

    headers: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[_Key, float]] = {}
    for families in snapshots:
        for family in families:
            name, kind = family["name"], family["type"]
            headers.setdefault(name, family)
            merged = values.setdefault(name, {})
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                have = merged.get(key)
                merged[key] = value if have is None else _combine(name, kind, sample, have, value)
    for name, (header, kept) in (retired or {}).items():
        headers.setdefault(name, header)
        merged = values.setdefault(name, {})
        for key, value in kept.items():
            merged[key] = merged.get(key, 0.0) + value
    out = []
    for name, header in headers.items():
        metric = Metric(name, header["documentation"], header["type"], header.get("unit") or "")
        for (sample, labels), value in values[name].items():
            metric.add_sample(sample, dict(labels), value)
        out.append(metric)
    return out


def _combine(family: str, kind: str, sample: str, have: float, value: float) -> float:
    if sample.endswith("_created") or family in _EARLIEST:
        return min(have, value)
    if family in _HIGHEST or kind in ("info", "stateset") or family.endswith("_max_fds"):
        return max(have, value)
    return have + value
