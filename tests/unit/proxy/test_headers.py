"""Hop-by-hop header removal at the proxy boundary."""

from __future__ import annotations

from apigate.proxy.headers import end_to_end


def test_hop_by_hop_and_connection_listed_headers_are_removed() -> None:
    """Fixed hop-by-hop names, Proxy-* and names listed in Connection (any case) are dropped."""
    headers = [
        (b"connection", b"close, X-Secret"),
        (b"connection", b"x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"basic x"),
        (b"proxy-foo", b"1"),
        (b"x-secret", b"1"),
        (b"x-other", b"2"),
        (b"accept", b"*/*"),
    ]
    assert end_to_end(headers, frozenset()) == [(b"accept", b"*/*")]


def test_drop_set_is_removed_too() -> None:
    """Names in the drop set (gateway-set and credential headers) are not passed on."""
    headers = [(b"authorization", b"Bearer x"), (b"host", b"a"), (b"x-keep", b"1")]
    assert end_to_end(headers, frozenset({b"authorization", b"host"})) == [(b"x-keep", b"1")]
