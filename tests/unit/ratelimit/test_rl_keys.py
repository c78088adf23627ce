"""Request keys (identity rendering, IPv6 prefixes, escaping) and request-supplied costs."""

from __future__ import annotations

import pytest

from apigate.config.model import RateLimitPolicy
from apigate.identity import Caller
from apigate.ratelimit.keys import (
    CostError,
    escape_value,
    mask_ip,
    render_identity,
    request_cost,
    request_key,
)


def identity(spec: str, caller: Caller | None = None, headers: dict[str, str] | None = None,
             prefix: int = 64) -> str:
    return render_identity(
        spec, route="users", caller=caller or Caller("203.0.113.7"), headers=headers or {},
        ipv6_prefix=prefix,
    )


def test_ipv4_client_is_keyed_by_address() -> None:
    """client_ip renders the IPv4 address as is."""
    assert identity("client_ip") == "ip=203.0.113.7"


def test_ipv6_clients_in_one_prefix_share_a_key() -> None:
    """Addresses inside one /64 render the same; another /64 differs."""
    a = identity("client_ip", Caller("2001:db8:1:2::1"))
    b = identity("client_ip", Caller("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    c = identity("client_ip", Caller("2001:db8:1:3::1"))
    assert a == b == "ip=2001:db8:1:2::/64"
    assert c != a


def test_ipv6_prefix_is_configurable() -> None:
    """With a /48 prefix, the fourth group no longer matters."""
    assert identity("client_ip", Caller("2001:db8:1:2::1"), prefix=48) == "ip=2001:db8:1::/48"


def test_ipv4_mapped_ipv6_is_treated_as_ipv4() -> None:
    """::ffff:a.b.c.d shares the bucket of a.b.c.d."""
    assert identity("client_ip", Caller("::ffff:203.0.113.7")) == "ip=203.0.113.7"


def test_composite_key_joins_parts_in_order() -> None:
    """consumer+route renders both parts joined by '+'."""
    assert identity("consumer+route", Caller("1.2.3.4", "acme")) == "consumer=acme+route=users"


def test_header_and_claim_parts() -> None:
    """header:NAME reads the lower-cased header; jwt:CLAIM reads the verified claim."""
    caller = Caller("1.2.3.4", "acme", {"tenant": "t1", "level": 3})
    assert identity("header:X-Tenant", headers={"x-tenant": "t9"}) == "header:x-tenant=t9"
    assert identity("jwt:tenant", caller) == "jwt:tenant=t1"
    assert identity("jwt:level", caller) == "jwt:level=3"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("header:X-Tenant", "header:x-tenant="),
        ("consumer", "consumer="),
        ("jwt:tenant", "jwt:tenant="),
    ],
)
def test_missing_input_shares_one_bucket(spec: str, expected: str) -> None:
    """No header, consumer or claim renders an empty value: limited together, never unlimited."""
    assert identity(spec) == expected


def test_client_chosen_value_cannot_inject_a_hash_tag_or_separator() -> None:
    """Braces, '+', '=' and '%' are escaped, so the key's hash tag stays ours."""
    rendered = identity("header:X-Tenant+route", headers={"x-tenant": "}x{+route=admin%"})
    assert rendered == "header:x-tenant=%7Dx%7B%2Broute%3Dadmin%25+route=users"
    assert "{" not in rendered
    assert "}" not in rendered


def test_long_values_are_hashed() -> None:
    """A value longer than 64 escaped characters becomes a fixed-size sha256."""
    long = escape_value("a" * 65)
    assert long.startswith("sha256-")
    assert len(long) == len("sha256-") + 64
    assert escape_value("a" * 64) == "a" * 64
    assert escape_value("b" * 65) != long


def test_non_address_client_ip_is_escaped() -> None:
    """A client_ip that is not an address (never expected) is escaped, not trusted."""
    assert mask_ip("not an ip") == "not%20an%20ip"


def test_request_key_has_prefix_hash_tag_and_policy() -> None:
    """The storage key is <prefix>:{<identity>}:<policy>."""
    policy = RateLimitPolicy.model_validate({"limit": 10, "window": "1s"})
    key = request_key(
        key_prefix="apigate", policy_name="per-ip", policy=policy, route="users",
        caller=Caller("203.0.113.7"), headers={},
    )
    assert key == "apigate:{ip=203.0.113.7}:per-ip"


def _cost_policy(limit: int = 10, burst: int = 0) -> RateLimitPolicy:
    algorithm = "token_bucket" if burst else "fixed_window"
    return RateLimitPolicy.model_validate(
        {"limit": limit, "window": "1s", "algorithm": algorithm, "burst": burst,
         "cost": "header:X-Cost"}
    )


def test_fixed_cost_is_used_as_is() -> None:
    """cost: 3 charges 3 whatever the headers say."""
    policy = RateLimitPolicy.model_validate({"limit": 10, "window": "1s", "cost": 3})
    assert request_cost(policy, {"x-cost": "7"}) == 3


def test_header_cost_is_parsed() -> None:
    """cost: header:X-Cost reads a whole number, spaces around it allowed."""
    assert request_cost(_cost_policy(), {"x-cost": " 4 "}) == 4
    assert request_cost(_cost_policy(limit=10, burst=5), {"x-cost": "15"}) == 15


@pytest.mark.parametrize("value", ["0", "-1", "+3", "1.5", "abc", "", "11", "1 1", "٣",
                                   "9" * 40])
def test_bad_header_cost_is_a_clear_error(value: str) -> None:
    """Zero, negative, non-numeric, non-ASCII or above limit+burst costs are refused."""
    with pytest.raises(CostError, match=r"bad X-Cost header: expected a whole number from 1 to 10"):
        request_cost(_cost_policy(), {"x-cost": value})


def test_missing_header_cost_is_a_clear_error() -> None:
    """A route charging a header cost refuses a request without that header."""
    with pytest.raises(CostError, match="missing X-Cost header"):
        request_cost(_cost_policy(), {})
