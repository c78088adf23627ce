"""Every Prometheus metric of apigate, declared once, recorded cheaply on the hot path.

Process model: the supervisor calls :func:`setup_multiprocess_dir` before it spawns workers;
each worker builds one :class:`Metrics` after it starts and records; the supervisor's
``/metrics`` serves :func:`render_metrics`, which merges the workers' files, and calls
:func:`worker_exited` when it reaps a worker.

Import order is safe: this module never imports ``prometheus_client`` at import time.
prometheus_client picks its value store (in memory, or mmap files under
``PROMETHEUS_MULTIPROC_DIR``) once, when it is first imported; :class:`Metrics` re-picks it
from the environment when it is built, so a ``prometheus_client`` imported earlier by anything
else still ends up writing files the supervisor can read.

The hot path never touches prometheus_client: calls add to plain dicts, and the deltas are
written to the mmap files at most once per ``flush_interval_s`` (a timer on the running loop),
so a scrape may lag by that much. Call :meth:`Metrics.flush` before a worker exits.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from apigate import __version__

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STORAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
UpstreamErrorKind = Literal["connect", "timeout", "reset", "ejected"]
Decision = Literal[
    "allowed", "limited", "shadow_limited", "failure_open", "failure_closed",
    "failure_local", "cached_limited",
]
UPSTREAM_ERROR_KINDS = frozenset({"connect", "timeout", "reset", "ejected"})
DECISIONS = frozenset(get_args(Decision))


class MetricsSink(Protocol):
    """What the data plane records; :class:`Metrics` and :class:`NullMetrics` implement it."""

    def request_done(
        self, route: str, method: str, status: int, seconds: float,
        decision: tuple[str, Decision] | None = None,
    ) -> None: ...
    def upstream_done(self, upstream: str, seconds: float) -> None: ...
    def upstream_error(self, upstream: str, kind: UpstreamErrorKind) -> None: ...
    def targets_ejected(self, upstream: str, count: int) -> None: ...
    def storage_seconds(self, seconds: float) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def inflight(self, delta: int) -> None: ...
    def config_reload(self, ok: bool) -> None: ...
    def flush(self) -> None: ...


class NullMetrics:
    """The no-op twin of :class:`Metrics`, used when ``observability.metrics`` is false."""

    def request_done(
        self, route: str, method: str, status: int, seconds: float,
        decision: tuple[str, Decision] | None = None,
    ) -> None: ...
    def upstream_done(self, upstream: str, seconds: float) -> None: ...
    def upstream_error(self, upstream: str, kind: UpstreamErrorKind) -> None: ...
    def targets_ejected(self, upstream: str, count: int) -> None: ...
    def storage_seconds(self, seconds: float) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def inflight(self, delta: int) -> None: ...
    def config_reload(self, ok: bool) -> None: ...
    def flush(self) -> None: ...


class _Buckets:
    """Observations of one histogram series since the last flush, bucketed like Prometheus."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value: Prometheus' "le" (value <= bound).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def drain_into(self, child: Histogram) -> None:
        # Histogram children keep non-cumulative per-bucket values and a sum; adding the
        # deltas equals calling observe() once per value (pinned by a unit test).
        buckets: list[Any] = child._buckets
        child._sum.inc(self.total)
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        self.total = 0.0


_BOUND: dict[str, str | None] = {}  # the directory prometheus_client was last bound to


def _bind_value_class() -> None:
    """Make prometheus_client store values the way the environment says (see module doc)."""
    from prometheus_client import values  # noqa: PLC0415 (lazy, see module doc)

    path = os.environ.get(ENV_VAR)
    if path is not None and not os.path.isdir(path):
        raise RuntimeError(f"{ENV_VAR}={path!r} is not a directory")
    if _BOUND.get("dir", "unbound") != path:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _BOUND["dir"] = path


