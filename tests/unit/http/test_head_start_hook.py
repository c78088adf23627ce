"""The connection calls the gateway's head start only for configs with a route it can decide
early: one with rate limits and no auth, or one with API keys (which authenticate without
waiting). Other configs' requests skip the call."""

from __future__ import annotations

import pytest

from apigate.config import parse_config
from apigate.gateway import Gateway
from apigate.observability.metrics import NullMetrics
from apigate.runtime import build_runtime

KEY = "sha256:" + "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
BASE = f"""
storage: {{url: "memory://"}}
upstreams: {{up: {{targets: ["http://127.0.0.1:9"]}}}}
rate_limits: {{per-ip: {{limit: 5, window: "1s", algorithm: fixed_window, key: client_ip}}}}
consumers: {{acme: {{api_keys: ["{KEY}"]}}}}
auth: {{jwt: {{algorithms: [HS256], secret: "{"s" * 32}"}}}}
routes:
"""
OPEN = '  - {name: open, match: {path_prefix: "/open"}, upstream: up}\n'
LIMITED = '  - {name: limited, match: {path_prefix: "/l"}, upstream: up, rate_limits: [per-ip]}\n'
KEYED = (
    '  - {name: keyed, match: {path_prefix: "/k"}, upstream: up, rate_limits: [per-ip],'
    " auth: api_key}\n"
)
# A JWT route's keys may have to be fetched: it authenticates in the handler, and decides there.
BEARER = (
    '  - {name: bearer, match: {path_prefix: "/b"}, upstream: up, rate_limits: [per-ip],'
    " auth: jwt}\n"
)


# An API-key route without limits of its own: its consumers' limits may apply.
KEYED_FREE = '  - {name: free, match: {path_prefix: "/f"}, upstream: up, auth: api_key}\n'


def _gateway(routes: str, base: str = BASE) -> Gateway:
    config = parse_config(base + routes, source="t.yaml", env={})
    return Gateway(build_runtime(config, metrics=NullMetrics(), instance_id="t"))


@pytest.mark.parametrize(
    ("routes", "hooked"),
    [(OPEN, False), (BEARER, False), (OPEN + BEARER, False), (KEYED, True), (OPEN + KEYED, True),
     (OPEN + LIMITED, True), (LIMITED, True)],
)
def test_head_start_is_offered_only_when_a_route_can_use_it(routes: str, hooked: bool) -> None:
    gateway = _gateway(routes)
    hook = gateway.head_start_hook()
    assert (hook == gateway.head_start) is hooked
    assert (hook is None) is not hooked


def test_a_reload_changes_the_hook_with_the_config() -> None:
    """The hook follows the runtime the gateway holds (the worker asks again on reload)."""
    gateway = _gateway(OPEN)
    assert gateway.head_start_hook() is None
    gateway.runtime = _gateway(OPEN + LIMITED).runtime
    assert gateway.head_start_hook() == gateway.head_start


@pytest.mark.parametrize(("consumer", "hooked"), [("", False), (", rate_limits: [per-ip]", True)])
def test_an_api_key_route_is_offered_it_when_its_consumers_have_limits(
    consumer: str, hooked: bool
) -> None:
    """Without limits of its own, an API-key route is authenticated early only when some
    consumer has limits (there is nothing to decide otherwise)."""
    base = BASE.replace(f'api_keys: ["{KEY}"]', f'api_keys: ["{KEY}"]{consumer}')
    gateway = _gateway(KEYED_FREE, base)
    assert (gateway.head_start_hook() is None) is not hooked
