"""A real HAProxy in front of gateway instances, for integration tests.

The config mirrors a production front: health checks of ``GET /readyz`` on each gateway's
admin port every 200 ms (one failure takes a server out, one success puts it back), retries
on connection failures and empty responses, redispatch to another server, and
``X-Forwarded-For`` added so the gateways (which trust loopback) see the client.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.gateway import free_port


@dataclass(frozen=True, slots=True)
class Backend:
    """One gateway instance as HAProxy sees it: data port and admin (health) port."""

    name: str
    port: int
    admin_port: int


def haproxy_available() -> bool:
    return shutil.which("haproxy") is not None


def render_config(port: int, backends: Sequence[Backend], socket_path: Path) -> str:
    """The haproxy.cfg text for ``backends`` behind a frontend on ``port``."""
    servers = "\n".join(
        f"    server {b.name} 127.0.0.1:{b.port} check port {b.admin_port}" for b in backends
    )
    return f"""\
global
    nbthread 1
    maxconn 2000
    stats socket {socket_path} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout check 1s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
    option forwardfor

frontend gateway
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
{servers}
"""


class HAProxy:
    """One ``haproxy -db`` process; ``server_status`` reads its runtime API."""

    def __init__(self, backends: Sequence[Backend], workdir: Path) -> None:
        self.port = free_port()
        self.backends = list(backends)
        self.workdir = workdir
        self.socket_path = workdir / "haproxy.sock"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start HAProxy and wait until every backend is UP."""
        self.config_path.write_text(render_config(self.port, self.backends, self.socket_path))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["haproxy", "-f", str(self.config_path), "-db"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        for backend in self.backends:
            self.wait_status(backend.name, "UP", timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def command(self, line: str) -> str:
        """Send one runtime API command over the stats socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_status(self) -> dict[str, str]:
        """``{"g0": "UP", "g1": "DOWN", ...}`` for the gateways backend."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        name_at, server_at, status_at = (header.index(c) for c in ("pxname", "svname", "status"))
        out: dict[str, str] = {}
        for line in lines[1:]:
            fields = line.split(",")
            if (
                len(fields) > status_at
                and fields[name_at] == "gateways"
                and fields[server_at] not in ("BACKEND", "FRONTEND")
            ):
                out[fields[server_at]] = fields[status_at]
        return out

    def wait_status(self, server: str, status: str, timeout_s: float = 10.0) -> None:
        """Block until HAProxy reports ``server`` in ``status`` (e.g. "UP"); bounded."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.output()}")
            with contextlib.suppress(OSError):
                seen = self.server_status().get(server)
                if seen is not None and seen.startswith(status):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"haproxy server {server} is {seen}, not {status}:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_haproxy(backends: Sequence[Backend], workdir: Path) -> Iterator[HAProxy]:
    """HAProxy in front of ``backends``, every backend UP, stopped on exit."""
    proxy = HAProxy(backends, workdir)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