class Metrics:
    """Records into dicts on the hot path and writes them to prometheus_client on flush.

    Build one per worker process, inside that process. Labels are bounded: ``method`` outside
    :data:`METHODS` is "other", a status outside 100-599 is class "other", an unknown error
    kind or decision is "other". ``route``, ``upstream`` and ``policy`` must be configured
    names (or a fixed word such as "unmatched"), never request data.
    """

    def __init__(self, *, flush_interval_s: float = 1.0) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 (lazy, see module doc)

        _bind_value_class()
        self._interval = flush_interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._requests_total = Counter(
            "apigate_requests_total", "Requests answered, by route, method and status class.",
            ["route", "method", "status_class"], registry=None)
        self._request_seconds = Histogram(
            "apigate_request_duration_seconds", "Time from request head to response end.",
            ["route"], buckets=REQUEST_BUCKETS, registry=None)
        self._upstream_seconds = Histogram(
            "apigate_upstream_duration_seconds", "Time an upstream took to answer.",
            ["upstream"], buckets=REQUEST_BUCKETS, registry=None)
        self._upstream_errors = Counter(
            "apigate_upstream_errors_total", "Upstream failures by kind.",
            ["upstream", "kind"], registry=None)
        self._decisions = Counter(
            "apigate_ratelimit_decisions_total", "Rate-limit decisions by policy and outcome.",
            ["policy", "decision"], registry=None)
        self._storage = Histogram(
            "apigate_ratelimit_storage_seconds",
            "Time one rate-limit storage round trip took (on Redis: one batch of decisions).",
            buckets=STORAGE_BUCKETS, registry=None)
        self._connections = Gauge(
            "apigate_active_connections", "Open client connections.",
            registry=None, multiprocess_mode="livesum")
        self._inflight_gauge = Gauge(
            "apigate_inflight_requests", "Requests being handled.",
            registry=None, multiprocess_mode="livesum")
        self._reloads = Counter(
            "apigate_config_reloads_total", "Config reloads by result (ok or error).",
            ["result"], registry=None)
        # Each worker keeps its own passive health state: report the worst worker's view.
        self._ejected_gauge = Gauge(
            "apigate_upstream_targets_ejected", "Upstream targets currently ejected.",
            ["upstream"], registry=None, multiprocess_mode="livemax")
        self._children: dict[tuple[object, ...], Any] = {}
        # Requests by (route, method, status class, the limiter's (policy, decision) or None):
        # a limited request's decision is counted with it, in the same dict update.
        self._request_counts: dict[tuple[str, str, int, tuple[str, str] | None], int] = {}
        self._request_hists: dict[str, _Buckets] = {}
        self._upstream_hists: dict[str, _Buckets] = {}
        self._error_counts: dict[tuple[str, str], int] = {}
        self._storage_hist = _Buckets(STORAGE_BUCKETS)
        self._ejected: dict[str, int] = {}
        self._open_connections = 0
        self._inflight = 0

    # -- hot path: dict arithmetic and, at most once per interval, one timer --

    def request_done(
        self, route: str, method: str, status: int, seconds: float,
        decision: tuple[str, Decision] | None = None,
    ) -> None:
        """One request answered; ``decision``: the rate limiter's labels ``(policy, decision)``
        when it was asked, a tuple the caller keeps (counted here: a call less per request)."""
        key = (route, method, status // 100, decision)
        counts = self._request_counts
        counts[key] = counts.get(key, 0) + 1
        hist = self._request_hists.get(route)
        if hist is None:
            hist = self._request_hists[route] = _Buckets(REQUEST_BUCKETS)
        hist.observe(seconds)
        if self._timer is None:
            self._schedule()

    def upstream_done(self, upstream: str, seconds: float) -> None:
        hist = self._upstream_hists.get(upstream)
        if hist is None:
            hist = self._upstream_hists[upstream] = _Buckets(REQUEST_BUCKETS)
        hist.observe(seconds)
        if self._timer is None:
            self._schedule()

    def upstream_error(self, upstream: str, kind: UpstreamErrorKind) -> None:
        key = (upstream, kind)
        self._error_counts[key] = self._error_counts.get(key, 0) + 1
        if self._timer is None:
            self._schedule()

    def targets_ejected(self, upstream: str, count: int) -> None:
        self._ejected[upstream] = count
        if self._timer is None:
            self._schedule()

    def storage_seconds(self, seconds: float) -> None:
        self._storage_hist.observe(seconds)
        if self._timer is None:
            self._schedule()

    def connection_opened(self) -> None:
        self._open_connections += 1
        if self._timer is None:
            self._schedule()

    def connection_closed(self) -> None:
        self._open_connections -= 1
        if self._timer is None:
            self._schedule()

    def inflight(self, delta: int) -> None:
        self._inflight += delta
        if self._timer is None:
            self._schedule()

    def config_reload(self, ok: bool) -> None:
        """Rare, so written through at once (the supervisor may call it without a loop)."""
        self._child(self._reloads, "ok" if ok else "error").inc()

    # -- flush: the only place that touches prometheus_client --

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a script, a test): the caller flushes explicitly
        self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Write everything recorded since the last flush to the metric store."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        decisions: dict[tuple[str, str], int] = {}
        for (route, method, klass, decision), count in self._request_counts.items():
            method_label = method if method in METHODS else "other"
            status_label = STATUS_CLASSES.get(klass, "other")
            self._child(self._requests_total, route, method_label, status_label).inc(count)
            if decision is not None:
                decisions[decision] = decisions.get(decision, 0) + count
        self._request_counts.clear()
        for route, hist in self._request_hists.items():
            hist.drain_into(self._child(self._request_seconds, route))
        for upstream, hist in self._upstream_hists.items():
            hist.drain_into(self._child(self._upstream_seconds, upstream))
        for (upstream, kind), count in self._error_counts.items():
            kind_label = kind if kind in UPSTREAM_ERROR_KINDS else "other"
            self._child(self._upstream_errors, upstream, kind_label).inc(count)
        self._error_counts.clear()
        for (policy, outcome), count in decisions.items():
            decision_label = outcome if outcome in DECISIONS else "other"
            self._child(self._decisions, policy, decision_label).inc(count)
        self._storage_hist.drain_into(self._storage)
        for upstream, ejected in self._ejected.items():
            self._child(self._ejected_gauge, upstream).set(ejected)
        self._connections.set(self._open_connections)
        self._inflight_gauge.set(self._inflight)

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: ``labels()`` costs about a microsecond."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


