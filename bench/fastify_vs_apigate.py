"""apigate vs fastify (@fastify/http-proxy + @fastify/rate-limit on Redis), one process each.

Node is single-threaded, so one fastify process is compared with one apigate worker. Both
proxy to the same nginx upstream and check a Redis-backed per-client-IP limit so high that
nothing is rejected, on the same redis-server (fixed window by default: @fastify/rate-limit's
Redis store is a fixed window, INCR + PEXPIRE). Rounds alternate under the same wrk. Prints
requests/s, the ratio (goal apigate >= 2x fastify), Redis round trips per request for each, and
CPU per request of each server process and of Redis (steadier than throughput on a shared machine).
Installs bench/fastify/node_modules with ``npm ci`` when missing.
Run: ``python bench/fastify_vs_apigate.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common import (
    admin_port,
    apigate,
    decision_counts,
    free_port,
    median,
    nginx,
    nginx_upstream_block,
    process_cpu_s,
    python_line,
    redis_commandstats,
    redis_cpu_s,
    redis_server,
    require,
    stats_delta,
    wait_port,
    worker_cpu_s,
    wrk_run,
)
from common import workdir as make_workdir
from limits_overhead import gateway_config

FASTIFY_DIR = Path(__file__).resolve().parent / "fastify"
LIMIT, WINDOW_MS = 1_000_000_000, 3_600_000  # the same policy as limits_overhead: 1e9 per 1 h
GOAL = 2.0


def ensure_node_modules() -> None:
    """``npm ci`` (exact versions from package-lock.json) unless node_modules is there."""
    if (FASTIFY_DIR / "node_modules").is_dir():
        return
    print("installing bench/fastify dependencies (npm ci)...")
    subprocess.run([require("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=FASTIFY_DIR, check=True)


@contextmanager
def fastify(upstream_port: int, redis_port: int, *, workdir: Path) -> Iterator[tuple[int, int]]:
    """``node server.js`` on a free port; yields the port and the process id."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "UPSTREAM": f"http://127.0.0.1:{upstream_port}",
           "REDIS_PORT": str(redis_port), "LIMIT": str(LIMIT), "WINDOW_MS": str(WINDOW_MS),
           "NODE_ENV": "production"}
    log_path = workdir / "fastify.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([require("node"), "server.js"], cwd=FASTIFY_DIR, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_port(port, timeout=20)
            except TimeoutError:
                raise RuntimeError(log_path.read_text()) from None
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(10)


def limit_headers(port: int) -> str:
    """The rate-limit headers of one request: proof that the limit is really checked."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench", timeout=5) as response:
        return ", ".join(f"{k}: {v}" for k, v in response.headers.items()
                         if "ratelimit" in k.lower())


def run_rounds(args: argparse.Namespace, node: tuple[int, int], gate: int, redis: int,
               admin: int) -> None:
    """Alternate fastify and apigate under the same wrk; print each round and the medians."""
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    other: dict[str, float] = {}
    trips: dict[str, list[float]] = {"fastify": [], "apigate": []}
    node_port, node_pid = node
    servers: tuple[tuple[str, int, Callable[[], float]], ...] = (
        ("fastify", node_port, lambda: process_cpu_s(node_pid)),
        ("apigate", gate, lambda: worker_cpu_s(gate)),
    )
    for round_no in range(args.rounds):
        line = []
        results = {}
        decisions = decision_counts(admin)
        for name, port, server_cpu in servers:
            before = redis_commandstats(redis)
            cpu, redis_cpu = server_cpu(), redis_cpu_s(redis)
            result = wrk_run(f"http://127.0.0.1:{port}/bench", connections=args.connections,
                             seconds=args.seconds)
            result["cpu_us"] = (server_cpu() - cpu) / result["requests"] * 1e6
            result["redis_us"] = (redis_cpu_s(redis) - redis_cpu) / result["requests"] * 1e6
            delta = stats_delta(before, redis_commandstats(redis))
            trips[name].append(delta.get("evalsha", 0) / result["requests"])
            results[name] = result
            line.append(f"{name} {result['rps']:,.0f} req/s (non-2xx {result['non2xx']:.0f}, "
                        f"errors {result['errors']:.0f}, p99 {result.get('p99', 0):.2f} ms, "
                        f"EVALSHA/request {trips[name][-1]:.3f}, CPU/request "
                        f"{result['cpu_us']:.1f} us + Redis {result['redis_us']:.1f} us)")
        time.sleep(1.5)  # workers flush metrics once a second
        after = decision_counts(admin)
        for kind, count in after.items():
            if kind != "allowed" and count > decisions.get(kind, 0.0):
                other[kind] = other.get(kind, 0.0) + count - decisions.get(kind, 0.0)
        ratios.append(results["apigate"]["rps"] / results["fastify"]["rps"])
        cpu_ratios.append(results["fastify"]["cpu_us"] / results["apigate"]["cpu_us"])
        print(f"  round {round_no + 1}: {' | '.join(line)} | ratio {ratios[-1]:.2f}, "
              f"by server CPU per request {cpu_ratios[-1]:.2f}")
    print(f"apigate / fastify median {median(ratios):.2f} (goal >= {GOAL:.1f}); by server CPU "
          f"per request {median(cpu_ratios):.2f} | Redis round "
          f"trips per request: fastify {median(trips['fastify']):.3f}, "
          f"apigate {median(trips['apigate']):.3f} | apigate decisions other than 'allowed' "
          f"(failure_open: Redis too slow, the request went through undecided): "
          f"{', '.join(f'{k} {v:.0f}' for k, v in other.items()) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--algorithm", default="fixed_window",
                        help="apigate's algorithm (fastify's Redis store is a fixed window)")
    args = parser.parse_args()
    ensure_node_modules()
    print(python_line())
    with make_workdir() as tmp:
        work = Path(tmp)
        upstream = free_port()
        with nginx(nginx_upstream_block(upstream), workdir=work), redis_server(
            workdir=work
        ) as redis, fastify(upstream, redis, workdir=work) as node, apigate(
            gateway_config(upstream, redis, args.algorithm), workdir=work
        ) as gate:
            wait_port(upstream)
            print(f"fastify headers: {limit_headers(node[0])}")
            print(f"apigate headers: {limit_headers(gate)}")
            for port in (node[0], gate):  # warm up pools, the JIT and the Lua scripts
                wrk_run(f"http://127.0.0.1:{port}/", connections=8, seconds=2)
            print(f"apigate ({args.algorithm}) vs fastify ({args.connections} connections, "
                  f"{args.seconds} s, {args.rounds} rounds):")
            run_rounds(args, node, gate, redis, admin_port(gate, workdir=work))


if __name__ == "__main__":
    main()
