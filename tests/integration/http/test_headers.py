"""Header rules at the proxy boundary and the client address: hop-by-hop removal both ways,
X-Forwarded-*, X-Request-ID, Host, X-Consumer, and trusted proxies."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, Response, get
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamConn, UpstreamLoop

LIMIT = {"per-ip": {"limit": 1, "window": "1h", "algorithm": "fixed_window", "key": "client_ip"}}


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("headers")


def _config(scripted: ScriptedUpstream, **server: object) -> dict[str, object]:
    config = gateway_config(
        {"up": upstream(scripted.url)},
        [
            route("limited", "up", path_prefix="/limited", rate_limits=["per-ip"]),
            route("all", "up", path_prefix="/"),
        ],
        **server,
    )
    config["rate_limits"] = LIMIT
    return config


@pytest.fixture(scope="module")
def gateway(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(_config(scripted), tmp_path_factory.mktemp("hdr")) as gw:
        yield gw


@pytest.fixture(scope="module")
def behind_proxy(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway that trusts every loopback peer as a load balancer."""
    config = _config(scripted, trusted_proxies=["127.0.0.0/8"])
    with running_gateway(config, tmp_path_factory.mktemp("trusted")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _fresh(scripted: ScriptedUpstream) -> None:
    scripted.reset()


def send(gateway: Gateway, data: bytes) -> Response:
    with RawClient(gateway.port) as client:
        return client.request(data)


def test_hop_by_hop_request_headers_are_stripped(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Hop-by-hop headers and every header named in Connection (any case) never reach upstream."""
    extra = (
        "Connection: keep-alive, X-Hop-One,x-HOP-two\r\nconnection: X-Third\r\n"
        "X-Hop-One: 1\r\nX-HOP-TWO: 2\r\nx-third: 3\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        "Trailer: X-T\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n"
        "Proxy-Foo: bar\r\nX-End-To-End: kept\r\n"
    )
    assert send(gateway, get("/h", extra=extra)).status == 200
    names = scripted.requests[0].names()
    stripped = {
        "connection", "x-hop-one", "x-hop-two", "x-third", "keep-alive", "te", "trailer",
        "proxy-authorization", "proxy-connection", "proxy-foo",
    }
    assert not names & stripped
    assert scripted.requests[0].header("x-end-to-end") == "kept"


def test_hop_by_hop_response_headers_are_stripped(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Hop-by-hop response headers and those the upstream's Connection names are not passed on."""

    async def reply(conn: UpstreamConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-SECRET: s\r\n"
                b"Keep-Alive: timeout=9\r\nProxy-Authenticate: Basic\r\nTrailer: X-Z\r\n"
                b"Upgrade: nothing\r\nX-Public: p\r\nContent-Length: 2\r\n\r\nok"
            )

    scripted.reset(reply)
    response = send(gateway, get("/h"))
    assert response.status == 200
    assert response.body == b"ok"
    names = {n for n, _ in response.headers}
    assert not names & {"x-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert response.header("connection") is None
    assert response.header("x-public") == "p"


def test_forwarded_headers_and_host(gateway: Gateway, scripted: ScriptedUpstream) -> None:
    """The upstream gets the client's Host unchanged and X-Forwarded-For/-Proto/-Host set by us."""
    spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
    assert send(gateway, get("/f", host="Api.Example.com:8443", extra=spoof)).status == 200
    request = scripted.requests[0]
    assert request.header("host") == "Api.Example.com:8443"
    assert [v for n, v in request.headers if n == "host"] == ["Api.Example.com:8443"]
    assert request.header("x-forwarded-for") == "127.0.0.1"
    assert request.header("x-forwarded-proto") == "http"
    assert request.header("x-forwarded-host") == "Api.Example.com:8443"


@pytest.mark.parametrize("host", ["[::1]:8080", "127.0.0.1", "xn--bcher-kva.example:443", "h.t:"])
def test_valid_host_forms_are_accepted_unchanged(
    gateway: Gateway, scripted: ScriptedUpstream, host: str
) -> None:
    """IPv6 literals, IPv4, registered names and an empty port are valid Host values, passed on."""
    assert send(gateway, get("/host", host=host)).status == 200
    assert scripted.requests[0].header("host") == host


def test_valid_request_id_is_propagated_and_echoed(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A valid client X-Request-ID goes upstream unchanged and comes back to the client."""
    response = send(gateway, get("/r", extra="X-Request-ID: abc-123.DEF:7\r\n"))
    assert response.header("x-request-id") == "abc-123.DEF:7"
    assert scripted.requests[0].header("x-request-id") == "abc-123.DEF:7"


@pytest.mark.parametrize("given", [None, "has space", "x" * 129, "bad\"quote"])
def test_request_id_is_generated_when_missing_or_invalid(
    gateway: Gateway, scripted: ScriptedUpstream, given: str | None
) -> None:
    """Without a usable X-Request-ID the gateway makes one, sends it upstream and echoes it."""
    extra = f"X-Request-ID: {given}\r\n" if given is not None else ""
    response = send(gateway, get("/r", extra=extra))
    generated = response.header("x-request-id") or ""
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert [v for n, v in scripted.requests[0].headers if n == "x-request-id"] == [generated]


def test_client_sent_x_consumer_never_reaches_upstream(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A client cannot claim a consumer identity: X-Consumer is dropped from its request."""
    assert send(gateway, get("/c", extra="X-Consumer: admin\r\nx-consumer: root\r\n")).status == 200
    assert "x-consumer" not in scripted.requests[0].names()


def test_untrusted_peer_is_the_client_whatever_x_forwarded_for_says(gateway: Gateway) -> None:
    """Without trusted proxies the socket peer is the client: varying X-Forwarded-For does not
    escape a per-IP limit."""
    first = send(gateway, get("/limited", extra="X-Forwarded-For: 198.51.100.1\r\n"))
    second = send(gateway, get("/limited", extra="X-Forwarded-For: 198.51.100.2\r\n"))
    assert (first.status, second.status) == (200, 429)


def test_trusted_proxy_client_is_rightmost_untrusted_address(
    behind_proxy: Gateway, scripted: ScriptedUpstream
) -> None:
    """Behind a trusted proxy the client is the right-most untrusted X-Forwarded-For address;
    addresses left of it (written by the client) do not matter."""

    def status(xff: str) -> int:
        return send(behind_proxy, get("/limited", extra=f"X-Forwarded-For: {xff}\r\n")).status

    assert status("6.6.6.6, 203.0.113.9, 127.0.0.5") == 200
    assert status("7.7.7.7, 203.0.113.9") == 429  # same client, different spoofed prefix
    assert status("203.0.113.10") == 200  # another client
    assert scripted.requests[0].header("x-forwarded-for") == (
        "6.6.6.6, 203.0.113.9, 127.0.0.5, 127.0.0.1"
    )


def test_trusted_proxy_keeps_forwarded_proto_and_host(
    behind_proxy: Gateway, scripted: ScriptedUpstream
) -> None:
    """X-Forwarded-Proto and -Host written by a trusted proxy are passed on unchanged."""
    extra = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example.com\r\n"
    assert send(behind_proxy, get("/p", extra=extra)).status == 200
    request = scripted.requests[0]
    assert request.header("x-forwarded-proto") == "https"
    assert request.header("x-forwarded-host") == "public.example.com"
