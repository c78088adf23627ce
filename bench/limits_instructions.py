"""What a Redis-backed limit costs in instructions: the steady figure on a noisy machine.

``limits_overhead.py`` compares throughput and CPU time, which a shared or throttled machine
moves by 10-20% between rounds. This counts the instructions the worker executes per request
instead, under valgrind's callgrind. Neighbours do not change the count; what still moves it
is how many requests share a loop iteration and a decision batch, so repeated runs of the
same code spread by about 2% (four runs of one build: 241k-249k per limited request). Only
user-space instructions are counted (the kernel's share of a syscall is not), so it measures
apigate's own code, Python and the C libraries it calls, not the machine.

One worker (``python -m apigate.worker``, the process ``apigate run`` starts) runs under
callgrind with instrumentation off; after a warm-up wrk run, instrumentation is switched on
for a counted wrk run and off again. Done for a gateway without limits and for one with the
per-client-IP limit of ``limits_overhead.py`` per algorithm, on the same nginx upstream and
redis-server. Prints instructions per request and the ratio unlimited / limited, which is the
throughput ratio a CPU-bound worker would show if every instruction cost the same.
Needs valgrind (``apt-get install valgrind``). Run: ``python bench/limits_instructions.py``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from common import (
    free_port,
    nginx,
    nginx_upstream_block,
    python_line,
    redis_server,
    require,
    wait_port,
    wrk_run,
)
from common import workdir as make_workdir
from limits_overhead import GOAL, gateway_config, limit_count


def instructions_per_request(config: dict[str, Any], args: argparse.Namespace, *,
                             work: Path, name: str) -> float:
    """Run one worker under callgrind; its instructions per request over a counted wrk run."""
    port = free_port()
    server = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}",
              "workers": 1}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "server": server}))
    out = work / f"callgrind-{name}.out"
    process = subprocess.Popen(
        [require("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}",
         "--instr-atstart=no", sys.executable, "-m", "apigate.worker", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    control = require("callgrind_control")
    try:
        wait_port(port, timeout=120)
        url = f"http://127.0.0.1:{port}/bench"
        # Under callgrind a request takes 50 times as long: wrk waits for it longer too.
        wrk_run(url, connections=args.connections, seconds=5, timeout_s=30)  # warm-up
        subprocess.run([control, "-i", "on", str(process.pid)], capture_output=True, check=True)
        result = wrk_run(url, connections=args.connections, seconds=args.seconds, timeout_s=30)
        subprocess.run([control, "-i", "off", str(process.pid)], capture_output=True, check=True)
    finally:
        process.terminate()
        process.wait(60)
    match = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if match is None or result["non2xx"] or result["errors"]:
        raise RuntimeError(f"{name}: no count in {out.name} or failed requests: {result}")
    per_request = int(match.group(1)) / result["requests"]
    print(f"  {name}: {result['requests']:,.0f} requests counted, "
          f"{per_request:,.0f} instructions per request", flush=True)
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15, help="the counted wrk run")
    parser.add_argument("--connections", type=int, default=64,
                        help="as limits_overhead.py: how many requests share a batch")
    parser.add_argument("--algorithms", nargs="+", default=["sliding_window", "fixed_window"])
    parser.add_argument("--headers", choices=("ietf", "legacy", "both", "none"), default="ietf",
                        help="the limited gateway's rate_limit_headers")
    parser.add_argument("--limits", type=limit_count, default=1,
                        help="how many limits each request of the limited gateway carries")
    args = parser.parse_args()
    print(python_line())
    print(f"instructions per request under callgrind ({args.connections} connections, "
          f"{args.seconds} s counted, rate_limit_headers {args.headers}, {args.limits} limit(s) "
          f"per request):")
    with make_workdir() as tmp:
        work = Path(tmp)
        upstream = free_port()
        with nginx(nginx_upstream_block(upstream), workdir=work), redis_server(
            workdir=work
        ) as redis:
            wait_port(upstream)
            plain = instructions_per_request(gateway_config(upstream, None, "fixed_window"),
                                             args, work=work, name="no-limits")
            for algorithm in args.algorithms:
                limited = instructions_per_request(
                    gateway_config(upstream, redis, algorithm, args.headers, args.limits), args,
                    work=work, name=algorithm,
                )
                print(f"{algorithm}: unlimited / limited instructions per request "
                      f"{plain / limited:.3f} (goal for throughput >= {GOAL}); the limit adds "
                      f"{limited - plain:,.0f} per request")


if __name__ == "__main__":
    main()
