"""Shared pieces of the benchmarks: free ports, nginx and apigate processes, wrk parsing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

BODY = "x" * 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open")


def require(tool: str) -> str:
    sbin = f"/usr/sbin/{tool}"
    path = shutil.which(tool) or (sbin if os.path.exists(sbin) else None)
    if path is None:
        sys.exit(f"{tool} is not installed (make deps installs it)")
    return path


@contextmanager
def nginx(server_block: str, *, workdir: Path) -> Iterator[None]:
    """nginx with one worker, no access log, running ``server_block`` in the foreground."""
    conf = workdir / f"nginx-{time.monotonic_ns()}.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx-{conf.stem}.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 1000000;
  {server_block}
}}
"""
    )
    process = subprocess.Popen([require("nginx"), "-c", str(conf), "-p", str(workdir)])
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


def nginx_upstream_block(port: int) -> str:
    return (
        f"server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; "
        f"return 200 '{BODY}'; }} }}"
    )


def nginx_proxy_block(port: int, upstream_port: int) -> str:
    return (
        f"upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n"
        f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; "
        "proxy_http_version 1.1; proxy_set_header Connection ''; "
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; } }"
    )


@contextmanager
def apigate(config: dict[str, Any], *, workdir: Path) -> Iterator[int]:
    """``apigate run`` with this config (listen/admin filled in); yields the data port."""
    port, admin = free_port(), free_port()
    server = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}",
              "workers": 1, "drain_delay_s": 0, **config.get("server", {})}
    path = workdir / f"apigate-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "server": server}))
    script = shutil.which("apigate", path=os.path.dirname(sys.executable)) or "apigate"
    log = (workdir / f"apigate-{port}.log").open("wb")
    process = subprocess.Popen([script, "run", "--config", str(path)], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((workdir / f"apigate-{port}.log").read_text()) from None
                time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()


def python_line() -> str:
    """The interpreter the benchmark (and the apigate it starts) runs on, for the output."""
    return f"Python {sys.version.split()[0]} ({sys.executable})"


def worker_pids(data_port: int) -> list[int]:
    """The worker processes of the apigate on ``data_port`` (Linux: reads /proc)."""
    found = subprocess.run(["pgrep", "-f", f"apigate-{data_port}.yaml"], capture_output=True,
                           text=True, check=False).stdout.split()
    return [int(child) for pid in found
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def worker_cpu_s(data_port: int) -> float:
    """CPU seconds (user + system) the workers of the apigate on ``data_port`` have used.

    Throughput on a shared 2-core machine swings with the neighbours; CPU per request of
    the one worker is the steadier figure (Linux: reads /proc).
    """
    return sum(process_cpu_s(pid) for pid in worker_pids(data_port))


def split_cpus() -> tuple[set[int], set[int]] | None:
    """One CPU for the gateway under test and the others for everything else, or None when
    this process may run on fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Keep every thread of process ``pid`` on ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, *, connections: int = 64, seconds: int = 5, threads: int = 1) -> dict[str, float]:
    """Run wrk; return requests/s, non-2xx count and latency percentiles (ms)."""
    return wrk_run(url, connections=connections, seconds=seconds, threads=threads)


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="apigate-bench-")


def wrk_run(url: str, *, connections: int = 64, seconds: int = 5, threads: int = 1,
            headers: tuple[str, ...] = (), script: Path | None = None,
            timeout_s: int = 2) -> dict[str, float]:
    """Like :func:`wrk`, with ``-H`` headers and a ``-s`` Lua script; adds ``requests`` (total).
    A request unanswered after ``timeout_s`` counts as a timeout error."""
    command = [require("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
               f"--timeout={timeout_s}s"]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if match is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    result = {"rps": float(match.group(1)), "requests": float(total.group(1))}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = float(bad.group(1)) if bad else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    for pct in ("50", "99"):
        lat = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if lat:
            value, unit = float(lat.group(1)), lat.group(2)
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
            result[f"p{pct}"] = value * scale
    return result


@contextmanager
def redis_server(*, workdir: Path) -> Iterator[int]:
    """A throw-away redis-server on a free loopback port, no persistence; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [require("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def redis_commandstats(port: int) -> dict[str, int]:
    """``INFO commandstats`` as ``{"evalsha": calls, ...}`` (``info`` itself included)."""
    out = subprocess.run(
        [require("redis-cli"), "-p", str(port), "INFO", "commandstats"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\S+?):calls=(\d+)", out)}


def redis_cpu_s(port: int) -> float:
    """CPU seconds (user + system) redis-server on ``port`` has used, from ``INFO cpu``."""
    out = subprocess.run([require("redis-cli"), "-p", str(port), "INFO", "cpu"],
                         capture_output=True, text=True, check=True).stdout
    return sum(float(m.group(1)) for m in re.finditer(r"^used_cpu_(?:sys|user):([\d.]+)", out,
                                                      re.MULTILINE))


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two :func:`redis_commandstats` snapshots (``info`` dropped)."""
    names = (set(before) | set(after)) - {"info"}
    return {name: after.get(name, 0) - before.get(name, 0) for name in sorted(names)}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def admin_port(data_port: int, *, workdir: Path) -> int:
    """The admin port of the :func:`apigate` instance serving ``data_port`` (from its config)."""
    config = yaml.safe_load((workdir / f"apigate-{data_port}.yaml").read_text())
    return int(str(config["server"]["admin_listen"]).rsplit(":", 1)[1])


def decision_counts(admin: int) -> dict[str, float]:
    """``apigate_ratelimit_decisions_total`` from ``/metrics``, summed by decision.

    Workers flush their metrics about once a second: wait that long after the load stops.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    pattern = r'^apigate_ratelimit_decisions_total\{[^}]*decision="([a-z_]+)"[^}]*\} (\S+)$'
    for match in re.finditer(pattern, text, re.MULTILINE):
        counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts
