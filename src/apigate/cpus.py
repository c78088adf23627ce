"""How many CPUs this process may use: what ``server.workers: auto`` starts one worker per.

``os.cpu_count()`` counts the host's CPUs. In a container or under ``taskset`` the process may
use fewer: the CPU affinity mask bounds it, and a cgroup CPU quota (Kubernetes
``resources.limits.cpu``, ``docker run --cpus``) bounds it to ``ceil(quota / period)``. More
workers than that only take turns on the same CPU time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may use, at least 1 (``root`` is ``/`` but in tests)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _cgroup_quota(root: Path) -> int | None:
    """The tightest ``ceil(quota / period)`` on this process's cgroup and its ancestors (v2,
    else v1), None if none is limited."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.strip("/")
    cgroup = root / "sys/fs/cgroup"
    quotas: list[int] = []
    if "" in paths:  # v2: "max 100000" or "150000 100000"
        for directory in _up_from(cgroup, paths[""]):
            fields = _read(directory / "cpu.max").split()
            if len(fields) == 2 and (quota := _ceil_ratio(fields[0], fields[1])) is not None:
                quotas.append(quota)
    if not quotas and "cpu" in paths:  # v1: cpu.cfs_quota_us is -1 when unlimited
        for base in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
            for directory in _up_from(base, paths["cpu"]):
                period = _read(directory / "cpu.cfs_period_us")
                quota = _ceil_ratio(_read(directory / "cpu.cfs_quota_us"), period)
                if quota is not None:
                    quotas.append(quota)
    return min(quotas, default=None)


def _up_from(base: Path, path: str) -> list[Path]:
    """``base/a/b``, ``base/a``, ``base``: a cgroup and its ancestors, as far as mounted."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _ceil_ratio(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return math.ceil(q / p) if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
