"""The Authenticator's narrow API: route modes, consumer restriction, policies, stripping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest

from apigate.auth import AuthError, ConsumerError, hash_key
from apigate.config.model import Config

NOW = 1_800_000_000
SECRET = "k" * 64


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(
        jwt={"algorithms": ["HS256"], "secret": SECRET},
        consumers={"acme": {"api_keys": [hash_key("acme-key")], "rate_limits": ["per-consumer"]},
                   "beta": {"api_keys": [hash_key("beta-key")]}},
        route_consumers=["acme"],
    )


def bearer_for(sub: str) -> dict[str, str]:
    token = pyjwt.encode({"sub": sub, "iss": "https://issuer.test", "aud": "apigate",
                          "exp": NOW + 60}, SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


async def test_open_route_needs_no_credentials(config: Config, make_auth: Any) -> None:
    """auth: none yields a Caller with only the client address."""
    caller = await make_auth(config).authenticate(config.routes[0], {}, "", "2001:db8::1")
    assert (caller.client_ip, caller.consumer, dict(caller.claims)) == ("2001:db8::1", None, {})


@pytest.mark.parametrize(("route_index", "headers"), [
    (1, {"x-api-key": "beta-key"}),
    (2, bearer_for("beta")),
    (2, bearer_for("someone-else")),
])
async def test_consumer_outside_route_list_is_403(route_index: int, headers: dict[str, str],
                                                  config: Config, make_auth: Any) -> None:
    """A route with consumers: [acme] refuses any other authenticated consumer with 403."""
    with pytest.raises(AuthError) as caught:
        await make_auth(config).authenticate(config.routes[route_index], headers, "", "::1")
    assert caught.value.status == 403
    assert caught.value.www_authenticate is None


@pytest.mark.parametrize(("route_index", "headers"), [
    (1, {"x-api-key": "acme-key"}),
    (2, bearer_for("acme")),
])
async def test_listed_consumer_passes_the_route_list(route_index: int, headers: dict[str, str],
                                                     config: Config, make_auth: Any) -> None:
    """The consumer named in the route's list gets through by API key and by JWT."""
    caller = await make_auth(config).authenticate(config.routes[route_index], headers, "", "::1")
    assert caller.consumer == "acme"


async def test_jwt_caller_carries_claims(config: Config, make_auth: Any) -> None:
    """A JWT caller's claims are the verified token claims (for jwt:CLAIM rate-limit keys)."""
    caller = await make_auth(config).authenticate(config.routes[2], bearer_for("acme"), "", "::1")
    assert caller.claims["aud"] == "apigate"


def test_consumer_policies_come_from_the_consumer(config: Config, make_auth: Any) -> None:
    """consumer_policies returns a consumer's rate_limits, and () for unknown consumers."""
    auth = make_auth(config)
    assert auth.consumer_policies("acme") == ("per-consumer",)
    assert auth.consumer_policies("beta") == ()
    assert auth.consumer_policies("nobody") == ()


def test_credential_headers_per_route(config: Config, make_auth: Any) -> None:
    """The API key header or Authorization is stripped, unless the route forwards credentials."""
    auth = make_auth(config)
    open_route, keyed, bearer = config.routes
    assert auth.credential_headers(open_route) == frozenset()
    assert auth.credential_headers(keyed) == frozenset({"x-api-key"})
    assert auth.credential_headers(bearer) == frozenset({"authorization"})
    forwarding = keyed.model_copy(update={"forward_credentials": True})
    assert auth.credential_headers(forwarding) == frozenset()


async def test_with_config_swaps_consumers(config: Config, make_config: Callable[..., Config],
                                           make_auth: Any) -> None:
    """A reloaded config's consumers apply to the new Authenticator, not the old one."""
    old = make_auth(config)
    await old.start()
    new_config = make_config(consumers={"acme": {"api_keys": [hash_key("rotated")]}})
    new = old.with_config(new_config)
    await new.start()
    await old.aclose()
    caller = await new.authenticate(new_config.routes[1], {"x-api-key": "rotated"}, "", "::1")
    assert caller.consumer == "acme"
    with pytest.raises(AuthError):
        await new.authenticate(new_config.routes[1], {"x-api-key": "acme-key"}, "", "::1")
    assert (await old.authenticate(config.routes[1], {"x-api-key": "acme-key"}, "",
                                   "::1")).consumer == "acme"
    await new.aclose()


async def test_memory_storage_has_no_redis_consumers(config: Config, make_auth: Any) -> None:
    """With memory:// storage the directory lists config consumers and refuses writes (409)."""
    directory = make_auth(config).directory
    assert not directory.redis_available
    assert [(c.name, c.source) for c in directory.all()] == [("acme", "config"),
                                                             ("beta", "config")]
    with pytest.raises(ConsumerError) as caught:
        await directory.create("new", [hash_key("k")], [])
    assert caught.value.status == 409
    assert "memory://" in caught.value.message
