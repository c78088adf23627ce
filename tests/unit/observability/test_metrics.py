"""The metrics facade, rendered through the multiprocess collector and parsed back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apigate import __version__
from apigate.observability import metrics as m


@pytest.fixture
def mp_dir() -> Iterator[str]:
    saved = os.environ.pop(m.ENV_VAR, None)
    path = m.setup_multiprocess_dir()
    yield path
    m.cleanup_multiprocess_dir(path)
    if saved is not None:
        os.environ[m.ENV_VAR] = saved


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of render_metrics() keyed by (sample name, labels)."""
    body, content_type = m.render_metrics()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_setup_exports_a_fresh_directory(mp_dir: str) -> None:
    """setup_multiprocess_dir() makes an empty directory and exports it for the workers."""
    assert os.environ[m.ENV_VAR] == mp_dir
    assert os.listdir(mp_dir) == []


def test_cleanup_removes_directory_and_variable() -> None:
    """cleanup_multiprocess_dir() removes the directory and unsets the variable."""
    saved = os.environ.pop(m.ENV_VAR, None)
    path = m.setup_multiprocess_dir()
    m.cleanup_multiprocess_dir(path)
    assert not os.path.exists(path)
    assert m.ENV_VAR not in os.environ
    if saved is not None:
        os.environ[m.ENV_VAR] = saved


def test_request_done_counts_by_route_method_and_status_class(mp_dir: str) -> None:
    """request_done() adds to requests_total with bounded method and status-class labels."""
    metrics = m.Metrics()
    metrics.request_done("users", "GET", 200, 0.01)
    metrics.request_done("users", "GET", 204, 0.01)
    metrics.request_done("users", "BREW", 503, 0.01)
    metrics.request_done("users", "POST", 999, 0.01)
    metrics.flush()
    samples = scrape()
    name = "apigate_requests_total"
    assert value(samples, name, route="users", method="GET", status_class="2xx") == 2
    assert value(samples, name, route="users", method="other", status_class="5xx") == 1
    assert value(samples, name, route="users", method="POST", status_class="other") == 1


def test_nothing_is_written_before_flush(mp_dir: str) -> None:
    """Outside an event loop records stay buffered until flush() is called."""
    metrics = m.Metrics()
    metrics.request_done("users", "GET", 200, 0.01)
    assert value(scrape(), "apigate_requests_total", route="users", method="GET",
                 status_class="2xx") is None


def test_histogram_buckets_match_prometheus_le(mp_dir: str) -> None:
    """Buffered observations land in the same cumulative buckets observe() would use."""
    metrics = m.Metrics()
    for seconds in (0.0005, 0.0007, 0.3, 20.0):
        metrics.request_done("users", "GET", 200, seconds)
    metrics.flush()
    samples = scrape()
    bucket = "apigate_request_duration_seconds_bucket"
    assert value(samples, bucket, route="users", le="0.0005") == 1
    assert value(samples, bucket, route="users", le="0.001") == 2
    assert value(samples, bucket, route="users", le="0.5") == 3
    assert value(samples, bucket, route="users", le="10.0") == 3
    assert value(samples, bucket, route="users", le="+Inf") == 4
    assert value(samples, "apigate_request_duration_seconds_sum", route="users") == (
        pytest.approx(20.3012)
    )


def test_flushes_twice_accumulate(mp_dir: str) -> None:
    """A second flush adds only what was recorded since the first."""
    metrics = m.Metrics()
    metrics.storage_seconds(0.002)
    metrics.flush()
    metrics.storage_seconds(0.002)
    metrics.flush()
    metrics.flush()
    assert value(scrape(), "apigate_ratelimit_storage_seconds_count") == 2


def test_upstream_series(mp_dir: str) -> None:
    """upstream_done/upstream_error/targets_ejected feed their series; unknown kinds are other."""
    metrics = m.Metrics()
    metrics.upstream_done("users", 0.004)
    metrics.upstream_error("users", "timeout")
    metrics.upstream_error("users", "timeout")
    metrics.upstream_error("users", "weird")  # type: ignore[arg-type]
    metrics.targets_ejected("users", 2)
    metrics.flush()
    samples = scrape()
    assert value(samples, "apigate_upstream_duration_seconds_count", upstream="users") == 1
    assert value(samples, "apigate_upstream_errors_total", upstream="users", kind="timeout") == 2
    assert value(samples, "apigate_upstream_errors_total", upstream="users", kind="other") == 1
    assert value(samples, "apigate_upstream_targets_ejected", upstream="users") == 2


