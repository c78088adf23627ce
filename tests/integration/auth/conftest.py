"""A real redis-server per module on a free loopback port (never 6379), in a temp dir."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` is its redis:// URL."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):  # bounded: about 5 s
            if _answers_ping(self.port):
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start a private redis-server (for tests that stop it); stopped after the test."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        started.append(RedisServer(tmp_path))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def consumer_cluster() -> Iterator[Any]:
    """A 6-node Redis Cluster from the shared test support, for this module."""
    from tests.support.redis_servers import start_cluster

    with start_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def consumer_sentinel() -> Iterator[Any]:
    """Master, replica and three sentinels from the shared test support, for this module."""
    from tests.support.redis_servers import start_sentinel

    with start_sentinel() as setup:
        yield setup
