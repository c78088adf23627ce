"""API keys through a running gateway: 401 answers, X-Consumer set by the gateway only, the key
stripped from headers and query unless ``forward_credentials``, and 403 for a refused consumer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.auth_gateway.helpers import (
    assert_refused,
    header_values,
    only_request,
    quiet_config,
    route,
    send,
)
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

from apigate.auth.api_key import hash_key

ACME_KEY = "acme-key-7f3c9a1e5d"
OTHER_KEY = "other-key-0b24d6e8f1"


@pytest.fixture(scope="module")
def upstream(auth_upstreams: UpstreamLoop) -> ScriptedUpstream:
    return auth_upstreams.serve("keys")


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = quiet_config(
        {"up": upstream.url},
        [
            route("keyed", "/keyed", "up", auth="api_key"),
            route("forwarding", "/forwarding", "up", auth="api_key", forward_credentials=True),
            route("acme-only", "/acme-only", "up", auth="api_key", consumers=["acme"]),
            route("open", "/open", "up"),
        ],
        auth={"api_key": {"header": "X-API-Key", "query": "api_key"}},
        consumers={
            "acme": {"api_keys": [hash_key(ACME_KEY)]},
            "other": {"api_keys": [hash_key(OTHER_KEY)]},
        },
    )
    with running_gateway(config, tmp_path_factory.mktemp("api-key")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _clear(upstream: ScriptedUpstream) -> None:
    upstream.requests.clear()


def test_missing_key_is_401_with_json_and_challenge(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """A request without a key is 401 with a JSON error and an ApiKey WWW-Authenticate."""
    response = send(gateway.port, "/keyed/x")
    assert_refused(response)
    assert (response.header("www-authenticate") or "").startswith("ApiKey")
    assert upstream.requests == []


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_empty_key_header_is_401(gateway: Gateway, upstream: ScriptedUpstream,
                                 value: str) -> None:
    """An empty or blank X-API-Key counts as no key: 401, nothing forwarded."""
    response = send(gateway.port, "/keyed/x", [("X-API-Key", value)])
    assert_refused(response)
    assert response.header("www-authenticate") is not None
    assert upstream.requests == []


@pytest.mark.parametrize("key", [ACME_KEY + "x", ACME_KEY[:-1], ACME_KEY.upper(),
                                 hash_key(ACME_KEY)],
                         ids=["suffix", "prefix", "case", "the-stored-hash"])
def test_wrong_key_is_401(gateway: Gateway, upstream: ScriptedUpstream, key: str) -> None:
    """A near miss, or the stored hash itself presented as the key, is 401 and not forwarded."""
    response = send(gateway.port, "/keyed/x", [("X-API-Key", key)])
    assert_refused(response)
    assert upstream.requests == []


@pytest.mark.parametrize("spelling", ["X-API-Key", "x-api-key", "X-Api-KEY"])
def test_good_key_sets_consumer_and_strips_the_key(
    gateway: Gateway, upstream: ScriptedUpstream, spelling: str
) -> None:
    """A good key (header name in any case) is 200; upstream sees X-Consumer: acme, no key."""
    response = send(gateway.port, "/keyed/x", [(spelling, ACME_KEY)])
    assert response.status == 200, response.body
    seen = only_request(upstream)
    assert header_values(seen, "x-consumer") == ["acme"]
    assert "x-api-key" not in seen.names()


@pytest.mark.parametrize("spelling", ["X-Consumer", "x-consumer", "X-CONSUMER"])
def test_client_x_consumer_never_reaches_the_upstream(
    gateway: Gateway, upstream: ScriptedUpstream, spelling: str
) -> None:
    """A client's own X-Consumer (any case, repeated) is dropped; only the gateway's arrives."""
    headers = [(spelling, "evil"), ("X-API-Key", OTHER_KEY), (spelling, "evil2")]
    assert send(gateway.port, "/keyed/x", headers).status == 200
    assert send(gateway.port, "/open/x", [(spelling, "evil")]).status == 200
    keyed, anonymous = upstream.requests
    assert header_values(keyed, "x-consumer") == ["other"]
    assert header_values(anonymous, "x-consumer") == []


def test_forward_credentials_passes_the_key(gateway: Gateway, upstream: ScriptedUpstream) -> None:
    """With forward_credentials the upstream receives X-API-Key (and the gateway's X-Consumer)."""
    response = send(gateway.port, "/forwarding/x", [("X-API-Key", ACME_KEY)])
    assert response.status == 200, response.body
    seen = only_request(upstream)
    assert header_values(seen, "x-api-key") == [ACME_KEY]
    assert header_values(seen, "x-consumer") == ["acme"]


def test_forward_credentials_still_needs_a_key(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """forward_credentials does not make the route public: no key is still 401."""
    assert_refused(send(gateway.port, "/forwarding/x"))
    assert upstream.requests == []


def test_query_key_is_accepted_and_stripped(gateway: Gateway, upstream: ScriptedUpstream) -> None:
    """A key in ?api_key= is accepted and removed from the query; other parameters stay as sent."""
    response = send(gateway.port, f"/keyed/q?a=1&api_key={ACME_KEY}&b=%20two")
    assert response.status == 200, response.body
    seen = only_request(upstream)
    assert seen.target == "/keyed/q?a=1&b=%20two"
    assert header_values(seen, "x-consumer") == ["acme"]


def test_query_key_alone_is_stripped_entirely(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """When the key was the only parameter, the upstream sees no key in its target."""
    assert send(gateway.port, f"/keyed/q?api_key={ACME_KEY}").status == 200
    assert ACME_KEY not in only_request(upstream).target


def test_query_key_kept_with_forward_credentials(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """With forward_credentials the query key is passed upstream unchanged."""
    assert send(gateway.port, f"/forwarding/q?api_key={ACME_KEY}&a=1").status == 200
    assert only_request(upstream).target == f"/forwarding/q?api_key={ACME_KEY}&a=1"


@pytest.mark.parametrize("query", [f"api_key={ACME_KEY}&api_key={ACME_KEY}", "api_key=",
                                   "api_key=nope"], ids=["twice", "empty", "wrong"])
def test_bad_query_key_is_401(gateway: Gateway, upstream: ScriptedUpstream, query: str) -> None:
    """A query key given twice (ambiguous), empty or wrong is 401 and nothing is forwarded."""
    assert_refused(send(gateway.port, f"/keyed/q?{query}"))
    assert upstream.requests == []


def test_consumer_not_listed_on_route_is_403(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """A valid key of a consumer that the route's ``consumers`` does not list is 403."""
    refused = send(gateway.port, "/acme-only/x", [("X-API-Key", OTHER_KEY)])
    assert_refused(refused, 403)
    assert upstream.requests == []
    allowed = send(gateway.port, "/acme-only/x", [("X-API-Key", ACME_KEY)])
    assert allowed.status == 200, allowed.body
    assert header_values(only_request(upstream), "x-consumer") == ["acme"]


def test_listed_route_without_key_is_401_not_403(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """On a route restricted to consumers, a missing key is still 401 (authenticate first)."""
    assert_refused(send(gateway.port, "/acme-only/x"), 401)
    assert upstream.requests == []
