"""Routing on a running gateway: hosts, path forms, methods, strip_prefix, first match, the
canonical path, and the 400/404/405 answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, Response, get
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

ROUTES = [
    route("exact-host", "exact-host", hosts=["api.example.com"], path_prefix="/h"),
    route("wild-host", "wild-host", hosts=["*.example.com"], path_prefix="/h"),
    route("exact-path", "exact-path", path="/exact"),
    route("regex", "regex", path_regex="^/items/[0-9]+$"),
    route("strip", "strip", path_prefix="/strip", strip_prefix=True),
    route("methods", "methods", path_prefix="/methods", methods=["GET", "POST"]),
    route("first", "first", path_prefix="/first"),
    route("second", "second", path_prefix="/first/second"),
    route("canon", "canon", path_prefix="/canon"),
]


@pytest.fixture(scope="module")
def ups(upstream_loop: UpstreamLoop) -> dict[str, ScriptedUpstream]:
    return {r["name"]: upstream_loop.serve(r["name"]) for r in ROUTES}


@pytest.fixture(scope="module")
def gateway(
    ups: dict[str, ScriptedUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = gateway_config({name: upstream(up.url) for name, up in ups.items()}, ROUTES)
    with running_gateway(config, tmp_path_factory.mktemp("routing")) as gw:
        yield gw


def send(gateway: Gateway, path: str, host: str = "gw.test", method: str = "GET") -> Response:
    with RawClient(gateway.port) as client:
        return client.request(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


def routed_to(response: Response) -> str | None:
    """The scripted upstream that answered (its name is in ``x-upstream``), or None."""
    return response.header("x-upstream") if response.status == 200 else None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "exact-host"),
        ("API.Example.COM:8080", "exact-host"),
        ("a.example.com", "wild-host"),
        ("a.b.example.com", "wild-host"),
        ("example.com", None),
        ("example.com.evil.test", None),
    ],
)
def test_hosts_exact_and_wildcard(gateway: Gateway, host: str, expected: str | None) -> None:
    """Hosts match exactly (case and port ignored) or by ``*.example.com``, which needs a label."""
    response = send(gateway, "/h/x", host=host)
    assert routed_to(response) == expected
    if expected is None:
        assert response.status == 404


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/exact", "exact-path"),
        ("/exact/more", None),
        ("/items/42", "regex"),
        ("/items/x", None),
        ("/first/second/x", "first"),
        ("/firstly", None),
    ],
)
def test_path_forms_and_first_match(gateway: Gateway, path: str, expected: str | None) -> None:
    """``path`` is exact, ``path_regex`` must match, ``path_prefix`` stops at a segment boundary,
    and the first matching route in file order wins."""
    assert routed_to(send(gateway, path)) == expected


@pytest.mark.parametrize(
    ("path", "upstream_target"),
    [("/strip/a/b?q=1", "/a/b?q=1"), ("/strip", "/"), ("/strip/", "/")],
)
def test_strip_prefix(
    gateway: Gateway, ups: dict[str, ScriptedUpstream], path: str, upstream_target: str
) -> None:
    """``strip_prefix`` removes the matched prefix (keeping the query) before forwarding."""
    ups["strip"].reset()
    assert routed_to(send(gateway, path)) == "strip"
    assert ups["strip"].requests[0].target == upstream_target


def test_wrong_method_is_405_with_allow(gateway: Gateway) -> None:
    """A path that matches only with another method is answered 405 with an Allow header."""
    response = send(gateway, "/methods/x", method="DELETE")
    assert response.status == 405
    assert response.header("allow") == "GET, POST"
    assert set(response.json()) == {"error", "request_id"}
    assert routed_to(send(gateway, "/methods/x", method="GET")) == "methods"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/x/../canon/./b//c/%61", "/canon/b/c/a"),
        ("/canon/%7euser/%2a", "/canon/~user/%2A"),
        ("//canon///a/b/..", "/canon/a/"),
    ],
)
def test_canonical_path_is_routed_and_forwarded(
    gateway: Gateway, ups: dict[str, ScriptedUpstream], raw: str, canonical: str
) -> None:
    """Dot segments, ``//`` and percent-encoding are normalised before routing and forwarding."""
    ups["canon"].reset()
    assert routed_to(send(gateway, raw)) == "canon"
    assert ups["canon"].requests[0].target == canonical


@pytest.mark.parametrize("path", ["/../etc/passwd", "/canon/../../x", "/canon/%2e%2e/%2e%2e/x",
                                  "/canon/..%2fadmin", "/canon/%zz"])
def test_uncanonicalisable_path_is_400_and_closed(gateway: Gateway, path: str) -> None:
    """A path escaping the root or with a bad or forbidden escape is 400, then the close."""
    with RawClient(gateway.port) as client:
        response = client.request(get(path))
        assert response.status == 400
        assert set(response.json()) == {"error", "request_id"}
        assert client.is_closed()


def test_no_route_is_404(gateway: Gateway) -> None:
    """A request no route matches is answered with a JSON 404 on a connection that stays usable."""
    with RawClient(gateway.port) as client:
        response = client.request(get("/nowhere"))
        assert response.status == 404
        assert response.json()["error"]
        assert response.json()["request_id"] == response.header("x-request-id")
        assert routed_to(client.request(get("/exact"))) == "exact-path"
