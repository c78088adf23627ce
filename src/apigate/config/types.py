"""Small value types shared by the config model: durations, listen addresses, CIDRs, URLs."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: object) -> int:
    """Parse a window such as ``"1s"`` -> 1000 or ``"30d"`` -> 2592000000 (milliseconds)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a duration like '1s', '500ms', '1h', got {value!r}")
    if isinstance(value, int):
        raise ValueError(f"a duration needs a unit (ms, s, m, h, d): '{value}s'?")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"bad duration {value!r}: use a number and a unit (ms, s, m, h, d)")
    ms = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if ms < 1 or ms != int(ms):
        raise ValueError(f"bad duration {value!r}: must be a whole number of milliseconds >= 1")
    return int(ms)


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address: ``"0.0.0.0:8080"`` -> HostPort("0.0.0.0", 8080); ``"[::1]:80"`` too."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"bad address {value!r}: expected 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port} in {value!r}")
    return HostPort(host, port)


ListenAddress = Annotated[HostPort, BeforeValidator(parse_host_port)]


def parse_cidr(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR like '10.0.0.0/8', got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"bad CIDR {value!r}: {exc}") from None


Cidr = Annotated[str, BeforeValidator(parse_cidr)]


def parse_target_url(value: object) -> str:
    """An upstream target: ``"http://127.0.0.1:9001"`` (http only, host and port required)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL like 'http://host:port', got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ValueError(f"bad target {value!r}: only http:// upstreams are supported")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad target {value!r}: bad port") from None
    if not parts.hostname:
        raise ValueError(f"bad target {value!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad target {value!r}: a target is scheme://host:port only")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{port or 80}"


TargetUrl = Annotated[str, BeforeValidator(parse_target_url)]

_STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


def parse_storage_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a storage URL, got {value!r}")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _STORAGE_SCHEMES:
        raise ValueError(
            f"bad storage URL {value!r}: scheme must be one of {', '.join(_STORAGE_SCHEMES)}"
        )
    if scheme != "memory" and not rest.split("/", 1)[0]:
        raise ValueError(f"bad storage URL {value!r}: no host")
    if scheme == "redis+sentinel" and len(rest.split("/", 1)) < 2:
        raise ValueError(f"bad storage URL {value!r}: name the master: .../mymaster")
    if scheme != "memory":
        _check_with_the_storage_parser(scheme, value)
    return value


def _check_with_the_storage_parser(scheme: str, value: str) -> None:
    """Parse the URL as the storage will when the gateway starts (ports, db, CA file...)."""
    # Imported here: the storage modules build on this config package.
    from apigate.ratelimit.storage import resp, sentinel, slotmap  # noqa: PLC0415

    parsers = {"redis+sentinel": sentinel.parse_sentinel_url,
               "redis+cluster": slotmap.parse_cluster_url}
    try:
        parsers.get(scheme, resp.endpoint_from_url)(value)
    except (ValueError, OSError) as exc:
        raise ValueError(f"bad storage URL {value!r}: {exc}") from None


StorageUrl = Annotated[str, BeforeValidator(parse_storage_url)]
