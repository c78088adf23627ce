"""Redis consumers against a real redis-server: two instances share changes within seconds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from apigate.admin.consumers_api import admin_routes
from apigate.admin.types import AdminError, AdminRequest, AdminResponse
from apigate.auth import (
    Authenticator,
    AuthError,
    Consumer,
    ConsumerDirectory,
    ConsumerError,
    hash_key,
)
from apigate.config.model import Config

POLL_S = 0.05


def make_config(url: str, prefix: str) -> Config:
    return Config.model_validate({
        "storage": {"url": url, "key_prefix": prefix},
        "upstreams": {"up": {"targets": ["http://127.0.0.1:9"]}},
        "routes": [{"name": "keyed", "upstream": "up", "auth": "api_key"}],
        "rate_limits": {"per-consumer": {"limit": 5, "window": "1m", "key": "consumer"}},
        "consumers": {"cfg-acme": {"api_keys": [hash_key("cfg-key")]}},
    })


async def instance(config: Config) -> Authenticator:
    """One gateway instance's Authenticator, polling Redis every POLL_S."""
    auth = Authenticator(config, ConsumerDirectory.from_config(config, poll_interval_s=POLL_S))
    await auth.start()
    return auth


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Wait (bounded) until ``check()`` holds; return how long it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, "not seen within the deadline"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def key_owner(auth: Authenticator, key: str) -> str | None:
    headers = {"x-api-key": key}
    return (await auth.authenticate(auth.config.routes[0], headers, "", "::1")).consumer


@pytest.fixture
def config(redis_server: Any) -> Config:
    return make_config(redis_server.url, f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def pair(config: Config) -> AsyncIterator[tuple[Authenticator, Authenticator]]:
    a, b = await instance(config), await instance(config)
    yield a, b
    await a.aclose()
    await b.aclose()


@pytest.fixture
async def raw(redis_server: Any) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def test_two_instances_share_create_disable_delete(
    pair: tuple[Authenticator, Authenticator],
) -> None:
    """A consumer created, disabled, enabled and deleted on A takes effect on B within seconds."""
    a, b = pair
    await a.directory.create("beta", [hash_key("beta-key")], ["per-consumer"])
    await eventually(lambda: b.directory.get("beta") is not None)
    assert await key_owner(b, "beta-key") == "beta"
    assert b.consumer_policies("beta") == ("per-consumer",)

    await a.directory.set_disabled("beta", True)
    await eventually(lambda: getattr(b.directory.get("beta"), "disabled", False))
    with pytest.raises(AuthError, match="disabled"):
        await key_owner(b, "beta-key")

    await a.directory.set_disabled("beta", False)
    await eventually(lambda: not getattr(b.directory.get("beta"), "disabled", True))
    assert await key_owner(b, "beta-key") == "beta"

    await a.directory.delete("beta")
    await eventually(lambda: b.directory.get("beta") is None)
    with pytest.raises(AuthError, match="invalid API key"):
        await key_owner(b, "beta-key")


async def send(auth: Authenticator, method: str, path: str, *, query: dict[str, str] | None = None,
               body: Any = None) -> AdminResponse:
    routes = admin_routes(lambda: auth, None, None)
    handler = next(h for m, p, h in routes if (m, p) == (method, path))
    return await handler(AdminRequest(method, path, query or {}, json.dumps(body).encode()))


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"name": "cfg-acme", "api_keys": [hash_key("x")]}, 409, "config file"),
    ({"name": "dup", "api_keys": [hash_key("y")]}, 409, "exists already"),
    ({"name": "new", "api_keys": [hash_key("cfg-key")]}, 409, "cfg-acme"),
    ({"name": "new", "api_keys": [hash_key("dup-key")]}, 409, "'dup'"),
    ({"name": "new", "api_keys": ["sha256:ABC"]}, 400, "sha256"),
    ({"name": "new", "api_keys": [], "rate_limits": ["nope"]}, 400, "no rate limit named"),
    ({"name": "bad name!", "api_keys": []}, 400, "name must match"),
])
async def test_admin_create_refuses_conflicts_and_bad_input(
    body: dict[str, Any], status: int, message: str, pair: tuple[Authenticator, Authenticator],
) -> None:
    """Name clashes with config or Redis and reused keys are 409; bad hashes/policies are 400."""
    a, _ = pair
    created = await send(a, "POST", "/admin/consumers",
                         body={"name": "dup", "api_keys": [hash_key("dup-key")]})
    assert created.status == 201
    with pytest.raises(AdminError) as caught:
        await send(a, "POST", "/admin/consumers", body=body)
    assert caught.value.status == status
    assert message in caught.value.message


