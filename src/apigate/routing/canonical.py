"""The one canonical form of a request path that routing, auth and rate-limit keys all use.

RFC 3986 section 6.2.2: percent-encoded unreserved characters are decoded, other escapes are
upper-cased, ``//`` is collapsed and dot segments are removed (section 5.2.4). Encoded ``/``,
``\\`` and NUL are refused: an upstream that decodes them would see a different path than the
one we routed (``/public/..%2fadmin``).
"""

from __future__ import annotations

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@"  (plus "/" between segments)
_ALLOWED = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/%")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_REFUSED_ESCAPES = {b"2F", b"5C", b"00"}


class BadPath(ValueError):
    """The path cannot be canonicalised; the request is answered 400."""


_CACHE: dict[bytes, str] = {}
_CACHE_MAX = 4096


def canonical_path(raw: bytes) -> str:
    """Canonicalise an origin-form path (no query).

    >>> canonical_path(b"/a//b/./c/../%7Euser/%2e%2e/x%2a")
    '/a/b/x%2A'

    Results are cached (bounded): an API sees the same few thousand paths again and again.
    """
    cached = _CACHE.get(raw)
    if cached is not None:
        return cached
    path = _canonicalise(raw)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[raw] = path
    return path


def _canonicalise(raw: bytes) -> str:
    if not raw.startswith(b"/"):
        raise BadPath("path must start with '/'")
    if not _ALLOWED.issuperset(raw):
        raise BadPath("path has characters that must be percent-encoded")
    if b"%" in raw:
        raw = _normalise_escapes(raw)
    segments: list[bytes] = []
    for segment in raw.split(b"/")[1:]:
        if segment.startswith((b"..;", b".;")):
            # Servlet containers read ";..." as a path parameter and resolve "..;" as "..":
            # the upstream would route elsewhere than we did.
            raise BadPath("dot segment with path parameters")
        if segment == b"..":
            if not segments:
                raise BadPath("path escapes the root")
            segments.pop()
        elif segment not in (b".", b""):
            segments.append(segment)
    trailing = raw.endswith((b"/", b"/.", b"/..")) and bool(segments)
    path = b"/" + b"/".join(segments) + (b"/" if trailing else b"")
    return path.decode("ascii")


def _normalise_escapes(raw: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte != 0x25:  # '%'
            out.append(byte)
            i += 1
            continue
        pair = raw[i + 1 : i + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            raise BadPath("bad percent-encoding in path")
        pair = pair.upper()
        if pair in _REFUSED_ESCAPES:
            raise BadPath("encoded '/', '\\' or NUL in path")
        value = int(pair, 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + pair
        i += 3
    return bytes(out)
