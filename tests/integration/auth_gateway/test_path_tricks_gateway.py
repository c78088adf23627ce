"""Path tricks cannot reach a key-protected route without a key: whether ``/public`` (no auth)
comes before or after ``/admin`` (api_key), every disguised ``/admin`` is 400 or 401 and the
upstream records nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.auth_gateway.helpers import (
    assert_refused,
    header_values,
    only_request,
    quiet_config,
    route,
    send,
)
from tests.integration.http.rawclient import RawClient
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

from apigate.auth.api_key import hash_key

KEY = "path-tricks-key-5a1f"

TRICKS = [
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "//admin",
    "/%61dmin",
    "/public/..%2fadmin",
    "/public/..%2Fadmin",
    "/public/%2e%2e%2fadmin",
    "/public/..%5cadmin",
    "/./admin",
    "/public/./../admin/",
    "/public/x/../../admin",
    "/admin%00",
    "/ad%6din/secret",
]


@pytest.fixture(scope="module")
def upstream(auth_upstreams: UpstreamLoop) -> ScriptedUpstream:
    return auth_upstreams.serve("paths")


@pytest.fixture(scope="module", params=["public-first", "admin-first"])
def gateway(request: pytest.FixtureRequest, upstream: ScriptedUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    public = route("public", "/public", "up")
    protected = route("admin", "/admin", "up", auth="api_key")
    routes = [public, protected] if request.param == "public-first" else [protected, public]
    config = quiet_config({"up": upstream.url}, routes,
                          consumers={"ops": {"api_keys": [hash_key(KEY)]}})
    with running_gateway(config, tmp_path_factory.mktemp("paths")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _clear(upstream: ScriptedUpstream) -> None:
    upstream.requests.clear()


def test_controls_public_open_admin_keyed(gateway: Gateway, upstream: ScriptedUpstream) -> None:
    """The controls: /public is served without a key, /admin with a key and only with one."""
    assert send(gateway.port, "/public/x").status == 200
    assert_refused(send(gateway.port, "/admin"))
    assert send(gateway.port, "/admin", [("X-API-Key", KEY)]).status == 200
    public, admin = upstream.requests
    assert public.target == "/public/x"
    assert header_values(admin, "x-consumer") == ["ops"]


@pytest.mark.parametrize("path", TRICKS)
def test_disguised_admin_path_needs_a_key(gateway: Gateway, upstream: ScriptedUpstream,
                                          path: str) -> None:
    """A dot-segment, encoded or doubled-slash spelling of /admin is 400 or 401, never forwarded."""
    with RawClient(gateway.port) as client:
        response = client.request(f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
    assert response.status in (400, 401), (path, response.status, response.body)
    assert_refused(response, response.status)
    assert upstream.requests == []


@pytest.mark.parametrize("path", ["/public/../admin", "/%61dmin", "//admin"])
def test_disguised_admin_path_with_key_reaches_canonical_admin(
    gateway: Gateway, upstream: ScriptedUpstream, path: str
) -> None:
    """With a key, a canonicalisable spelling of /admin is forwarded as the canonical /admin."""
    response = send(gateway.port, path, [("X-API-Key", KEY)])
    assert response.status == 200, response.body
    seen = only_request(upstream)
    assert seen.target == "/admin"
    assert header_values(seen, "x-consumer") == ["ops"]


def test_absolute_form_target_is_routed_on_its_path(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """An absolute-form target with dot segments still lands on /admin and needs a key."""
    with RawClient(gateway.port) as client:
        response = client.request(
            b"GET http://gw.test/public/../admin HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert response.status in (400, 401), (response.status, response.body)
    assert upstream.requests == []
