"""Header rules at the proxy boundary: hop-by-hop removal (RFC 9110 7.6.1) in both directions."""

from __future__ import annotations

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    }
)


def end_to_end(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """The headers a proxy may pass on: no hop-by-hop, nothing ``Connection`` names, no ``drop``.

    ``end_to_end([(b"connection", b"X-A"), (b"x-a", b"1"), (b"accept", b"*/*")], frozenset())``
    -> ``[(b"accept", b"*/*")]``.
    """
    out = []
    listed: frozenset[bytes] = frozenset()
    for name, value in headers:
        if name in HOP_BY_HOP or name in drop or name.startswith(b"proxy-"):
            if name == b"connection":
                listed = listed | {t.strip().lower() for t in value.split(b",")}
            continue
        out.append((name, value))
    if listed:
        out = [(name, value) for name, value in out if name not in listed]
    return out
