"""apigate's Redis limiter vs the ``limits`` library: decisions per second on one Redis.

Starts its own redis-server on a free loopback port. For each algorithm pair, 64 concurrent
tasks make a fixed number of decisions over 10,000 distinct keys, first with apigate's
``RedisStorage.decide`` (one spec per decision) and then with ``limits`` (``async+redis://``,
redis-py implementation), alternating for a few rounds on the same event loop (uvloop).
Prints the median rates, the ratio (goal: apigate >= 8x limits), and Redis round trips per
decision: EVALSHA calls and all commands from ``INFO commandstats``, and apigate's socket
writes from its client counter; and CPU time per decision of the client process and of
redis-server (``INFO cpu``), which a busy machine distorts less than the rates.

Run: ``python bench/limiter_vs_limits.py [--decisions N] [--rounds R]``.
Needs ``pip install 'limits[async-redis]'`` and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import uvloop
from limits import RateLimitItemPerHour
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec
from apigate.ratelimit.storage.redis import RedisStorage
from common import python_line

TASKS = 64
KEYS = 10_000
LIMIT = 1_000_000_000  # never reached: every decision does the full work of an allow
PAIRS = [  # (apigate algorithm, limits strategy)
    (Algorithm.FIXED_WINDOW, FixedWindowRateLimiter),
    (Algorithm.SLIDING_WINDOW, SlidingWindowCounterRateLimiter),
    (Algorithm.SLIDING_LOG, MovingWindowRateLimiter),
]
GOAL = 8.0
GOAL_PAIR = Algorithm.SLIDING_WINDOW  # the goal names limits' sliding window counter


@contextmanager
def redis_server() -> Iterator[int]:
    """A throw-away redis-server on a free port (never 6379)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def drive(decide: Callable[[int], Awaitable[Any]], decisions: int) -> float:
    """Decisions per second of ``decide(i)`` from TASKS concurrent tasks."""
    per_task = decisions // TASKS

    async def task(t: int) -> None:
        for j in range(per_task):
            await decide((t * per_task + j) % KEYS)

    start = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(TASKS)))
    return per_task * TASKS / (time.perf_counter() - start)


def commandstats(port: int) -> dict[str, int]:
    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_cpu_s(port: int) -> float:
    """CPU seconds the redis-server has used (user + sys, from INFO cpu)."""
    client = redis.Redis(port=port)
    try:
        cpu = client.info("cpu")
    finally:
        client.close()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def reset_stats(port: int) -> None:
    client = redis.Redis(port=port)
    try:
        client.config_resetstat()
    finally:
        client.close()


async def one_pair(port: int, algorithm: Algorithm, strategy: Any, args: Any) -> dict[str, Any]:
    """Median rates of apigate and limits for one algorithm, with round trips per decision."""
    store = RedisStorage.from_config(
        StorageConfig(url=f"redis://127.0.0.1:{port}/0", timeout_ms=5000)
    )
    specs = [LimitSpec(f"apigate:{{k={i}}}:bench", algorithm, LIMIT, 3_600_000)
             for i in range(KEYS)]
    limits_storage = storage_from_string(f"async+redis://127.0.0.1:{port}",
                                         implementation="redispy")
    limiter = strategy(limits_storage)
    item = RateLimitItemPerHour(LIMIT)

    async def ours(i: int) -> Any:
        return await store.decide((specs[i],))

    async def theirs(i: int) -> Any:
        return await limiter.hit(item, strategy.__name__, str(i))

    await drive(ours, TASKS * 50)  # warm up: connections, scripts
    await drive(theirs, TASKS * 50)
    rates: dict[str, list[float]] = {"apigate": [], "limits": []}
    trips: dict[str, list[float]] = {"apigate": [], "limits": [], "apigate_all": [],
                                     "limits_all": [], "writes": []}
    cpu: dict[str, list[float]] = {"apigate_py": [], "limits_py": [], "apigate_redis": [],
                                   "limits_redis": []}
    for _ in range(args.rounds):
        for name, fn, n in (("apigate", ours, args.decisions),
                            ("limits", theirs, args.limits_decisions)):
            reset_stats(port)
            writes = store.client.writes
            py0, redis0 = time.process_time(), redis_cpu_s(port)
            rates[name].append(await drive(fn, n))
            done = n // TASKS * TASKS
            cpu[f"{name}_py"].append((time.process_time() - py0) / done * 1e6)
            cpu[f"{name}_redis"].append((redis_cpu_s(port) - redis0) / done * 1e6)
            stats = commandstats(port)
            trips[name].append(stats.get("evalsha", 0) / done)
            trips[f"{name}_all"].append((sum(stats.values()) - stats.get("config", 0)) / done)
            if name == "apigate":
                trips["writes"].append((store.client.writes - writes) / done)
    await store.aclose()
    return {"algorithm": algorithm.name.lower(), "strategy": strategy.__name__,
            **{k: statistics.median(v) for k, v in rates.items()},
            **{f"trips_{k}": statistics.median(v) for k, v in trips.items()},
            **{f"cpu_{k}": statistics.median(v) for k, v in cpu.items()}}


async def main(args: argparse.Namespace) -> None:
    with redis_server() as port:
        rows = [await one_pair(port, alg, strat, args) for alg, strat in PAIRS]
    print(python_line())
    print(f"{TASKS} tasks, {KEYS} keys, {args.decisions} apigate / {args.limits_decisions} "
          f"limits decisions per round, median of {args.rounds} rounds, uvloop, one Redis\n")
    print(f"{'apigate algorithm':<16} {'limits strategy':<32} {'apigate/s':>10} "
          f"{'limits/s':>9} {'ratio':>6}  evalsha/dec (apigate, limits)  cmds/dec  writes/dec")
    for r in rows:
        print(f"{r['algorithm']:<16} {r['strategy']:<32} {r['apigate']:>10,.0f} "
              f"{r['limits']:>9,.0f} {r['apigate'] / r['limits']:>5.1f}x  "
              f"{r['trips_apigate']:>6.2f} {r['trips_limits']:>6.2f}               "
              f"{r['trips_apigate_all']:.2f} {r['trips_limits_all']:.2f}  "
              f"{r['trips_writes']:.3f}")
    print("\nCPU per decision, microseconds (less sensitive to a busy machine than rates):")
    print(f"{'apigate algorithm':<16} {'apigate client':>15} {'apigate redis':>14} "
          f"{'limits client':>14} {'limits redis':>13} {'total ratio':>12}")
    for r in rows:
        ours = r["cpu_apigate_py"] + r["cpu_apigate_redis"]
        theirs = r["cpu_limits_py"] + r["cpu_limits_redis"]
        print(f"{r['algorithm']:<16} {r['cpu_apigate_py']:>15.1f} {r['cpu_apigate_redis']:>14.1f} "
              f"{r['cpu_limits_py']:>14.1f} {r['cpu_limits_redis']:>13.1f} "
              f"{theirs / ours:>11.1f}x")
    goal = next(r for r in rows if r["algorithm"] == GOAL_PAIR.name.lower())
    ratio = goal["apigate"] / goal["limits"]
    print(f"\nsliding window counter (the goal's pair): {ratio:.1f}x (goal >= {GOAL:.0f}x): "
          f"{'met' if ratio >= GOAL else 'NOT met'}; all pairs: "
          + ", ".join(f"{r['algorithm']} {r['apigate'] / r['limits']:.1f}x" for r in rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--limits-decisions", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
