"""Match a request (host, canonical path, method) to a route: first match in file order wins."""

from __future__ import annotations

import re
from dataclasses import dataclass

from apigate.config.model import RouteConfig


@dataclass(frozen=True, slots=True)
class Match:
    """A matched route, its name and the path to send upstream (after ``strip_prefix``).

    ``name`` is ``route.name`` as a plain field: the request path reads it several times, and
    each read of a RouteConfig (pydantic) attribute costs about ten times a plain one.
    """

    route: RouteConfig
    name: str
    upstream_path: str


class MethodNotAllowed(Exception):
    """A route matched host and path but not the method; ``allowed`` goes in ``Allow``."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class _CompiledRoute:
    __slots__ = (
        "exact_hosts", "methods", "name", "path", "prefix", "regex", "route", "strip", "wildcards"
    )

    def __init__(self, route: RouteConfig) -> None:
        match = route.match
        self.route = route
        self.name = route.name  # read per request: plain attributes, not the model's
        self.strip = route.strip_prefix
        self.exact_hosts = frozenset(h for h in match.hosts if not h.startswith("*."))
        self.wildcards = tuple(h[1:] for h in match.hosts if h.startswith("*."))  # ".example.com"
        self.methods = frozenset(match.methods)
        self.path = match.path
        self.prefix = match.path_prefix.rstrip("/") if match.path_prefix else None
        self.regex = re.compile(match.path_regex) if match.path_regex else None

    def host_matches(self, host: str) -> bool:
        if not self.exact_hosts and not self.wildcards:
            return True
        return host in self.exact_hosts or host.endswith(self.wildcards)

    def path_matches(self, path: str) -> bool:
        if self.path is not None:
            return path == self.path
        if self.prefix is not None:
            # Segment boundary: "/users" matches "/users" and "/users/1", never "/usersx".
            return self.prefix in ("", path) or path.startswith(self.prefix + "/")
        if self.regex is not None:
            return self.regex.match(path) is not None
        return True

    def upstream_path(self, path: str) -> str:
        if self.strip and self.prefix:
            return path[len(self.prefix) :] or "/"
        return path


class Router:
    """Routes in file order.

    ``Router(routes).match("api.example.com", "/users/1", "GET")`` -> ``Match`` or None;
    raises :class:`MethodNotAllowed` when only the method is wrong.
    """

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self._routes = tuple(_CompiledRoute(r) for r in routes)

    def match(self, host: str, path: str, method: str) -> Match | None:
        allowed: list[str] = []
        for compiled in self._routes:
            if not compiled.host_matches(host) or not compiled.path_matches(path):
                continue
            if compiled.methods and method not in compiled.methods:
                allowed.extend(m for m in compiled.route.match.methods if m not in allowed)
                continue
            return Match(compiled.route, compiled.name, compiled.upstream_path(path))
        if allowed:
            raise MethodNotAllowed(tuple(allowed))
        return None


def host_without_port(host: bytes) -> str:
    """``b"API.example.com:8080"`` -> ``"api.example.com"``; ``b"[::1]:80"`` -> ``"[::1]"``."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.partition(":")[0]
