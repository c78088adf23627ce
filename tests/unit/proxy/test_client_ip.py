"""The client address behind trusted proxies."""

from __future__ import annotations

from apigate.proxy.client_ip import TrustedProxies


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    """A peer that is not trusted cannot choose its address with X-Forwarded-For."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert trusted.client_ip("203.0.113.9", [b"1.2.3.4"]) == "203.0.113.9"


def test_rightmost_untrusted_hop_is_the_client() -> None:
    """Behind trusted proxies the right-most untrusted address is the client."""
    trusted = TrustedProxies(["10.0.0.0/8", "127.0.0.0/8"])
    chain = [b"6.6.6.6, 198.51.100.7", b"10.1.1.1"]
    assert trusted.client_ip("127.0.0.1", chain) == "198.51.100.7"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    """If every hop is a trusted proxy the first address is the origin."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert trusted.client_ip("10.0.0.1", [b"10.0.0.2, 10.0.0.3"]) == "10.0.0.2"


def test_malformed_hop_stops_trust() -> None:
    """Garbage in the chain falls back to the peer rather than trusting anything left of it."""
    trusted = TrustedProxies(["127.0.0.0/8"])
    assert trusted.client_ip("127.0.0.1", [b"1.2.3.4, not-an-ip"]) == "127.0.0.1"


def test_ports_and_ipv6_brackets_are_understood() -> None:
    """`1.2.3.4:5678` and `[2001:db8::1]:443` hops are parsed to their addresses."""
    trusted = TrustedProxies(["127.0.0.0/8"])
    assert trusted.client_ip("127.0.0.1", [b"1.2.3.4:5678"]) == "1.2.3.4"
    assert trusted.client_ip("127.0.0.1", [b"[2001:db8::1]:443"]) == "2001:db8::1"


def test_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    """A dual-stack socket's `::ffff:127.0.0.1` peer is trusted by `127.0.0.0/8`."""
    trusted = TrustedProxies(["127.0.0.0/8"])
    assert trusted.trusts("::ffff:127.0.0.1")
    assert not TrustedProxies([]).trusts("127.0.0.1")
