"""What JWT (RS256) authentication costs: an open route vs an ``auth: jwt`` route, one worker.

Both routes go to the same nginx upstream and every request carries the same ``Authorization``
header. Three runs per round, under the same wrk: the open route, the JWT route with one token
repeated (the verified-token cache answers), and the JWT route with a different token on every
request (a wrk Lua script cycling through more tokens than the cache holds, so each request
pays a full RSA-2048 verification). Prints requests/s and the ratios to the open route.
Run: ``python bench/jwt_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from apigate.auth.jwt import CACHE_SIZE
from common import (
    apigate,
    free_port,
    median,
    nginx,
    nginx_upstream_block,
    python_line,
    wait_port,
    wrk_run,
)
from common import workdir as make_workdir

ISSUER, AUDIENCE, KID = "https://issuer.bench.invalid", "apigate-bench", "bench-1"


def make_keys(work: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """A fresh RSA-2048 key pair; the public half written as a one-key JWKS file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="RS256", use="sig")
    path = work / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def token(key: rsa.RSAPrivateKey, number: int) -> str:
    now = int(time.time())
    claims = {"sub": f"user-{number % 100}", "iss": ISSUER, "aud": AUDIENCE, "iat": now,
              "exp": now + 3600, "jti": str(number)}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def lua_script(tokens: list[str], path: str, work: Path) -> Path:
    """A wrk script sending ``path`` with the next token of ``tokens`` on each request.

    The position in the ring is saved when wrk ends and resumed by the next run, so that every
    token comes back only after all the others: with more tokens than the verified-token cache
    holds (an LRU), each one has been evicted by then and every request misses the cache.
    """
    table = ",\n".join(f'"Bearer {t}"' for t in tokens)
    state = work / "tokens.position"
    script = work / "tokens.lua"
    script.write_text(
        f"local tokens = {{\n{table}\n}}\n"
        f'local state = "{state}"\n'
        "local n, threads = #tokens, {}\n"
        "function setup(thread) table.insert(threads, thread) end\n"
        "function init(args)\n"
        "  local f = io.open(state, 'r')\n"
        "  i = 0\n"
        "  if f then i = tonumber(f:read('*l')) or 0; f:close() end\n"
        "end\n"
        "function request()\n"
        "  i = i % n + 1\n"
        f'  return wrk.format("GET", "{path}", {{["Authorization"] = tokens[i]}})\n'
        "end\n"
        "function done(summary, latency, requests)\n"
        "  local f = io.open(state, 'w')\n"
        "  f:write(tostring(threads[1]:get('i')))\n"
        "  f:close()\n"
        "end\n"
    )
    return script


def gateway_config(upstream_port: int, jwks: Path) -> dict[str, Any]:
    """``/open`` without auth, ``/jwt`` with RS256 from a JWKS file; access log off."""
    return {
        "upstreams": {"bench": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [
            {"name": "jwt", "match": {"path_prefix": "/jwt"}, "upstream": "bench",
             "auth": "jwt"},
            {"name": "open", "match": {"path_prefix": "/open"}, "upstream": "bench"},
        ],
        "auth": {"jwt": {"algorithms": ["RS256"], "jwks_file": str(jwks), "issuer": ISSUER,
                         "audience": AUDIENCE}},
        "observability": {"access_log": False, "metrics": True},
    }


def describe(name: str, result: dict[str, float]) -> str:
    return (f"{name} {result['rps']:,.0f} req/s (non-2xx {result['non2xx']:.0f}, "
            f"errors {result['errors']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=CACHE_SIZE + 2000,
                        help="distinct tokens for the uncached run (more than the cache holds)")
    args = parser.parse_args()
    print(python_line())
    with make_workdir() as tmp:
        work = Path(tmp)
        key, jwks = make_keys(work)
        started = time.monotonic()
        tokens = [token(key, n) for n in range(args.tokens)]
        print(f"signed {len(tokens)} RS256 tokens in {time.monotonic() - started:.1f} s "
              f"(verified-token cache holds {CACHE_SIZE})")
        script = lua_script(tokens, "/jwt", work)
        header = (f"Authorization: Bearer {tokens[0]}",)
        upstream = free_port()
        with nginx(nginx_upstream_block(upstream), workdir=work), apigate(
            gateway_config(upstream, jwks), workdir=work
        ) as gate:
            wait_port(upstream)
            base = f"http://127.0.0.1:{gate}"
            for path in ("/open", "/jwt"):  # warm up pools and the cache
                wrk_run(base + path, connections=8, seconds=1, headers=header)
            cached, uncached = [], []
            for round_no in range(args.rounds):
                run = {"connections": args.connections, "seconds": args.seconds}
                open_ = wrk_run(base + "/open", headers=header, **run)
                same = wrk_run(base + "/jwt", headers=header, **run)
                each = wrk_run(base + "/jwt", script=script, **run)
                cached.append(same["rps"] / open_["rps"])
                uncached.append(each["rps"] / open_["rps"])
                print(f"  round {round_no + 1}: {describe('open', open_)} | "
                      f"{describe('jwt same token', same)} | "
                      f"{describe('jwt token per request', each)} | "
                      f"ratios {cached[-1]:.2f} / {uncached[-1]:.2f}")
            print(f"JWT route / open route, median: same token (cached) {median(cached):.2f} | "
                  f"a new token per request (RSA verify each time) {median(uncached):.2f}")


if __name__ == "__main__":
    main()
