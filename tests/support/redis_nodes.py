"""Single redis-server processes for integration tests (see ``redis_servers``).

Every server listens on a free loopback port (never 6379) and lives in a temporary directory
that is removed on teardown. Waits are bounded; a server that does not come up raises.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HOST = "127.0.0.1"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, bus: bool = False) -> int:
    """A free loopback port in 20000-29999 (and its cluster bus port +10000 when ``bus``)."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _port_free(port) and (not bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free port found")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` every 50 ms until it is true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process on ``port`` with its files under ``workdir``."""

    port: int
    workdir: Path
    extra: list[str] = field(default_factory=list)
    sentinel_conf: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.sentinel_conf is not None:
            conf = self.workdir / "sentinel.conf"
            if not conf.exists():
                conf.write_text(self.sentinel_conf)
            argv = ["redis-server", str(conf), "--sentinel"]
        else:
            argv = ["redis-server", "--save", "", "--appendonly", "no", *self.extra]
        argv += ["--port", str(self.port), "--bind", HOST, "--dir", str(self.workdir),
                 "--logfile", str(self.workdir / "redis.log"), "--protected-mode", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, f"redis on port {self.port}")

    def _answers(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def client(self) -> redis.Redis:
        """A synchronous client (test helper only); close it after use."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def cmd(self, *args: Any) -> Any:
        """Run one command on a connection of its own and close it."""
        client = self.client()
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a crash: no goodbye to clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill (if running) and start again on the same port with the same files."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Terminate politely, then kill; idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def keys_without_ttl(self) -> list[str]:
        """Keys on this node whose PTTL is -1 (no expiry); replicas included."""
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=2,
                             single_connection_client=True)
        try:
            if "--cluster-enabled" in self.extra:
                client.execute_command("READONLY")  # type: ignore[no-untyped-call]
            found = [k for k in client.scan_iter(count=1000) if client.pttl(k) == -1]
        finally:
            client.close()
        return [k.decode() for k in found]


class Setup:
    nodes: list[RedisNode]
    workdir: Path

    def keys_without_ttl(self) -> list[str]:
        """Keys (on every running node) whose PTTL is -1: the gateway must never leave one."""
        found: set[str] = set()
        for node in self.nodes:
            if node.alive and node.sentinel_conf is None:
                found.update(node.keys_without_ttl())
        return sorted(found)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisServer(Setup):
    """A single redis-server."""

    node: RedisNode
    workdir: Path

    def __post_init__(self) -> None:
        self.nodes = [self.node]

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.node.port}/0"

    def kill(self) -> None:
        self.node.kill()

    def restart(self) -> None:
        self.node.restart()


@contextlib.contextmanager
def start_redis(*extra: str) -> Iterator[RedisServer]:
    """A fresh single redis-server (``--save "" --appendonly no``), stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="apigate-redis-"))
    server = RedisServer(node=RedisNode(free_port(), workdir, list(extra)), workdir=workdir)
    try:
        server.node.start()
        yield server
    finally:
        server.close()


def redis_available() -> bool:
    """True when redis-server and redis-cli are on PATH."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
