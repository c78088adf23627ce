"""HTTP/1.x on the client side: keep-alive, pipelining, 1.0, bodies both ways, 100-continue,
bodiless responses, trailers and Upgrade tunnels, against a real ``apigate run``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get, wait_until
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamConn, UpstreamLoop, echo_json


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("script")


@pytest.fixture(scope="module")
def gateway(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = gateway_config(
        {"script": upstream(scripted.url, read_timeout_s=5, max_failures=1000)},
        [route("all", "script", path_prefix="/")],
    )
    with running_gateway(config, tmp_path_factory.mktemp("protocol")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _fresh(scripted: ScriptedUpstream) -> None:
    scripted.reset()


def test_keepalive_serves_two_requests_on_one_connection(gateway: Gateway) -> None:
    """An HTTP/1.1 connection stays open after a response and serves a second request."""
    with RawClient(gateway.port) as client:
        first = client.request(get("/one"))
        second = client.request(get("/two"))
        assert (first.status, second.status) == (200, 200)
        assert first.json()["target"] == "/one"
        assert second.json()["target"] == "/two"
        assert first.header("connection") is None
        assert not client.is_closed(0.2)


def test_pipelined_requests_are_answered_in_order(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Three requests sent in one write get three responses in request order (slow first one)."""

    async def slow_first(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/slow":
                await asyncio.sleep(0.3)
            await conn.respond(200, echo_json(request))

    scripted.reset(slow_first)
    with RawClient(gateway.port) as client:
        client.send(get("/slow") + get("/b") + get("/c"))
        targets = [client.read_response().json()["target"] for _ in range(3)]
    assert targets == ["/slow", "/b", "/c"]


def test_http10_client_is_closed_after_the_response(gateway: Gateway) -> None:
    """An HTTP/1.0 request without keep-alive gets its response and then the connection closes."""
    with RawClient(gateway.port) as client:
        response = client.request(b"GET /old HTTP/1.0\r\nHost: gw.test\r\n\r\n")
        assert response.status == 200
        assert response.version == "HTTP/1.0"
        assert response.json()["target"] == "/old"
        assert client.is_closed()


def test_http10_keepalive_when_the_client_asks(gateway: Gateway) -> None:
    """HTTP/1.0 with ``Connection: keep-alive`` keeps the connection for a second request."""
    head = b"GET /k HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n"
    with RawClient(gateway.port) as client:
        first = client.request(head)
        assert first.status == 200
        assert (first.header("connection") or "").lower() == "keep-alive"
        assert client.request(head).status == 200


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_content_length_upload_reaches_upstream_intact(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 300 KiB Content-Length body arrives byte for byte, framed with the same length."""
    body = os.urandom(300 * 1024)
    with RawClient(gateway.port) as client:
        assert client.request(_post("/up", body)).status == 200
    request = scripted.requests[0]
    assert request.header("content-length") == str(len(body))
    assert request.body == body


def test_chunked_upload_reaches_upstream_intact(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A chunked request body is streamed on chunked and arrives complete."""
    parts = [os.urandom(n) for n in (1, 1000, 70000, 5)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head = b"POST /c HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with RawClient(gateway.port) as client:
        assert client.request(head + chunks).status == 200
    request = scripted.requests[0]
    assert request.header("transfer-encoding") == "chunked"
    assert request.header("content-length") is None
    assert request.body == b"".join(parts)


def test_8_mib_upload_passes(gateway: Gateway, scripted: ScriptedUpstream) -> None:
    """An 8 MiB body (under the 10 MiB default limit) is proxied whole."""
    body = os.urandom(8 * 1024 * 1024)
    with RawClient(gateway.port, timeout=20) as client:
        response = client.request(_post("/big", body))
    assert response.status == 200
    assert hashlib.sha256(scripted.requests[0].body).digest() == hashlib.sha256(body).digest()


def test_large_chunked_response_streams_to_the_client(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 16 MiB chunked upstream response reaches the client complete and unchanged."""
    piece = os.urandom(64 * 1024)

    async def chunked(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(256):
            await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await conn.send(b"0\r\n\r\n")

    scripted.reset(chunked)
    with RawClient(gateway.port, timeout=20) as client:
        response = client.request(get("/stream"))
    assert response.status == 200
    assert len(response.body) == 256 * len(piece)
    assert response.body == piece * 256


def test_expect_100_continue(gateway: Gateway, scripted: ScriptedUpstream) -> None:
    """``Expect: 100-continue`` gets ``100 Continue``, then the body goes up and the answer back."""
    head = (
        b"PUT /e HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    with RawClient(gateway.port) as client:
        interim = client.request(head)
        assert interim.status == 100
        client.send(b"hello")
        final = client.read_response()
    assert final.status == 200
    assert scripted.requests[0].body == b"hello"
    assert scripted.requests[0].header("expect") is None


@pytest.mark.parametrize(
    ("method", "upstream_reply"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
def test_bodiless_responses_keep_the_connection_usable(
    gateway: Gateway, scripted: ScriptedUpstream, method: str, upstream_reply: bytes
) -> None:
    """HEAD, 204 and 304 answers carry no body bytes and the connection serves the next request."""

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/bodiless":
                await conn.send(upstream_reply)
            else:
                await conn.respond(200, b"next")

    scripted.reset(reply)
    with RawClient(gateway.port) as client:
        head = f"{method} /bodiless HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()
        first = client.request(head, head=True)
        assert first.status == {"HEAD": 200}.get(method, int(upstream_reply[9:12]))
        if method == "HEAD":
            assert first.header("content-length") == "1234"
        else:
            assert first.header("content-length") is None
            assert first.header("transfer-encoding") is None
        second = client.request(get("/after"))
        assert second.status == 200
        assert second.body == b"next"


def test_request_trailers_are_not_forwarded_as_headers(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Trailer fields of a chunked request never reach the upstream, as headers or as trailers."""
    data = (
        b"POST /t HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Smuggled: yes\r\nX-Request-ID: evil\r\n\r\n"
    )
    with RawClient(gateway.port) as client:
        response = client.request(data)
        assert response.status == 200
        assert client.request(get("/after")).status == 200
    request = scripted.requests[0]
    assert request.body == b"abc"
    assert "x-smuggled" not in request.names()
    assert request.header("x-request-id") != "evil"
    assert request.trailers == []


def test_unasked_101_closes_the_client_and_is_never_pooled(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 101 to a request without Upgrade ends the client connection (Connection: close) and
    its upstream connection, which now speaks another protocol, is not reused."""

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/switch":
                await conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\n\r\n")
                while await conn.read_some():  # whatever follows is not HTTP: never answered
                    pass
                return
            await conn.respond(200, b"next")

    scripted.reset(reply)
    with RawClient(gateway.port) as client:
        response = client.request(get("/switch"))
        assert response.status == 101
        assert (response.header("connection") or "").lower() == "close"
    with RawClient(gateway.port) as client:
        after = client.request(get("/after"))
        assert (after.status, after.body) == (200, b"next")


def test_upstream_transfer_coding_other_than_chunked_is_a_502(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """An upstream body in a transfer coding we cannot pass on (gzip, close-delimited) is a 502
    with a JSON body, as nginx answers: relayed without the coding it would reach the client as
    garbage. Its connection is not reused; the next request is answered."""

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/gzip":
                await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b")
                return  # close-delimited
            await conn.respond(200, b"next")

    scripted.reset(reply)
    with RawClient(gateway.port) as client:
        response = client.request(get("/gzip"))
        assert response.status == 502
        assert json.loads(response.body)["error"]
    with RawClient(gateway.port) as client:
        after = client.request(get("/after"))
        assert (after.status, after.body) == (200, b"next")


def test_bodiless_response_with_any_transfer_coding_passes(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A response that has no body (to HEAD here) is relayed whatever Transfer-Encoding its head
    names: there is nothing to decode."""

    async def reply(conn: UpstreamConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")

    scripted.reset(reply)
    head = b"HEAD /doc HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    with RawClient(gateway.port) as client:
        assert client.request(head, head=True).status == 200
        assert client.request(head, head=True).status == 200


def test_upgrade_is_tunnelled_both_ways_after_101(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """After the upstream answers 101, bytes flow unchanged in both directions until close."""

    async def websocket(conn: UpstreamConn) -> None:
        request = await conn.read_head()
        assert request is not None
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"hello-from-upstream"
        )
        while data := await conn.read_some():
            await conn.send(data.upper())

    scripted.reset(websocket)
    head = (
        b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with RawClient(gateway.port) as client:
        response = client.request(head)
        assert response.status == 101
        assert (response.header("upgrade") or "").lower() == "websocket"
        # The gateway's own header lines come with a 101 too, before its Upgrade and Connection.
        names = [name for name, _ in response.headers]
        assert names.index("x-request-id") < names.index("upgrade") < names.index("connection")
        client.sock.settimeout(5)
        received = client.leftover()
        while len(received) < len(b"hello-from-upstream"):
            received += client.sock.recv(100)
        assert received == b"hello-from-upstream"
        for message in (b"\x81\x05frame", b"z" * 3000):
            client.send(message)
            expected = message.upper()
            got = b""
            while len(got) < len(expected):
                got += client.sock.recv(65536)
            assert got == expected
    request = scripted.requests[0]
    assert (request.header("upgrade") or "").lower() == "websocket"
    assert request.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="


_WS_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
)
_SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
MIB = 1 << 20
# What kernel socket buffers on the way can hold while nobody reads (loopback autotuning
# grows a receive buffer to tcp_rmem's maximum, 32 MiB here): far below the flood sizes.
FLOOD_MIB = 128
HELD_MAX_MIB = 64


@pytest.mark.slow
def test_tunnel_stops_reading_the_upstream_while_the_client_does_not_read(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A tunnel to a client that reads nothing stops reading its upstream (the upstream's
    writes block) instead of buffering everything the upstream sends; then all of it flows."""
    sent = [0]

    async def flood(conn: UpstreamConn) -> None:
        await conn.read_head()
        await conn.send(_SWITCHED)
        block = b"u" * MIB
        for _ in range(FLOOD_MIB):
            await conn.send(block)  # blocks while the gateway does not read
            sent[0] += MIB
        await conn.reader.read()  # until the client goes

    scripted.reset(flood)
    with RawClient(gateway.port, timeout=10) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(_WS_HEAD)
        assert client.read_response(head=True).status == 101
        time.sleep(2.0)  # the client reads nothing
        held = sent[0]
        assert held < HELD_MAX_MIB * MIB, f"the upstream wrote {held / MIB:.0f} MiB unread"
        received = len(client.leftover())
        while received < FLOOD_MIB * MIB:
            data = client.sock.recv(1 << 20)
            assert data, "the tunnel closed early"
            received += len(data)
    assert received == FLOOD_MIB * MIB


@pytest.mark.slow
def test_bytes_after_an_upgrade_head_are_not_buffered_without_bound(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Before the upstream answers 101 the gateway reads only a little of what the client sends
    after the Upgrade head; once the tunnel opens, every byte arrives upstream."""
    answer = threading.Event()
    received = [0]

    async def slow_to_switch(conn: UpstreamConn) -> None:
        await conn.read_head()
        await asyncio.to_thread(answer.wait, 10)  # set by the test's thread
        await conn.send(_SWITCHED)
        while data := await conn.reader.read(1 << 20):
            received[0] += len(data)

    scripted.reset(slow_to_switch)
    with RawClient(gateway.port, timeout=10) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        client.send(_WS_HEAD)
        block = b"c" * MIB
        pushed = 0
        client.sock.settimeout(2.0)  # the gateway stops reading: sending blocks, then times out
        with contextlib.suppress(TimeoutError):
            while pushed < FLOOD_MIB * MIB:
                pushed += client.sock.send(block)
        assert pushed < HELD_MAX_MIB * MIB, f"the gateway took {pushed / MIB:.0f} MiB unasked"
        answer.set()
        client.sock.settimeout(10)
        assert client.read_response(head=True).status == 101
        wait_until(lambda: received[0] == pushed, timeout=10)
    assert received[0] == pushed


@pytest.mark.slow
def test_queued_request_body_keeps_its_back_pressure_while_the_pipeline_drains(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pipelined upload queued behind two slow requests is read only up to its buffer: when
    the first slow request is answered, the body's pause holds (it used to be lifted with the
    pipeline's, and the body was read into memory up to max_body_bytes). Then all of it flows."""
    first, second = threading.Event(), threading.Event()
    uploaded = [0]

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_head()) is not None:
            if request.target in ("/hold1", "/hold2"):
                await asyncio.to_thread((first if request.target == "/hold1" else second).wait, 20)
                await conn.respond(200, b"held")
            else:
                uploaded[0] = await conn.read_body(request, keep=False)
                await conn.respond(200, b"stored")

    scripted.reset(reply)
    config = gateway_config(
        {"script": upstream(scripted.url, read_timeout_s=30, max_failures=1000)},
        [route("all", "script", path_prefix="/")],
        max_body_bytes=1 << 30,
    )
    size = FLOOD_MIB * MIB
    with running_gateway(config, tmp_path_factory.mktemp("pipelined-body")) as gw, RawClient(
        gw.port, timeout=20
    ) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        client.send(get("/hold1") + get("/hold2") + (
            f"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {size}\r\n\r\n"
        ).encode())
        block, pushed = b"b" * MIB, 0

        def push_for(seconds: float) -> None:
            nonlocal pushed
            client.sock.settimeout(seconds)
            with contextlib.suppress(TimeoutError):
                while pushed < size:
                    pushed += client.sock.send(block[: min(MIB, size - pushed)])

        push_for(1.0)
        first.set()  # /hold1 answered: the pipeline moves, /hold2 still holds the upload back
        assert client.read_response().status == 200
        push_for(2.0)
        assert pushed < HELD_MAX_MIB * MIB, f"the gateway read {pushed / MIB:.0f} MiB unasked"
        second.set()
        push_for(20.0)
        assert pushed == size
        client.sock.settimeout(20)
        assert [client.read_response().status for _ in range(2)] == [200, 200]
    assert uploaded[0] == size


def test_unread_body_answered_early_does_not_stall_the_connection(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pipelined POST whose body (past the 256 KiB buffer mark) arrives whole while an earlier
    request is answered, then is answered without being read (404): the connection goes on
    reading and answers the next request."""
    release = threading.Event()

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/hold":
                await asyncio.to_thread(release.wait, 10)
            await conn.respond(200, b"ok")

    scripted.reset(reply)
    config = gateway_config(
        {"script": upstream(scripted.url, read_timeout_s=10, max_failures=1000)},
        [route("hold", "script", path_prefix="/hold"),
         route("after", "script", path_prefix="/after")],
    )
    body = b"p" * (300 * 1024)
    with running_gateway(config, tmp_path_factory.mktemp("unread-body")) as gw, RawClient(
        gw.port, timeout=5
    ) as client:
        client.send(get("/hold") + (
            f"POST /nomatch HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body)
        time.sleep(0.3)  # the whole body is read and buffered while /hold waits
        release.set()
        assert [client.read_response().status for _ in range(2)] == [200, 404]
        client.send(get("/after"))
        assert client.read_response().status == 200


@pytest.mark.slow
def test_connection_paused_by_a_slow_client_is_pooled_reading(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A response whose last bytes come while its client is not reading pauses the upstream
    connection (back-pressure); once the response is complete that connection goes back to
    the pool reading again, so the next request on it is answered (it used to wait forever:
    a paused connection never times out)."""
    size = 4 * MIB

    async def reply(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == "/big":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                await conn.send(b"b" * (size - 1))
                await asyncio.sleep(0.5)  # the last byte comes while the client is not reading
                await conn.send(b"b")
            else:
                await conn.respond(200, b"small")

    scripted.reset(reply)
    config = gateway_config(
        {"script": upstream(scripted.url, read_timeout_s=2, retries=0, pool_size=1)},
        [route("all", "script", path_prefix="/")],
    )
    with running_gateway(config, tmp_path_factory.mktemp("paused-pool")) as gw:
        for _ in range(3):
            with RawClient(gw.port, timeout=10) as client:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
                client.send(get("/big"))
                time.sleep(1.0)  # reads nothing until the last byte has come
                assert len(client.read_response().body) == size
            with RawClient(gw.port, timeout=5) as client:
                assert client.request(get("/small")).status == 200


def test_refused_upgrade_leaves_the_connection_answering(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """When the upstream answers an Upgrade request with 200, the next request is answered or the
    connection is closed: it never hangs with the request unanswered."""
    scripted.reset()
    head = b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with RawClient(gateway.port, timeout=3) as client:
        assert client.request(head).status == 200
        client.send(get("/next"))
        try:
            answered = client.read_response().status == 200
        except (ConnectionError, TimeoutError):
            answered = False
        closed = not answered and client.is_closed(0.5)
    assert answered or closed
