"""Malformed and smuggling-shaped requests: each gets its status, the connection is closed, and
not one byte reaches the upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import children, gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get, wait_until
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

POST = b"POST /p HTTP/1.1\r\nHost: gw.test\r\n"

CASES: list[tuple[str, bytes, int]] = [
    ("cl-and-te",
     POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two-different-cl", POST + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("cl-plus-sign", POST + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("te-chunked123", POST + b"Transfer-Encoding: chunked123\r\n\r\n0\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-A : 1\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x00b\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n", 400),
    ("bad-chunk-size", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("bare-lf-chunk-line", POST + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    ("te-chunked-then-gzip", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-then-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("two-host-headers", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("host-not-ascii", b"GET / HTTP/1.1\r\nHost: \xff.example.com\r\n\r\n", 400),
    ("host-unclosed-ipv6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    ("host-bad-port", b"GET / HTTP/1.1\r\nHost: example.com:80x\r\n\r\n", 400),
    ("http10-with-te",
     b"POST / HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("fragment-in-target", b"GET /a#frag HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
]


@pytest.fixture(scope="module")
def sink(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("sink")


@pytest.fixture(scope="module")
def gateway(sink: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = gateway_config({"sink": upstream(sink.url)}, [route("all", "sink", path_prefix="/")])
    with running_gateway(config, tmp_path_factory.mktemp("bad")) as gw:
        yield gw


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_refused_closed_and_not_forwarded(
    gateway: Gateway, sink: ScriptedUpstream, data: bytes, status: int
) -> None:
    """The malformed request gets its JSON error status, then the connection closes and the
    upstream receives nothing at all."""
    sink.reset()
    with RawClient(gateway.port) as client:
        response = client.request(data)
        assert response.status == status, response.body
        assert set(response.json()) == {"error", "request_id"}
        assert (response.header("connection") or "").lower() == "close"
        assert client.is_closed()
    time.sleep(0.1)  # anything forwarded would have reached the sink by now
    assert sink.bytes_received == 0, bytes(sink.conns[0].raw)


def test_bad_request_after_a_good_one_only_refuses_the_bad_one(
    gateway: Gateway, sink: ScriptedUpstream
) -> None:
    """A good request pipelined before a malformed one is answered; then 400 and close."""
    sink.reset()
    with RawClient(gateway.port) as client:
        client.send(get("/good") + b"GET /bad HTTP/1.1\r\nHost: gw.test\r\nX-A : 1\r\n\r\n")
        assert client.read_response().status == 200
        assert client.is_closed() or client.read_response().status == 400
    assert [r.target for r in sink.requests] == ["/good"]


def test_worker_survives_many_malformed_requests(gateway: Gateway) -> None:
    """A hundred malformed requests of every kind leave the same worker process serving."""
    assert gateway.process is not None
    before = children(gateway.process.pid)
    for _ in range(7):
        for _, data, _ in CASES:
            with RawClient(gateway.port) as client:
                client.send(data)
                client.is_closed()
    with RawClient(gateway.port) as client:
        assert client.request(get("/still-alive")).status == 200
    assert children(gateway.process.pid) == before


def test_malformed_body_mid_stream_aborts_the_upstream_request(
    gateway: Gateway, sink: ScriptedUpstream
) -> None:
    """When a chunked body turns malformed after its start was streamed upstream, the client gets
    400 and the gateway closes that upstream connection instead of leaving it half-sent."""
    sink.reset()
    with RawClient(gateway.port) as client:
        client.send(POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        assert wait_until(lambda: sink.bytes_received > 0)
        client.send(b"zz\r\n")
        response = client.read_response()
        assert response.status == 400
        assert client.is_closed()
    assert wait_until(lambda: sink.open_connections == 0, 2), "upstream connection left open"
