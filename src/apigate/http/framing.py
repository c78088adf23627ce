"""RFC 9110 / 9112 rules about what a request head *means*, on top of llhttp's syntax checks.

llhttp already refuses CL with TE, duplicate or malformed Content-Length, TE lists that do not
end in chunked, bad chunk framing, obs-fold and bad header bytes. What is left is ours.
"""

from __future__ import annotations

import ipaddress

from apigate.http.errors import HttpError


def check_host(hosts: list[bytes], version: str) -> bytes:
    """RFC 9112 3.2: exactly one Host in HTTP/1.1 (at most one in 1.0); returns it or b""."""
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header", close=True)
    if not hosts:
        if version == "1.1":
            raise HttpError(400, "missing Host header", close=True)
        return b""
    host = hosts[0].strip()
    if host not in _VALID_HOSTS and not _remember_valid(host):
        raise HttpError(400, "bad Host header", close=True)
    return host


# Hosts already found valid: a gateway sees few distinct ones, so most checks are one lookup.
_VALID_HOSTS: dict[bytes, None] = {}
_VALID_HOSTS_MAX = 1024


def _remember_valid(host: bytes) -> bool:
    if not valid_host(host):
        return False
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS[host] = None
    return True


_REG_NAME = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;="
)


def valid_host(host: bytes) -> bool:
    """RFC 9112 3.2 / RFC 3986 3.2.2: ``uri-host [":" port]``.

    ``b"api.example.com:8080"``, ``b"[::1]"`` and ``b"127.0.0.1"`` pass; ``b"[::1"``,
    ``b"a b"`` and ``b"h:80x"`` do not.
    """
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return False
        try:
            ipaddress.IPv6Address(host[1:end].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        rest = host[end + 1 :]
        return rest == b"" or ((rest.startswith(b":") and rest[1:].isdigit()) or rest == b":")
    name, _, port = host.partition(b":")
    if port and not port.isdigit():
        return False
    return bool(name) and _REG_NAME.issuperset(name)


def check_transfer_encoding(values: list[bytes], version: str) -> bool:
    """Return True for a chunked body; refuse any other coding (RFC 9112 6.1).

    llhttp has checked that a TE list ends in ``chunked``; a coding before it that we do not
    implement is 501, and TE in an HTTP/1.0 request is faulty framing (400).
    """
    if not values:
        return False
    if version != "1.1":
        raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request", close=True)
    codings = [c.strip().lower() for v in values for c in v.split(b",")]
    if codings[-1] != b"chunked":
        raise HttpError(400, "Transfer-Encoding must end in chunked", close=True)
    if codings != [b"chunked"]:
        raise HttpError(501, "only Transfer-Encoding: chunked is supported", close=True)
    return True


def split_target(method: str, target: bytes) -> tuple[bytes, bytes]:
    """Split the request-target into (path, query); RFC 9112 3.2 forms.

    ``b"/a?b=1"`` -> ``(b"/a", b"b=1")``; absolute-form ``b"http://h/a"`` -> ``(b"/a", b"")``.
    """
    if b"#" in target:
        raise HttpError(400, "fragment in request-target", close=True)
    if target == b"*":
        if method != "OPTIONS":
            raise HttpError(400, "asterisk-form is only for OPTIONS", close=True)
        return b"*", b""
    if not target.startswith(b"/"):
        lowered = target[:8].lower()
        if not lowered.startswith((b"http://", b"https://")):
            raise HttpError(400, "bad request-target", close=True)
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
        if b"?" in rest and (slash < 0 or rest.find(b"?") < slash):
            target = b"/" + rest[rest.find(b"?") :]
    path, _, query = target.partition(b"?")
    return path, query
