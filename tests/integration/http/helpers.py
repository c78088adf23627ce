"""Config builders and /proc helpers for the data-plane integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def upstream(*targets: str, **options: Any) -> dict[str, Any]:
    """An upstream section: ``upstream(url, balance="random", retries=0)``."""
    return {"targets": list(targets), **options}


def route(name: str, upstream_name: str, **options: Any) -> dict[str, Any]:
    """A route; match keys (hosts, path, path_prefix, path_regex, methods) go under ``match``."""
    match_keys = {"hosts", "path", "path_prefix", "path_regex", "methods"}
    match = {k: v for k, v in options.items() if k in match_keys}
    rest = {k: v for k, v in options.items() if k not in match_keys}
    return {"name": name, "match": match, "upstream": upstream_name, **rest}


def gateway_config(
    upstreams: dict[str, dict[str, Any]],
    routes: list[dict[str, Any]],
    **server: Any,
) -> dict[str, Any]:
    """A whole config with access logs off (they would flood the captured output)."""
    return {
        "server": server,
        "upstreams": upstreams,
        "routes": routes,
        "observability": {"access_log": False, "log_level": "warning"},
    }


def children(pid: int) -> list[int]:
    """Direct children of a process (the supervisor's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/<pid>/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for {pid}")