def test_ratelimit_decisions(mp_dir: str) -> None:
    """request_done() with a decision counts it by policy and decision (an unknown decision
    is other); without one, none is counted."""
    metrics = m.Metrics()
    metrics.request_done("users", "GET", 200, 0.01, ("per-ip", "allowed"))
    metrics.request_done("users", "GET", 429, 0.01, ("per-ip", "limited"))
    metrics.request_done("users", "GET", 429, 0.01, ("per-ip", "limited"))
    metrics.request_done("users", "GET", 200, 0.01, ("per-ip", "maybe"))  # type: ignore[arg-type]
    metrics.request_done("users", "GET", 200, 0.01)
    metrics.flush()
    samples = scrape()
    name = "apigate_ratelimit_decisions_total"
    assert value(samples, name, policy="per-ip", decision="allowed") == 1
    assert value(samples, name, policy="per-ip", decision="limited") == 2
    assert value(samples, name, policy="per-ip", decision="other") == 1
    assert sum(v for (n, _), v in samples.items() if n == name) == 4
    assert value(samples, "apigate_requests_total", route="users", method="GET",
                 status_class="2xx") == 3


def test_live_gauges_and_worker_exit(mp_dir: str) -> None:
    """Connection and in-flight gauges report the live value; worker_exited drops them."""
    metrics = m.Metrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.inflight(+1)
    metrics.flush()
    samples = scrape()
    assert value(samples, "apigate_active_connections") == 1
    assert value(samples, "apigate_inflight_requests") == 1
    m.worker_exited(os.getpid())
    assert value(scrape(), "apigate_active_connections") is None


def test_config_reload_is_written_through(mp_dir: str) -> None:
    """config_reload() needs no flush: it is recorded at once by result."""
    metrics = m.Metrics()
    metrics.config_reload(True)
    metrics.config_reload(False)
    samples = scrape()
    assert value(samples, "apigate_config_reloads_total", result="ok") == 1
    assert value(samples, "apigate_config_reloads_total", result="error") == 1


def test_info_carries_the_version(mp_dir: str) -> None:
    """apigate_info{version} = 1 is rendered by the supervisor even with no worker data."""
    assert value(scrape(), "apigate_info", version=__version__) == 1


async def test_flush_is_scheduled_on_the_running_loop(mp_dir: str) -> None:
    """Inside an event loop a record schedules one flush after flush_interval_s."""
    metrics = m.Metrics(flush_interval_s=0)
    metrics.request_done("users", "GET", 200, 0.01)
    for _ in range(10):  # loop iterations, not wall-clock waiting
        await asyncio.sleep(0)
    samples = scrape()
    assert value(samples, "apigate_requests_total", route="users", method="GET",
                 status_class="2xx") == 1


def test_a_new_directory_rebinds_the_value_store(mp_dir: str) -> None:
    """Metrics built after the directory changed write to the new directory only."""
    first = m.Metrics()
    first.request_done("old", "GET", 200, 0.01)
    first.flush()
    second_dir = m.setup_multiprocess_dir()
    try:
        second = m.Metrics()
        second.request_done("new", "GET", 200, 0.01)
        second.flush()
        routes = {dict(labels).get("route") for name, labels in scrape()
                  if name == "apigate_requests_total"}
    finally:
        m.cleanup_multiprocess_dir(second_dir)
        os.environ[m.ENV_VAR] = mp_dir
    assert routes == {"new"}


def test_null_metrics_records_nothing(mp_dir: str) -> None:
    """NullMetrics accepts every call of the facade and writes no series."""
    sink: m.MetricsSink = m.NullMetrics()
    sink.request_done("users", "GET", 200, 0.01)
    sink.upstream_done("users", 0.01)
    sink.upstream_error("users", "connect")
    sink.targets_ejected("users", 1)
    sink.request_done("users", "GET", 200, 0.01, ("per-ip", "allowed"))
    sink.storage_seconds(0.001)
    sink.connection_opened()
    sink.connection_closed()
    sink.inflight(1)
    sink.config_reload(True)
    sink.flush()
    names = {name for name, _ in scrape()}
    assert names == {"apigate_info"}
