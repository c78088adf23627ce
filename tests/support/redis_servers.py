"""Real Redis servers for integration tests: single node, 6-node Cluster, Sentinel.

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
        """Keys on this node whose PTTL is -1 (no expiry)."""
        client = self.client()
        try:
            found = [k for k in client.scan_iter(count=1000) if client.pttl(k) == -1]
        finally:
            client.close()
        return [k.decode() for k in found]


class _Setup:
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
class RedisServer(_Setup):
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



@dataclass
class RedisCluster(_Setup):
    """Six nodes: 3 masters + 3 replicas, every slot covered, ``cluster_state:ok``."""

    nodes: list[RedisNode]
    workdir: Path

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes[:3])

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisNode]:
        """The running nodes that currently serve slots as masters."""
        result = []
        for node in self.nodes:
            if node.alive and node.cmd("ROLE")[0] == b"master":
                result.append(node)
        return result

    def master_for(self, key: str) -> RedisNode:
        """The node that serves ``key``'s slot now (asked of any live node)."""
        live = next(n for n in self.nodes if n.alive)
        slot = live.cmd("CLUSTER", "KEYSLOT", key)
        for start, end, master, *_ in live.cmd("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return self.node(int(master[1]))
        raise LookupError(slot)

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and sees all slots with masters."""

        def ok() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                info = node.cmd("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
            return len(self.masters()) == 3

        wait_until(ok, timeout, "cluster_state:ok on every node")


@contextlib.contextmanager
def start_cluster(node_timeout_ms: int = 1000) -> Iterator[RedisCluster]:
    """A 6-node Redis Cluster built with ``redis-cli --cluster create --cluster-replicas 1``."""
    workdir = Path(tempfile.mkdtemp(prefix="apigate-cluster-"))
    nodes: list[RedisNode] = []
    cluster = RedisCluster(nodes=nodes, workdir=workdir)
    try:
        for i in range(6):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(node_timeout_ms),
                     "--cluster-replica-validity-factor", "0"]
            node = RedisNode(free_port(bus=True), workdir / f"node{i}", extra)
            nodes.append(node)
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )
        cluster.wait_ok()
        yield cluster
    finally:
        cluster.close()


_SENTINEL_CONF = """port {port}
bind 127.0.0.1
protected-mode no
sentinel monitor mymaster 127.0.0.1 {master} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 3000
sentinel parallel-syncs mymaster 1
"""


@dataclass
class RedisSentinel(_Setup):
    """A master, one replica and three sentinels watching them as ``mymaster``."""

    nodes: list[RedisNode]
    workdir: Path

    @property
    def data_nodes(self) -> list[RedisNode]:
        return self.nodes[:2]

    @property
    def sentinels(self) -> list[RedisNode]:
        return self.nodes[2:]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"{HOST}:{n.port}" for n in self.sentinels) + (
            "/mymaster"
        )

    def master_port(self) -> int:
        """The master port the first live sentinel reports."""
        sentinel = next(n for n in self.sentinels if n.alive)
        _, port = sentinel.cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return int(port)

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the replica is in sync and every sentinel knows it and the other sentinels."""
        master = self.master_port()
        replica = next(n for n in self.data_nodes if n.port != master)

        def ready() -> bool:
            info = replica.cmd("INFO", "replication")
            if info.get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                state = sentinel.cmd("SENTINEL", "MASTER", "mymaster")  # parsed to a dict
                if int(state[b"num-slaves"]) < 1 or int(state[b"num-other-sentinels"]) < 2:
                    return False
            return True

        wait_until(ready, timeout, "sentinels to see the replica and each other")

    def failover(self, timeout: float = 20) -> int:
        """``SENTINEL FAILOVER mymaster``; the new master's port once it is a master.

        Sentinel demotes the old master only at its next INFO poll (up to ~10 s later).
        """
        old = self.master_port()
        self.sentinels[0].cmd("SENTINEL", "FAILOVER", "mymaster")

        def switched() -> bool:
            port = self.master_port()
            return port != old and self.node(port).cmd("ROLE")[0] == b"master"

        wait_until(switched, timeout, "sentinel failover")
        return self.master_port()

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)


@contextlib.contextmanager
def start_sentinel() -> Iterator[RedisSentinel]:
    """Master + replica + 3 sentinels (down-after 1 s, failover-timeout 3 s)."""
    workdir = Path(tempfile.mkdtemp(prefix="apigate-sentinel-"))
    master = RedisNode(free_port(), workdir / "master")
    replica = RedisNode(free_port(), workdir / "replica", ["--replicaof", HOST, "0"])
    replica.extra[-1] = str(master.port)
    nodes = [master, replica]
    for i in range(3):
        port = free_port()
        conf = _SENTINEL_CONF.format(port=port, master=master.port)
        nodes.append(RedisNode(port, workdir / f"sentinel{i}", sentinel_conf=conf))
    setup = RedisSentinel(nodes=nodes, workdir=workdir)
    try:
        for node in nodes:
            node.start()
        setup.wait_ready()
        yield setup
    finally:
        setup.close()
