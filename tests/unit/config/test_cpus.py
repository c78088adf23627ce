"""usable_cpus(): what ``workers: auto`` counts, from a fake /proc and /sys/fs/cgroup tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apigate.cpus import usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def tree(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("cgroup", "files", "quota"),
    [
        # cgroup v2: the container's own cgroup, or the namespace root, holds cpu.max
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 2),
        ("0::/\n", {"cpu.max": "100000 100000\n"}, 1),
        ("0::/\n", {"cpu.max": "50000 100000\n"}, 1),  # half a CPU still runs one worker
        # a child cgroup without a limit inside a limited one: the ancestor's quota holds
        ("0::/app\n", {"app/cpu.max": "max 100000\n", "cpu.max": "100000 100000\n"}, 1),
        # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us under the cpu controller
        ("4:cpu,cpuacct:/docker/abc\n0::/\n", {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        }, 2),
    ],
)
def test_a_cgroup_cpu_quota_caps_the_count(
    tmp_path: Path, cgroup: str, files: dict[str, str], quota: int
) -> None:
    assert usable_cpus(tree(tmp_path, cgroup, files)) == min(AFFINITY, quota)


@pytest.mark.parametrize(
    ("cgroup", "files"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}),  # v2 without a limit
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}),
        ("0::/\n", {}),  # no cpu controller files at all
    ],
)
def test_without_a_quota_the_affinity_counts(
    tmp_path: Path, cgroup: str, files: dict[str, str]
) -> None:
    assert usable_cpus(tree(tmp_path, cgroup, files)) == AFFINITY


def test_no_proc_falls_back_to_the_affinity(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path) == AFFINITY