async def test_admin_lifecycle_over_redis(pair: tuple[Authenticator, Authenticator]) -> None:
    """Through the admin API: create, list as redis, disable, delete, then 404 for the gone."""
    a, b = pair
    body = {"name": "beta", "api_keys": [hash_key("beta-key")], "rate_limits": ["per-consumer"]}
    assert (await send(a, "POST", "/admin/consumers", body=body)).status == 201
    listed = json.loads((await send(a, "GET", "/admin/consumers")).body)
    assert {"name": "beta", "source": "redis", "disabled": False, "api_keys": 1,
            "rate_limits": ["per-consumer"]} in listed["consumers"]
    disabled = await send(b, "POST", "/admin/consumers/disable", query={"name": "beta"})
    assert json.loads(disabled.body)["disabled"] is True
    with pytest.raises(AdminError) as config_one:
        await send(a, "DELETE", "/admin/consumers", query={"name": "cfg-acme"})
    assert config_one.value.status == 409
    assert (await send(a, "DELETE", "/admin/consumers", query={"name": "beta"})).status == 200
    with pytest.raises(AdminError) as gone:
        await send(a, "DELETE", "/admin/consumers", query={"name": "beta"})
    assert gone.value.status == 404


async def test_consumer_keys_share_one_slot_and_carry_no_ttl(
    pair: tuple[Authenticator, Authenticator], raw: Redis, config: Config,
) -> None:
    """Consumer keys live under {<prefix>:consumers} (one cluster slot) and, as data, no TTL."""
    a, _ = pair
    for name in ("one", "two", "three"):
        await a.directory.create(name, [hash_key(name)], [])
    await a.directory.set_disabled("two", True)
    keys = [k async for k in raw.scan_iter(match=f"*{config.storage.key_prefix}*")]
    tag = "{" + config.storage.key_prefix + ":consumers}"
    assert len(keys) == 5  # three records, the names set, the version counter
    assert all(k.startswith(tag + ":") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert {await raw.ttl(k) for k in keys} == {-1}


async def test_malformed_and_clashing_records_are_ignored(
    pair: tuple[Authenticator, Authenticator], raw: Redis, config: Config,
) -> None:
    """A hand-written record that is malformed or shadows a config consumer changes nothing."""
    a, _ = pair
    tag = "{" + config.storage.key_prefix + ":consumers}"
    await raw.hset(f"{tag}:c:broken", mapping={"api_keys": "not json", "rate_limits": "[]"})
    await raw.hset(f"{tag}:c:cfg-acme", mapping={
        "api_keys": json.dumps([hash_key("hijack")]), "rate_limits": "[]", "disabled": "1"})
    await raw.sadd(f"{tag}:names", "broken", "cfg-acme")
    await raw.incr(f"{tag}:version")
    await a.directory.refresh()
    assert a.directory.get("broken") is None
    assert a.directory.get("cfg-acme") == Consumer(
        "cfg-acme", (hash_key("cfg-key"),), (), False, "config")
    with pytest.raises(AuthError):
        await key_owner(a, "hijack")
    assert await key_owner(a, "cfg-key") == "cfg-acme"


async def test_reload_keeps_polling_with_the_shared_store(config: Config) -> None:
    """After with_config + closing the old Authenticator, the new one still sees changes."""
    old, other = await instance(config), await instance(config)
    new = old.with_config(config)
    await new.start()
    await old.aclose()
    await other.directory.create("late", [hash_key("late-key")], [])
    await eventually(lambda: new.directory.get("late") is not None)
    assert await key_owner(new, "late-key") == "late"
    await new.aclose()
    await other.aclose()


async def test_redis_outage_keeps_consumers_and_fails_writes(
    start_redis: Callable[[], Any], caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis gone, known Redis consumers keep working and admin writes answer 503."""
    server = start_redis()
    auth = await instance(make_config(server.url, "outage"))
    await auth.directory.create("beta", [hash_key("beta-key")], [])
    server.stop()
    await eventually(lambda: "consumer store unreachable" in caplog.text)
    assert await key_owner(auth, "beta-key") == "beta"
    with pytest.raises(ConsumerError) as caught:
        await auth.directory.create("gamma", [hash_key("g")], [])
    assert caught.value.status == 503
    await auth.aclose()
