"""Real Redis servers for integration tests: single node, 6-node Cluster, Sentinel.

Every server listens on a free loopback port (never 6379) and lives in a temporary directory
that is removed on teardown. Waits are bounded; a server that does not come up raises.
Single nodes are in ``redis_nodes``, Cluster and Sentinel in ``redis_topologies``; import
everything from here.
"""

from __future__ import annotations

from tests.support.redis_nodes import (
    HOST,
    RedisNode,
    RedisServer,
    Setup,
    free_port,
    redis_available,
    start_redis,
    wait_until,
)
from tests.support.redis_topologies import (
    RedisCluster,
    RedisSentinel,
    start_cluster,
    start_sentinel,
)

__all__ = [
    "HOST",
    "RedisCluster",
    "RedisNode",
    "RedisSentinel",
    "RedisServer",
    "Setup",
    "free_port",
    "redis_available",
    "start_cluster",
    "start_redis",
    "start_sentinel",
    "wait_until",
]
