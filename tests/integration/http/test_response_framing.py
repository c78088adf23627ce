"""Upstream responses the gateway must re-frame or refuse: close-delimited bodies, interim 1xx,
malformed heads and upstreams that die mid-body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamConn, UpstreamLoop


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("responses")


@pytest.fixture(scope="module")
def gateway(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One target that is never ejected, whatever it answers."""
    config = gateway_config(
        {"script": upstream(scripted.url, read_timeout_s=5, max_failures=1000)},
        [route("all", "script", path_prefix="/")],
    )
    with running_gateway(config, tmp_path_factory.mktemp("responses")) as gw:
        yield gw


def test_close_delimited_upstream_response_is_rechunked(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """An upstream body ended by closing the connection reaches an HTTP/1.1 client chunked and
    whole, and the client connection stays usable."""

    async def close_delimited(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"until-eof" * 1000)
        conn.close()

    scripted.reset(close_delimited)
    with RawClient(gateway.port) as client:
        response = client.request(get("/eof"))
        assert response.status == 200
        assert response.header("transfer-encoding") == "chunked"
        assert response.body == b"until-eof" * 1000
        scripted.handler = close_delimited
        assert client.request(get("/eof-again")).body == b"until-eof" * 1000


def test_interim_upstream_responses_are_not_forwarded(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 103 Early Hints and an unsolicited 100 from the upstream are dropped; the final response
    arrives as the only response."""

    async def interim(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                            b"Link: </a.css>; rel=preload\r\n\r\n")
            await conn.respond(200, request.target.encode())

    scripted.reset(interim)
    with RawClient(gateway.port) as client:
        first = client.request(get("/hints"))
        assert (first.status, first.body) == (200, b"/hints")
        second = client.request(get("/next"))
        assert (second.status, second.body) == (200, b"/next")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTX/1.1 200 OK\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl", "obs-fold", "bare-cr", "bad-status-line"],
)
def test_malformed_upstream_response_is_502(
    gateway: Gateway, scripted: ScriptedUpstream, reply: bytes
) -> None:
    """A response the gateway cannot frame safely is never relayed: the client gets a JSON 502."""

    async def bad(conn: UpstreamConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(reply)

    scripted.reset(bad)
    with RawClient(gateway.port) as client:
        response = client.request(get("/bad-reply"))
    assert response.status == 502, response
    assert set(response.json()) == {"error", "request_id"}


def test_upstream_dying_mid_body_closes_the_client_connection(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """When the upstream closes inside a Content-Length body, the client sees the connection
    close before the announced length (never a silently short, reusable response)."""

    async def truncated(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        conn.close()

    scripted.reset(truncated)
    with RawClient(gateway.port) as client:
        client.send(get("/cut"))
        head = client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = bytearray(client.leftover())
        while chunk := client.sock.recv(65536):
            received += chunk
    assert len(received) < 1000
