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
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
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
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1):  # noqa: S310
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


def wrk(url: str, *, connections: int = 64, seconds: int = 5, threads: int = 1) -> dict[str, float]:
    """Run wrk; return requests/s, non-2xx count and latency percentiles (ms)."""
    out = subprocess.run(
        [require("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = float(bad.group(1)) if bad else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if match:
            value, unit = float(match.group(1)), match.group(2)
            result[f"p{pct}"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return result


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="apigate-bench-")
