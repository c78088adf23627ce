"""The ``apigate`` command line: check, schema and version, run as the installed console script."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.gateway import apigate_executable

import apigate

GOOD = """\
upstreams:
  users:
    targets: ["http://127.0.0.1:9001"]
routes:
  - name: users
    match: {path_prefix: /users}
    upstream: users
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*apigate_executable(), *args], cwd=cwd, capture_output=True, text=True, timeout=30,
        check=False,
    )


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    """``apigate check`` on a valid file exits 0 and says the file is ok."""
    (tmp_path / "good.yaml").write_text(GOOD)
    result = run("check", "good.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "good.yaml: ok"


def test_check_refuses_a_bad_file_naming_the_field(tmp_path: Path) -> None:
    """``apigate check`` on a dangling upstream exits 1 with ``FILE: dotted.path: message``."""
    (tmp_path / "bad.yaml").write_text(GOOD.replace("upstream: users", "upstream: userz"))
    result = run("check", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "bad.yaml: routes[0].upstream: no upstream named 'userz'"


def test_schema_prints_the_json_schema(tmp_path: Path) -> None:
    """``apigate schema`` prints a JSON Schema describing the top-level sections."""
    result = run("schema", cwd=tmp_path)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"server", "upstreams", "routes", "rate_limits"} <= set(schema["properties"])


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    """``apigate version`` prints the installed package's version."""
    result = run("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == apigate.__version__


def test_run_refuses_a_worker_count_out_of_range(tmp_path: Path) -> None:
    """``apigate run --workers 0`` is a usage error before anything starts (exit 2)."""
    (tmp_path / "good.yaml").write_text(GOOD)
    for value in ("0", "-1", "257", "many"):
        result = run("run", "--config", "good.yaml", "--workers", value, cwd=tmp_path)
        assert result.returncode == 2
        assert "argument --workers: workers must be between 1 and 256" in result.stderr
