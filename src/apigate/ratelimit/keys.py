"""What a request is charged under a policy, and under which storage key.

A policy's ``key`` spec names the parts of the request that identify a bucket; each part is
rendered as ``name=value`` and parts are joined by ``+`` in spec order::

    client_ip        -> ip=203.0.113.7          (IPv6: ip=2001:db8:1:2::/64, the /64 prefix)
    consumer         -> consumer=acme
    route            -> route=users
    header:X-Tenant  -> header:x-tenant=t1
    jwt:tenant       -> jwt:tenant=t1
    consumer+route   -> consumer=acme+route=users

That rendered identity is what the admin API takes as ``key``. The storage key is
``<key_prefix>:{<identity>}:<policy>``; the identity is the Redis Cluster hash tag, so every
limit of one identity lands in one slot.

Missing input never means unlimited: a request without the header, consumer or claim renders
an empty value (``header:x-tenant=``) and so shares one bucket with every other such request.

Values are escaped so a client cannot shape the key: every byte outside ``[A-Za-z0-9-._~:@/]``
becomes ``%XX`` (so ``{ } + = %`` and spaces never appear raw), and an escaped value longer
than 64 characters is replaced by ``sha256-<hex>`` of the raw value.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from urllib.parse import quote

from apigate.config.model import RateLimitPolicy
from apigate.identity import Caller

MAX_VALUE_CHARS = 64
MAX_COST_DIGITS = 12
_SAFE = "-._~:@/"
_DIGITS = re.compile(r"[0-9]+")


class CostError(ValueError):
    """A request-supplied cost is missing or unusable; the request is answered 400."""


def escape_value(value: str) -> str:
    """Percent-escape a client-chosen value; hash it when long: ``"a{b}"`` -> ``"a%7Bb%7D"``."""
    raw = value.encode("utf-8", "surrogatepass")
    escaped = quote(raw, safe=_SAFE)
    if len(escaped) <= MAX_VALUE_CHARS:
        return escaped
    return "sha256-" + hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=16_384)  # parsing an address costs more than the rest of a key
def mask_ip(address: str, ipv6_prefix: int = 64) -> str:
    """The client address as keyed: ``"2001:db8::1"`` -> ``"2001:db8::/64"``.

    IPv4 stays as is, IPv4-mapped IPv6 (``::ffff:198.51.100.1``) becomes IPv4; a string that
    is not an address is escaped like any other value.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return escape_value(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def _claim_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def render_part(
    part: str,
    *,
    route: str,
    caller: Caller,
    headers: Mapping[str, str],
    ipv6_prefix: int,
) -> str:
    """One key part as ``name=value``: ``"header:X-Tenant"`` -> ``"header:x-tenant=t1"``."""
    if part == "client_ip":
        return "ip=" + mask_ip(caller.client_ip, ipv6_prefix)
    if part == "consumer":
        return "consumer=" + escape_value(caller.consumer or "")
    if part == "route":
        return "route=" + escape_value(route)
    kind, _, name = part.partition(":")
    if kind == "header":
        lower = name.lower()
        return f"header:{lower}=" + escape_value(headers.get(lower, ""))
    if kind == "jwt":
        return f"jwt:{name}=" + escape_value(_claim_text(caller.claims.get(name)))
    raise ValueError(f"bad key part {part!r}")


def render_identity(
    key_spec: str,
    *,
    route: str,
    caller: Caller,
    headers: Mapping[str, str],
    ipv6_prefix: int = 64,
) -> str:
    """The rendered identity: ``"consumer+route"`` -> ``"consumer=acme+route=users"``."""
    return "+".join(
        render_part(p, route=route, caller=caller, headers=headers, ipv6_prefix=ipv6_prefix)
        for p in key_spec.split("+")
    )


def storage_key(key_prefix: str, identity: str, policy_name: str) -> str:
    """``("apigate", "ip=203.0.113.7", "per-ip")`` -> ``"apigate:{ip=203.0.113.7}:per-ip"``."""
    return f"{key_prefix}:{{{identity}}}:{policy_name}"


def request_key(
    *,
    key_prefix: str,
    policy_name: str,
    policy: RateLimitPolicy,
    route: str,
    caller: Caller,
    headers: Mapping[str, str],
    ipv6_prefix: int = 64,
) -> str:
    """The storage key of ``policy`` for one request."""
    identity = render_identity(
        policy.key, route=route, caller=caller, headers=headers, ipv6_prefix=ipv6_prefix
    )
    return storage_key(key_prefix, identity, policy_name)


def request_cost(policy: RateLimitPolicy, headers: Mapping[str, str]) -> int:
    """What a request is charged: ``cost: 3`` -> 3; ``cost: header:X-Cost`` reads that header.

    The header must be a whole number from 1 to ``limit + burst`` (no sign, no spaces inside);
    anything else raises :class:`CostError` with a message fit for a 400 response.
    """
    if isinstance(policy.cost, int):
        return policy.cost
    name = policy.cost.partition(":")[2]
    most = policy.limit + policy.burst
    raw = headers.get(name.lower())
    if raw is None:
        raise CostError(f"missing {name} header: this route charges a request-supplied cost")
    text = raw.strip()
    if not _DIGITS.fullmatch(text) or len(text) > MAX_COST_DIGITS or not 1 <= int(text) <= most:
        raise CostError(f"bad {name} header: expected a whole number from 1 to {most}")
    return int(text)
