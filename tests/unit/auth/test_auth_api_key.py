"""API keys: hashing, where the key is read from, every way it can be wrong, and stripping."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from apigate.auth import AuthError, hash_key
from apigate.auth.api_key import find_consumer, strip_query_param
from apigate.config.model import Config

ACME_KEY = "acme-key-0123456789"


@pytest.fixture
def consumers() -> dict[str, Any]:
    return {
        "acme": {"api_keys": [hash_key(ACME_KEY)], "rate_limits": ["per-consumer"]},
        "gone": {"api_keys": [hash_key("gone-key")], "disabled": True},
    }


async def keyed(auth: Any, config: Config, headers: dict[str, str], query: str = "") -> Any:
    return await auth.authenticate(config.routes[1], headers, query, "198.51.100.7")


def test_hash_key_is_sha256_hex() -> None:
    """hash_key gives the stored form sha256:<64 lower-case hex> of the UTF-8 key."""
    assert hash_key("secret") == (
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", hash_key("ключ"))


def test_lookup_decides_on_the_stored_hash() -> None:
    """find_consumer trusts the stored hash it compares, not the dict key it found it by."""
    digest = hash_key(ACME_KEY)
    assert find_consumer(ACME_KEY, {digest: (digest, "acme")}) == "acme"
    assert find_consumer(ACME_KEY, {digest: (hash_key("other"), "acme")}) is None
    assert find_consumer("wrong", {digest: (digest, "acme")}) is None


async def test_header_key_names_the_consumer(make_config: Callable[..., Config], make_auth: Any,
                                             consumers: dict[str, Any]) -> None:
    """A right key in X-API-Key (looked up lower-case) authenticates its consumer."""
    config = make_config(consumers=consumers)
    caller = await keyed(make_auth(config), config, {"x-api-key": ACME_KEY})
    assert (caller.consumer, caller.client_ip) == ("acme", "198.51.100.7")


async def test_query_key_names_the_consumer(make_config: Callable[..., Config], make_auth: Any,
                                            consumers: dict[str, Any]) -> None:
    """With auth.api_key.query the key is read, percent-decoded, from the query string."""
    config = make_config(consumers=consumers, api_key={"query": "api_key"})
    auth = make_auth(config)
    encoded = ACME_KEY.replace("-", "%2D")
    assert (await keyed(auth, config, {}, f"a=1&api_key={encoded}")).consumer == "acme"
    with pytest.raises(AuthError):  # query configured: the header is not a credential
        await keyed(auth, config, {"x-api-key": ACME_KEY}, "")


@pytest.mark.parametrize("case", [
    ({}, "", "API key required"),
    ({"x-api-key": ""}, "", "API key required"),
    ({"x-api-key": "   "}, "", "API key required"),
    ({"x-api-key": "wrong"}, "", "invalid API key"),
    ({"x-api-key": hash_key(ACME_KEY)}, "", "invalid API key"),  # the hash is not the key
    ({"x-api-key": "gone-key"}, "", "consumer is disabled"),
    ({"x-api-key": "\ud800\u00ff"}, "", "invalid API key"),
    ({}, f"api_key={ACME_KEY}", "API key required"),  # header configured: query ignored
])
async def test_bad_header_keys_are_401(
    case: tuple[dict[str, str], str, str], make_config: Callable[..., Config],
    make_auth: Any, consumers: dict[str, Any],
) -> None:
    """Missing, empty, wrong and disabled keys are a 401 with an ApiKey challenge."""
    headers, query, message = case
    config = make_config(consumers=consumers)
    with pytest.raises(AuthError) as caught:
        await keyed(make_auth(config), config, headers, query)
    assert (caught.value.status, caught.value.message) == (401, message)
    assert caught.value.www_authenticate == 'ApiKey realm="apigate"'


@pytest.mark.parametrize("query", ["", "api_key=", "api_key", f"api_key={ACME_KEY}&api_key=x",
                                   "api_key=nope"])
async def test_bad_query_keys_are_401(query: str, make_config: Callable[..., Config],
                                      make_auth: Any, consumers: dict[str, Any]) -> None:
    """Missing, empty, repeated (ambiguous) and wrong query keys are a 401."""
    config = make_config(consumers=consumers, api_key={"query": "api_key"})
    with pytest.raises(AuthError) as caught:
        await keyed(make_auth(config), config, {}, query)
    assert caught.value.status == 401


@pytest.mark.parametrize(("query", "stripped"), [
    ("api_key=s", ""),
    ("a=1&api_key=s&b=%2F", "a=1&b=%2F"),
    ("api%5Fkey=s&x=1", "x=1"),
    ("a=1&api_key_2=s", "a=1&api_key_2=s"),
    ("a=1&&b", "a=1&&b"),
])
def test_strip_query_param_keeps_the_rest_byte_for_byte(query: str, stripped: str) -> None:
    """Only the credential parameter is removed; other parts keep their exact encoding."""
    assert strip_query_param(query, "api_key") == stripped


def test_strip_query_credential_is_a_no_op_for_header_keys(
    make_config: Callable[..., Config], make_auth: Any,
) -> None:
    """With keys in a header the query string is passed through untouched."""
    config = make_config()
    assert make_auth(config).strip_query_credential("api_key=s&a=1") == "api_key=s&a=1"
    query_config = make_config(api_key={"query": "api_key"})
    assert make_auth(query_config).strip_query_credential("api_key=s&a=1") == "a=1"
