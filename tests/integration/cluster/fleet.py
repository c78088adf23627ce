"""Several ``apigate run`` instances sharing one storage: configs, start/stop, admin calls.

Every policy gets its own route ``/<policy>`` keyed by client IP, so one fleet serves the
tests of several algorithms; a fresh ``key_prefix`` per fleet keeps fleets apart in Redis.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.integration.cluster.traffic import Target
from tests.support.gateway import Gateway
from tests.support.redis_servers import RedisNode

# A policy so large that it never rejects: its RateLimit header tells a storage decision
# (r close to the limit) from a local one (r close to limit / instances) or none at all.
PROBE_LIMIT = 1_000_000
PROBE = {"limit": PROBE_LIMIT, "window": "1d", "algorithm": "fixed_window"}


def fresh_prefix() -> str:
    """A key prefix no other fleet uses: ``t3f2a...``."""
    return "t" + uuid.uuid4().hex[:12]


def gateway_config(
    *,
    storage_url: str,
    upstream_port: int,
    policies: Mapping[str, Mapping[str, Any]],
    on_failure: str = "open",
    timeout_ms: int = 50,
    key_prefix: str | None = None,
    server: Mapping[str, Any] | None = None,
    extra_routes: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """A config with route ``/<name>`` limited by policy ``name`` for each policy, plus /probe.

    ``extra_routes`` maps more route names to their policies: ``{"pair": ["a", "b"]}``.
    """
    routes = {name: [name] for name in [*policies, "probe"]}
    routes.update({name: list(names) for name, names in (extra_routes or {}).items()})
    all_policies = {**policies, "probe": PROBE}
    return {
        "server": dict(server or {}),
        "storage": {
            "url": storage_url,
            "timeout_ms": timeout_ms,
            "on_failure": on_failure,
            "key_prefix": key_prefix or fresh_prefix(),
        },
        "upstreams": {"demo": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [
            {"name": name, "match": {"path_prefix": f"/{name}"}, "upstream": "demo",
             "rate_limits": limits}
            for name, limits in routes.items()
        ],
        "rate_limits": {name: dict(p) for name, p in all_policies.items()},
        "observability": {"access_log": False, "log_level": "info"},
    }


def start_all(gateways: Sequence[Gateway]) -> None:
    """Start the gateways concurrently; raise the first start failure."""
    with ThreadPoolExecutor(len(gateways)) as pool:
        for future in [pool.submit(g.start) for g in gateways]:
            future.result()


@contextlib.contextmanager
def running_fleet(
    config: Mapping[str, Any], workdir: Path, workers: Sequence[int]
) -> Iterator[list[Gateway]]:
    """One gateway per entry of ``workers`` (its worker count), all on ``config``."""
    gateways = [Gateway(dict(config), workdir, workers=w) for w in workers]
    try:
        start_all(gateways)
        yield gateways
    finally:
        with ThreadPoolExecutor(len(gateways)) as pool:
            list(pool.map(lambda g: g.stop(), gateways))


def targets(gateways: Sequence[Gateway]) -> list[Target]:
    return [Target("127.0.0.1", g.port) for g in gateways]


def admin(gateway: Gateway, method: str, path: str) -> tuple[int, Any]:
    """Call the admin API; (status, decoded JSON body)."""
    request = urllib.request.Request(
        gateway.admin_url + path, method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return exc.code, json.loads(exc.read() or b"null")


def reset_key(gateway: Gateway, policy: str, key: str = "ip=127.0.0.1") -> None:
    """Reset ``key`` under ``policy`` through the admin API; raise unless it says so."""
    status, body = admin(gateway, "POST", f"/admin/ratelimit/reset?policy={policy}&key={key}")
    if status != 200:
        raise AssertionError(f"reset answered {status}: {body}")


def probe_remaining(gateway: Gateway) -> int | None:
    """``r`` of the /probe answer's RateLimit header, None without one (or on error)."""
    request = urllib.request.Request(gateway.url + "/probe")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            value = response.headers.get("RateLimit")
    except (urllib.error.URLError, OSError):
        return None
    if value is None or ";r=" not in value:
        return None
    return int(value.split(";r=", 1)[1].split(";", 1)[0])


def wait_storage_decides(gateways: Sequence[Gateway], timeout_s: float = 20.0) -> None:
    """Block until each gateway's /probe is decided by storage again (breaker closed).

    Each gateway must have one worker, so one connection reaches its only breaker.
    """
    for gateway in gateways:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = probe_remaining(gateway)
            if remaining is not None and remaining > PROBE_LIMIT * 0.6:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway {gateway.port} never used storage again")
            time.sleep(0.1)


def stored_keys(nodes: Iterable[RedisNode], prefix: str) -> list[str]:
    """Keys starting with ``prefix`` on the live data nodes (sentinels skipped) of ``nodes``."""
    found: set[str] = set()
    for node in nodes:
        if node.alive and node.sentinel_conf is None:
            client = node.client()
            try:
                found.update(k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000))
            finally:
                client.close()
    return sorted(found)


def probe_count(node: RedisNode, prefix: str) -> int:
    """The /probe counter of ``prefix`` (fixed window, client 127.0.0.1) on ``node``; 0 if none."""
    client = node.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}:{{ip=127.0.0.1}}:probe:*", count=1000))
        return sum(int(client.get(k) or 0) for k in keys)
    finally:
        client.close()


def wait_decisions_on(node: RedisNode, gateways: Sequence[Gateway], timeout_s: float) -> float:
    """Block until a /probe on each gateway counts on ``node``; the seconds it took."""
    prefix = gateways[0].config["storage"]["key_prefix"]
    started = time.monotonic()
    for gateway in gateways:
        while True:
            before = probe_count(node, prefix)
            probe_remaining(gateway)
            if probe_count(node, prefix) > before:
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"gateway {gateway.port} still decides elsewhere")
            time.sleep(0.05)
    return time.monotonic() - started


def usage(gateway: Gateway, policy: str, key: str = "ip=127.0.0.1") -> dict[str, Any]:
    """The admin API's usage of ``key`` under ``policy``; raise unless it answers 200."""
    status, body = admin(gateway, "GET", f"/admin/ratelimit/usage?policy={policy}&key={key}")
    if status != 200:
        raise AssertionError(f"usage answered {status}: {body}")
    return dict(body)


def assert_all_keys_expire(setup: Any) -> None:
    """No key on any node of a tests.support setup lacks a TTL (consumer records aside)."""
    # Consumer records ({<prefix>:consumers}:...) are data written by the admin API, not
    # counters; other suites share this Redis and may have created some.
    leaked = [k for k in setup.keys_without_ttl() if ":consumers}" not in k]
    assert leaked == [], f"keys without a TTL: {leaked[:10]}"
