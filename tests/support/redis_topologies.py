"""Redis Cluster (3 masters + 3 replicas) and Sentinel (master, replica, 3 sentinels) setups."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.redis_nodes import HOST, RedisNode, Setup, free_port, wait_until


@dataclass
class RedisCluster(Setup):
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
class RedisSentinel(Setup):
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
