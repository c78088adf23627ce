"""apigate with a Redis-backed limit on every request vs the same apigate without limits.

Both gateways run one worker on the same nginx upstream; the limited one checks a policy so
high that nothing is rejected, on its own redis-server. Rounds alternate between the two under
the same wrk (which of the two goes first alternates too). Prints requests/s, the ratio (goal
>= 0.90), each worker's CPU per request (steadier than throughput on a shared machine) and how
busy it was (near 100%: the gateway, not its neighbours, set the pace), Redis
round trips (EVALSHA) and all Redis commands per request from ``INFO commandstats``, and the
gateway's decisions by outcome from ``/metrics`` (``failure_open`` means Redis did not answer
within ``storage.timeout_ms`` and the request went through undecided), for
``sliding_window`` and ``fixed_window``. Run: ``python bench/limits_overhead.py``.

Every process may run on every CPU. ``--pin`` (two CPUs or more) puts each gateway's worker on a
CPU of its own and wrk, nginx and Redis on the others, so Redis cannot take CPU time from the
limited worker; on 2 cores it then shares one CPU with wrk and nginx, and answers late when
that CPU is full, which leaves the limited worker waiting (its "busy" share drops).

``--together`` measures the two gateways at the same time instead, each under its own wrk, in
``--rounds`` rounds: a machine whose speed drifts from one second to the next (a shared VM)
then drifts for both alike. Both workers want a whole CPU, so the kernel shares the CPUs
between them and their throughput ratio follows their CPU cost per request. It is not the
same question as the alternating rounds: Redis's own CPU time is taken from both gateways
here, while in alternating rounds only the limited one runs beside Redis (as it would not in
production, where Redis has a machine of its own).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    admin_port,
    apigate,
    decision_counts,
    free_port,
    median,
    nginx,
    nginx_upstream_block,
    pin_process,
    python_line,
    redis_commandstats,
    redis_cpu_s,
    redis_server,
    split_cpus,
    stats_delta,
    wait_port,
    worker_cpu_s,
    worker_pids,
    wrk_run,
)
from common import workdir as make_workdir

GOAL = 0.90


def gateway_config(upstream_port: int, redis_port: int | None, algorithm: str,
                   headers: str = "ietf", limits: int = 1) -> dict[str, Any]:
    """One catch-all route; with ``redis_port``, ``limits`` never-reached per-client-IP limits
    on it (1,000,000,000 per hour, then per 59, 58, ... minutes), answered with ``headers``
    (``rate_limit_headers``: ietf, the default, legacy, both, none)."""
    config: dict[str, Any] = {
        "upstreams": {"bench": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [{"name": "bench", "match": {"path_prefix": "/"}, "upstream": "bench"}],
        "observability": {"access_log": False, "metrics": True},
    }
    if redis_port is not None:
        config["storage"] = {"url": f"redis://127.0.0.1:{redis_port}/0"}
        names = ["high", *(f"high-{n}" for n in range(2, limits + 1))]
        config["rate_limits"] = {
            name: {"limit": 1_000_000_000, "window": f"{60 - index}m", "algorithm": algorithm,
                   "key": "client_ip"}
            for index, name in enumerate(names)
        }
        config["routes"][0]["rate_limits"] = names
        config["rate_limit_headers"] = headers
    return config


def limit_count(text: str) -> int:
    """``--limits``: 1 to 60 (the windows run from 60 minutes down, one minute apart)."""
    count = int(text)
    if not 1 <= count <= 60:
        raise argparse.ArgumentTypeError(f"must be 1 to 60, not {count}")
    return count


def measured_run(args: argparse.Namespace, port: int) -> dict[str, float]:
    """wrk on one gateway; adds ``cpu_us``, its worker's CPU microseconds per request, and
    ``busy``, the share of the run its worker was on a CPU (near 1: the gateway was the
    bottleneck, not wrk, nginx or Redis)."""
    cpu, started = worker_cpu_s(port), time.monotonic()
    result = wrk_run(f"http://127.0.0.1:{port}/bench", connections=args.connections,
                     seconds=args.seconds)
    used = worker_cpu_s(port) - cpu
    result["cpu_us"] = used / result["requests"] * 1e6
    result["busy"] = used / (time.monotonic() - started)
    return result


def limited_run(args: argparse.Namespace, port: int, admin: int,
                redis: int) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """wrk on the limited gateway: its result, Redis calls and apigate decisions during it."""
    stats, decisions = redis_commandstats(redis), decision_counts(admin)
    redis_cpu = redis_cpu_s(redis)
    result = measured_run(args, port)
    result["redis_us"] = (redis_cpu_s(redis) - redis_cpu) / result["requests"] * 1e6
    delta = stats_delta(stats, redis_commandstats(redis))
    time.sleep(1.5)  # workers flush metrics once a second
    after = decision_counts(admin)
    return result, delta, {k: v - decisions.get(k, 0.0) for k, v in after.items()}


def together(args: argparse.Namespace, plain: int, limited: int, admin: int) -> float:
    """Both gateways under load at once for ``args.rounds``; print rounds; median ratio."""
    ratios, cpu_ratios = [], []
    for round_no in range(args.rounds):
        decisions = decision_counts(admin)
        results: dict[int, dict[str, float]] = {}

        def run_on(port: int, results: dict[int, dict[str, float]] = results) -> None:
            results[port] = measured_run(args, port)

        runs = [threading.Thread(target=run_on, args=(port,)) for port in (plain, limited)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        base, lim = results[plain], results[limited]
        ratios.append(lim["rps"] / base["rps"])
        cpu_ratios.append(base["cpu_us"] / lim["cpu_us"])
        time.sleep(1.5)  # workers flush metrics once a second
        decided = {k: v - decisions.get(k, 0.0) for k, v in decision_counts(admin).items()}
        print(f"  together {round_no + 1}: no limits {base['rps']:,.0f} req/s | Redis limit "
              f"{lim['rps']:,.0f} req/s (non-2xx {lim['non2xx']:.0f}, errors "
              f"{lim['errors']:.0f}) | ratio {ratios[-1]:.2f} | worker CPU per request "
              f"{base['cpu_us']:.1f} / {lim['cpu_us']:.1f} us (ratio {cpu_ratios[-1]:.2f}) | "
              f"busy {base['busy']:.0%} / {lim['busy']:.0%} | decisions: "
              f"{', '.join(f'{k} {v:.0f}' for k, v in decided.items() if v)}")
    print(f"  together: limited / unlimited median {median(ratios):.2f} (goal >= {GOAL}); by "
          f"worker CPU per request {median(cpu_ratios):.2f}")
    return median(ratios)


def compare(args: argparse.Namespace, work: Path, upstream: int, redis: int,
            algorithm: str, *, split: tuple[set[int], set[int]] | None) -> float:
    """Alternate plain and limited gateways for ``args.rounds``; print rounds; median ratio."""
    with apigate(gateway_config(upstream, None, algorithm), workdir=work) as plain, apigate(
        gateway_config(upstream, redis, algorithm, args.headers, args.limits), workdir=work
    ) as limited:
        admin = admin_port(limited, workdir=work)
        if split is not None:  # each gateway's worker on the CPU kept for it
            for port in (plain, limited):
                for pid in worker_pids(port):
                    pin_process(pid, split[0])
        for port in (plain, limited):  # warm up pools, caches and the Lua script
            wrk_run(f"http://127.0.0.1:{port}/", connections=8, seconds=1)
        if args.together:
            return together(args, plain, limited, admin)
        ratios, cpu_ratios, evalsha, commands = [], [], [], []
        for round_no in range(args.rounds):
            # Alternate which goes first: a neighbour's burst then hurts each side as often.
            if round_no % 2:
                lim, delta, decisions = limited_run(args, limited, admin, redis)
                base = measured_run(args, plain)
            else:
                base = measured_run(args, plain)
                lim, delta, decisions = limited_run(args, limited, admin, redis)
            ratios.append(lim["rps"] / base["rps"])
            cpu_ratios.append(base["cpu_us"] / lim["cpu_us"])
            evalsha.append(delta.get("evalsha", 0) / lim["requests"])
            commands.append(sum(delta.values()) / lim["requests"])
            print(f"  round {round_no + 1}: no limits {base['rps']:,.0f} req/s | "
                  f"Redis limit {lim['rps']:,.0f} req/s (non-2xx {lim['non2xx']:.0f}, "
                  f"errors {lim['errors']:.0f}) | ratio {ratios[-1]:.2f}\n"
                  f"    worker CPU per request: no limits {base['cpu_us']:.1f} us, Redis limit "
                  f"{lim['cpu_us']:.1f} us (ratio {cpu_ratios[-1]:.2f}), Redis "
                  f"{lim['redis_us']:.1f} us | worker busy {base['busy']:.0%} / "
                  f"{lim['busy']:.0%}\n"
                  f"    decisions: {', '.join(f'{k} {v:.0f}' for k, v in decisions.items() if v)}"
                  f" | EVALSHA/request {evalsha[-1]:.3f}, Redis commands/request "
                  f"{commands[-1]:.3f} ({', '.join(f'{k} {v}' for k, v in delta.items() if v)})")
        print(f"{algorithm}: limited / unlimited median {median(ratios):.2f} (goal >= {GOAL}); "
              f"by worker CPU per request {median(cpu_ratios):.2f} | "
              f"Redis round trips per decision (EVALSHA/request) {median(evalsha):.3f} | "
              f"Redis commands per request (counting those run inside the script) "
              f"{median(commands):.3f}")
        return median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--algorithms", nargs="+", default=["sliding_window", "fixed_window"])
    parser.add_argument("--headers", choices=("ietf", "legacy", "both", "none"), default="ietf",
                        help="the limited gateway's rate_limit_headers")
    parser.add_argument("--limits", type=limit_count, default=1,
                        help="how many limits each request of the limited gateway carries")
    parser.add_argument("--pin", action="store_true",
                        help="each gateway worker on a CPU of its own (see the module docstring)")
    parser.add_argument("--together", action="store_true",
                        help="both gateways under load at once (see the module docstring)")
    args = parser.parse_args()
    print(python_line())
    split = split_cpus() if args.pin else None
    if split is not None:
        # Set before nginx and Redis start, so they and every wrk run inherit it.
        os.sched_setaffinity(0, split[1])
        print(f"pinned: the gateway worker on CPU {sorted(split[0])}; wrk, nginx and Redis on "
              f"CPUs {sorted(split[1])}")
    else:
        print("not pinned: the gateway worker shares every CPU with wrk, nginx and Redis")
    with make_workdir() as tmp:
        work = Path(tmp)
        upstream = free_port()
        with nginx(nginx_upstream_block(upstream), workdir=work), redis_server(
            workdir=work
        ) as redis:
            wait_port(upstream)
            for algorithm in args.algorithms:
                print(f"{algorithm} ({args.connections} connections, {args.seconds} s, "
                      f"{args.rounds} rounds, rate_limit_headers {args.headers}, "
                      f"{args.limits} limit(s) per request):")
                compare(args, work, upstream, redis, algorithm, split=split)


if __name__ == "__main__":
    main()