def setup_multiprocess_dir() -> str:
    """Create a fresh directory for the workers' metric files and export it in the environment.

    The supervisor calls this before it spawns workers (they inherit the environment). The
    directory is made under ``$TMPDIR``; remove it with :func:`cleanup_multiprocess_dir`.
    """
    path = tempfile.mkdtemp(prefix="apigate-metrics-")
    os.environ[ENV_VAR] = path
    return path


def cleanup_multiprocess_dir(path: str) -> None:
    """Remove the directory made by :func:`setup_multiprocess_dir` and unset the variable."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV_VAR) == path:
        del os.environ[ENV_VAR]


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges; its counters stay so that totals never go down."""
    from prometheus_client import multiprocess  # noqa: PLC0415 (lazy, see module doc)

    if os.environ.get(ENV_VAR):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _InfoCollector:
    """``apigate_info{version}`` = 1, rendered by the supervisor itself (Info metrics cannot
    be multiprocess)."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 (lazy, see module doc)

        info = GaugeMetricFamily("apigate_info", "apigate build information.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info


def render_metrics() -> tuple[bytes, str]:
    """The merged metrics of all workers in the Prometheus text format, and its content type.

    Reads files, so the admin server runs it off the event loop.
    """
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess  # noqa: PLC0415 (lazy, see module doc)
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # noqa: PLC0415 (lazy, see module doc)

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_InfoCollector())
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
