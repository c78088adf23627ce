"""The consumers admin API without Redis: listing, input validation, usage and reset."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from apigate.admin.consumers_api import admin_routes
from apigate.admin.types import AdminError, AdminRequest, AdminResponse, AdminRoute
from apigate.auth import Authenticator, hash_key
from apigate.config.model import Config


@pytest.fixture
def auth(make_config: Callable[..., Config], make_auth: Any) -> Authenticator:
    config = make_config(consumers={
        "acme": {"api_keys": [hash_key("a")], "rate_limits": ["per-consumer", "per-ip"]},
        "beta": {"disabled": True},
    })
    result: Authenticator = make_auth(config)
    return result


class Recorder:
    """Fake rate limiter callables that remember what they were asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def usage(self, policy: str, key_value: str) -> dict[str, Any]:
        self.calls.append(("usage", policy, key_value))
        return {"limit": 10, "remaining": 7}

    async def reset(self, policy: str, key_value: str) -> None:
        self.calls.append(("reset", policy, key_value))


async def send(routes: list[AdminRoute], method: str, path: str, *,
               query: dict[str, str] | None = None, body: Any = None) -> AdminResponse:
    handler = next(h for m, p, h in routes if (m, p) == (method, path))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    return await handler(AdminRequest(method, path, query or {}, raw))


async def test_list_shows_source_and_disabled(auth: Authenticator) -> None:
    """GET /admin/consumers lists every consumer with its source and disabled flag."""
    response = await send(admin_routes(lambda: auth, None, None), "GET", "/admin/consumers")
    data = json.loads(response.body)
    assert response.status == 200
    assert data["redis_consumers"] is False
    assert data["consumers"] == [
        {"name": "acme", "source": "config", "disabled": False, "api_keys": 1,
         "rate_limits": ["per-consumer", "per-ip"]},
        {"name": "beta", "source": "config", "disabled": True, "api_keys": 0, "rate_limits": []},
    ]


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    ([1, 2], "JSON object"),
    ({"name": 5}, "name must be a string"),
    ({"name": "x", "api_keys": "sha256:ab"}, "api_keys must be a list of strings"),
    ({"name": "x", "rate_limits": [1]}, "rate_limits must be a list of strings"),
    ({"name": "x", "colour": "red"}, "unknown fields: colour"),
])
async def test_create_rejects_malformed_bodies(body: Any, message: str,
                                               auth: Authenticator) -> None:
    """POST /admin/consumers answers 400 with a message naming what is wrong."""
    with pytest.raises(AdminError) as caught:
        await send(admin_routes(lambda: auth, None, None), "POST", "/admin/consumers", body=body)
    assert caught.value.status == 400
    assert message in caught.value.message


async def test_create_without_redis_is_409(auth: Authenticator) -> None:
    """With memory:// storage creating a consumer is a 409 that says why."""
    body = {"name": "new", "api_keys": [hash_key("n")]}
    with pytest.raises(AdminError) as caught:
        await send(admin_routes(lambda: auth, None, None), "POST", "/admin/consumers", body=body)
    assert caught.value.status == 409
    assert "memory://" in caught.value.message


@pytest.mark.parametrize(("query", "status"), [({}, 400), ({"name": "a b"}, 400),
                                               ({"name": "x" * 65}, 400),
                                               ({"name": "acme"}, 409)])
@pytest.mark.parametrize("path", ["/admin/consumers/disable", "/admin/consumers/enable"])
async def test_disable_validates_the_name(path: str, query: dict[str, str], status: int,
                                          auth: Authenticator) -> None:
    """disable/enable need a valid ?name=; config consumers cannot be changed here (409)."""
    with pytest.raises(AdminError) as caught:
        await send(admin_routes(lambda: auth, None, None), "POST", path, query=query)
    assert caught.value.status == status


async def test_usage_asks_only_consumer_keyed_policies(auth: Authenticator) -> None:
    """Usage covers the consumer's policies keyed exactly by consumer, as consumer=<name>."""
    fake = Recorder()
    routes = admin_routes(lambda: auth, fake.usage, fake.reset)
    response = await send(routes, "GET", "/admin/consumers/usage", query={"name": "acme"})
    assert json.loads(response.body) == {
        "consumer": "acme", "policies": {"per-consumer": {"limit": 10, "remaining": 7}}}
    assert fake.calls == [("usage", "per-consumer", "consumer=acme")]


async def test_reset_resets_consumer_keyed_policies(auth: Authenticator) -> None:
    """Reset forgets the consumer's consumer-keyed counters and says which."""
    fake = Recorder()
    routes = admin_routes(lambda: auth, fake.usage, fake.reset)
    response = await send(routes, "POST", "/admin/consumers/reset", query={"name": "acme"})
    assert json.loads(response.body) == {"consumer": "acme", "reset": ["per-consumer"]}
    assert fake.calls == [("reset", "per-consumer", "consumer=acme")]


@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/consumers/usage"),
                                              ("POST", "/admin/consumers/reset")])
async def test_usage_unknown_consumer_or_no_limiter(method: str, path: str,
                                                    auth: Authenticator) -> None:
    """An unknown consumer is a 404; without a limiter the endpoints answer 501."""
    fake = Recorder()
    with pytest.raises(AdminError) as unknown:
        await send(admin_routes(lambda: auth, fake.usage, fake.reset), method, path,
                   query={"name": "nobody"})
    with pytest.raises(AdminError) as missing:
        await send(admin_routes(lambda: auth, None, None), method, path, query={"name": "acme"})
    assert (unknown.value.status, missing.value.status) == (404, 501)
