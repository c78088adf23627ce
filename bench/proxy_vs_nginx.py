"""apigate vs nginx ``proxy_pass``: one worker each, same nginx upstream, same wrk.

Prints requests/s for both and the ratio (goal >= 0.35), then added latency vs going straight
to the upstream at a light load (4 connections). Run: ``python bench/proxy_vs_nginx.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    apigate,
    free_port,
    nginx,
    nginx_proxy_block,
    nginx_upstream_block,
    python_line,
    wait_port,
    wrk,
)
from common import workdir as make_workdir


def gateway_config(upstream_port: int) -> dict[str, object]:
    """Routing, header handling, request ids and metrics on; access log off, as for nginx."""
    return {
        "upstreams": {"bench": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [
            {"name": "other", "match": {"path_prefix": "/other"}, "upstream": "bench"},
            {"name": "bench", "match": {"path_prefix": "/"}, "upstream": "bench"},
        ],
        "observability": {"access_log": False, "metrics": True},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(python_line())
    with make_workdir() as tmp:
        work = Path(tmp)
        upstream, proxy = free_port(), free_port()
        with nginx(nginx_upstream_block(upstream), workdir=work), nginx(
            nginx_proxy_block(proxy, upstream), workdir=work
        ), apigate(gateway_config(upstream), workdir=work) as gate:
            wait_port(upstream)
            wait_port(proxy)
            for port in (upstream, proxy, gate):  # warm up pools and caches
                wrk(f"http://127.0.0.1:{port}/", connections=8, seconds=1)
            ratios = []
            for round_no in range(args.rounds):
                ng = wrk(f"http://127.0.0.1:{proxy}/bench", connections=args.connections,
                         seconds=args.seconds)
                ag = wrk(f"http://127.0.0.1:{gate}/bench", connections=args.connections,
                         seconds=args.seconds)
                ratio = ag["rps"] / ng["rps"]
                ratios.append(ratio)
                print(f"round {round_no + 1}: nginx proxy_pass {ng['rps']:,.0f} req/s | "
                      f"apigate {ag['rps']:,.0f} req/s (non-2xx {ag['non2xx']:.0f}, "
                      f"errors {ag['errors']:.0f}) | ratio {ratio:.2f}")
            print(f"apigate / nginx proxy_pass: {sum(ratios) / len(ratios):.2f} (goal >= 0.35)")
            direct = wrk(f"http://127.0.0.1:{upstream}/bench", connections=4, seconds=args.seconds)
            via = wrk(f"http://127.0.0.1:{gate}/bench", connections=4, seconds=args.seconds)
            via_nginx = wrk(f"http://127.0.0.1:{proxy}/bench", connections=4, seconds=args.seconds)
            print(f"latency at 4 connections (light load): direct p50 {direct['p50']:.3f} ms "
                  f"p99 {direct['p99']:.3f} ms | via apigate p50 {via['p50']:.3f} ms "
                  f"p99 {via['p99']:.3f} ms | via nginx p50 {via_nginx['p50']:.3f} ms "
                  f"p99 {via_nginx['p99']:.3f} ms")
            print(f"added by apigate: p50 +{via['p50'] - direct['p50']:.3f} ms, "
                  f"p99 +{via['p99'] - direct['p99']:.3f} ms "
                  f"(at {via['rps']:,.0f} req/s, {via['rps'] / ag['rps']:.0%} of apigate's max)")


if __name__ == "__main__":
    main()
