"""Metrics recorded in separate worker processes, merged by the supervisor's render."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apigate.observability import metrics as m

WORKER = """
import os
from apigate.observability.metrics import Metrics
metrics = Metrics()
for _ in range(3):
    metrics.request_done("users", "GET", 200, 0.01)
metrics.connection_opened()
metrics.flush()
print(os.getpid())
"""


@pytest.fixture
def mp_dir() -> Iterator[str]:
    saved = os.environ.pop(m.ENV_VAR, None)
    path = m.setup_multiprocess_dir()
    yield path
    m.cleanup_multiprocess_dir(path)
    if saved is not None:
        os.environ[m.ENV_VAR] = saved


def run_worker() -> int:
    """Run one worker process to completion; returns its pid."""
    done = subprocess.run(  # the interpreter running the tests, with the inherited env
        [sys.executable, "-c", WORKER], capture_output=True, check=True, timeout=60, text=True
    )
    return int(done.stdout)


def scrape() -> dict[str, float]:
    body, _ = m.render_metrics()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name in ("apigate_requests_total", "apigate_active_connections")
    }


def test_workers_are_summed_and_dead_workers_leave_live_gauges(mp_dir: str) -> None:
    """Two workers' counters add up; a reaped worker's connections gauge stops counting."""
    first, second = run_worker(), run_worker()
    assert scrape() == {"apigate_requests_total": 6, "apigate_active_connections": 2}
    m.worker_exited(first)
    assert scrape() == {"apigate_requests_total": 6, "apigate_active_connections": 1}
    m.worker_exited(second)
    assert scrape() == {"apigate_requests_total": 6}


def test_importing_apigate_observability_does_not_import_prometheus_client() -> None:
    """The supervisor may import these modules before it sets the multiprocess directory."""
    code = (
        "import sys, apigate.observability.metrics, apigate.observability.access_log, "
        "apigate.observability.logging, apigate.admin.server\n"
        "print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                          timeout=60, text=True)
    assert done.stdout.strip() == "False"


def test_prometheus_client_imported_before_the_directory_still_writes_files(mp_dir: str) -> None:
    """A worker that imported prometheus_client before the variable was set still records."""
    code = (
        "import os\n"
        f"path = os.environ.pop({m.ENV_VAR!r})\n"
        "import prometheus_client\n"
        f"os.environ[{m.ENV_VAR!r}] = path\n" + WORKER
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    assert scrape()["apigate_requests_total"] == 3
