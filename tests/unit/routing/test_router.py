"""Route matching: hosts, path forms, methods, strip_prefix, first match wins."""

from __future__ import annotations

import pytest

from apigate.config.model import RouteConfig, RouteMatch
from apigate.routing.router import MethodNotAllowed, Router, host_without_port


def route(name: str, **match: object) -> RouteConfig:
    strip = bool(match.pop("strip_prefix", False))
    return RouteConfig(name=name, match=RouteMatch(**match), upstream="u", strip_prefix=strip)


def test_prefix_matches_on_segment_boundaries() -> None:
    """`/users` matches `/users` and `/users/1` but not `/usersx`."""
    router = Router((route("users", path_prefix="/users"),))
    assert router.match("h", "/users", "GET") is not None
    assert router.match("h", "/users/1", "GET") is not None
    assert router.match("h", "/usersx", "GET") is None


def test_first_match_wins_in_file_order() -> None:
    """Two routes that both match: the earlier one is used."""
    router = Router((route("a", path_prefix="/api"), route("b", path_prefix="/api/v2")))
    found = router.match("h", "/api/v2/x", "GET")
    assert found is not None
    assert found.route.name == "a"
    assert found.name == "a"  # the plain copy the request path reads


def test_exact_path_and_regex() -> None:
    """`path` is exact and `path_regex` anchors at the start."""
    router = Router((route("exact", path="/health"), route("re", path_regex=r"^/items/\d+$")))
    exact = router.match("h", "/health", "GET")
    assert exact is not None
    assert exact.route.name == "exact"
    assert router.match("h", "/health/x", "GET") is None
    regex = router.match("h", "/items/42", "GET")
    assert regex is not None
    assert regex.route.name == "re"
    assert router.match("h", "/items/x", "GET") is None


def test_hosts_exact_and_wildcard() -> None:
    """Exact hosts match exactly; `*.example.com` matches subdomains but not the apex."""
    router = Router(
        (route("api", hosts=("api.example.com",)), route("wild", hosts=("*.example.com",)))
    )
    api = router.match("api.example.com", "/", "GET")
    assert api is not None
    assert api.route.name == "api"
    wild = router.match("a.b.example.com", "/", "GET")
    assert wild is not None
    assert wild.route.name == "wild"
    assert router.match("example.com", "/", "GET") is None
    assert router.match("evil-example.com", "/", "GET") is None


def test_wrong_method_is_405_with_allowed_methods() -> None:
    """A route matching host and path but not the method raises MethodNotAllowed."""
    router = Router((route("users", path_prefix="/users", methods=("get", "POST")),))
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("h", "/users", "DELETE")
    assert caught.value.allowed == ("GET", "POST")


def test_method_mismatch_falls_through_to_a_later_route() -> None:
    """A later route that allows the method is used instead of a 405."""
    router = Router(
        (route("read", path_prefix="/users", methods=("GET",)), route("any", path_prefix="/"))
    )
    found = router.match("h", "/users", "POST")
    assert found is not None
    assert found.route.name == "any"


def test_strip_prefix() -> None:
    """strip_prefix removes the prefix and keeps a leading slash."""
    router = Router((route("users", path_prefix="/users", strip_prefix=True),))
    assert router.match("h", "/users/42", "GET").upstream_path == "/42"  # type: ignore[union-attr]
    assert router.match("h", "/users", "GET").upstream_path == "/"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("host", "expected"),
    [(b"API.Example.com:8080", "api.example.com"), (b"[::1]:80", "[::1]"), (b"h", "h")],
)
def test_host_without_port(host: bytes, expected: str) -> None:
    """The Host header is lower-cased and its port removed before matching."""
    assert host_without_port(host) == expected
