"""Server limits answer with the right status instead of hanging: 431, 413, 408, idle close and
max_connections (503)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop


@pytest.fixture(scope="module")
def sink(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("limits")


@pytest.fixture(scope="module")
def gateway(sink: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = gateway_config(
        {"sink": upstream(sink.url)},
        [route("all", "sink", path_prefix="/")],
        max_header_bytes=1024,
        max_body_bytes=1000,
        header_timeout_s=1,
        keepalive_timeout_s=1,
    )
    with running_gateway(config, tmp_path_factory.mktemp("limits")) as gw:
        yield gw


@pytest.fixture(scope="module")
def small(sink: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one worker takes at most two connections."""
    config = gateway_config(
        {"sink": upstream(sink.url)}, [route("all", "sink", path_prefix="/")], max_connections=2
    )
    with running_gateway(config, tmp_path_factory.mktemp("maxconn")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _fresh(sink: ScriptedUpstream) -> None:
    sink.reset()


@pytest.mark.parametrize("where", ["one-header", "many-headers", "target"])
def test_request_head_over_max_header_bytes_is_431(
    gateway: Gateway, sink: ScriptedUpstream, where: str
) -> None:
    """A request head over max_header_bytes is 431 and closed, however the bytes are spread."""
    if where == "one-header":
        data = get("/", extra=f"X-Big: {'a' * 3000}\r\n")
    elif where == "many-headers":
        data = get("/", extra="".join(f"X-H{i}: {'b' * 40}\r\n" for i in range(60)))
    else:
        data = get("/" + "c" * 3000)
    with RawClient(gateway.port) as client:
        response = client.request(data)
        assert response.status == 431, response.body
        assert set(response.json()) == {"error", "request_id"}
        assert client.is_closed()
    assert sink.bytes_received == 0


def test_head_under_the_limit_spread_over_reads_is_accepted(
    gateway: Gateway, sink: ScriptedUpstream
) -> None:
    """A 900-byte head (limit 1024) arriving in two reads is served: each byte counts once."""
    data = get("/", extra=f"X-Pad: {'p' * (900 - len(get('/')) - 9)}\r\n")
    assert 880 <= len(data) <= 920
    with RawClient(gateway.port) as client:
        client.send(data[:500])
        time.sleep(0.1)  # a read of its own
        client.send(data[500:])
        assert client.read_response().status == 200


def test_endless_field_name_in_small_reads_is_431(gateway: Gateway, sink: ScriptedUpstream) -> None:
    """A field name that never ends, sent 100 bytes at a time, is cut off with 431."""
    with RawClient(gateway.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\nX")
        for _ in range(60):  # 6,000 bytes at most: well past 1024 + the slack
            time.sleep(0.01)
            try:
                client.send(b"n" * 100)
            except OSError:
                break
        response = client.read_response()
        assert response.status == 431, response.body
    assert sink.bytes_received == 0


def test_content_length_over_max_body_bytes_is_413_before_the_body(
    gateway: Gateway, sink: ScriptedUpstream
) -> None:
    """A Content-Length over max_body_bytes is refused with 413 from the head alone, unforwarded."""
    head = b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5000\r\n\r\n"
    with RawClient(gateway.port) as client:
        response = client.request(head)  # no body sent: the answer must not wait for it
        assert response.status == 413, response.body
        assert client.is_closed()
    time.sleep(0.1)
    assert sink.bytes_received == 0


def test_chunked_body_growing_past_max_body_bytes_is_413(gateway: Gateway) -> None:
    """A chunked body growing past max_body_bytes is cut off with 413 and the connection closed."""
    head = b"POST /up HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"258\r\n" + b"x" * 600 + b"\r\n"
    with RawClient(gateway.port) as client:
        client.send(head + chunk)
        time.sleep(0.1)
        client.send(chunk)
        response = client.read_response()
        assert response.status == 413, response.body
        assert client.is_closed()


def test_body_at_the_limit_passes(gateway: Gateway, sink: ScriptedUpstream) -> None:
    """A body of exactly max_body_bytes is forwarded."""
    body = b"y" * 1000
    data = b"POST /ok HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n" + body
    with RawClient(gateway.port) as client:
        assert client.request(data).status == 200
    assert sink.requests[0].body == body


def test_slow_request_head_is_408(gateway: Gateway, sink: ScriptedUpstream) -> None:
    """A head that is still incomplete after header_timeout_s (slowloris) gets 408 and a close."""
    with RawClient(gateway.port) as client:
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\n")
        time.sleep(0.4)
        client.send(b"X-Drip: 1\r\n")  # dripping bytes does not extend the deadline
        response = client.read_response()
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert set(response.json()) == {"error", "request_id"}
        assert client.is_closed()
    assert 0.9 <= elapsed < 3
    assert sink.bytes_received == 0


def test_idle_keepalive_connection_is_closed(gateway: Gateway) -> None:
    """An idle keep-alive connection is closed after keepalive_timeout_s, not before."""
    with RawClient(gateway.port) as client:
        assert client.request(get("/")).status == 200
        answered = time.monotonic()
        assert not client.is_closed(0.5)
        assert client.is_closed(3)
        assert 0.9 <= time.monotonic() - answered < 3


def test_max_connections_refuses_the_extra_connection(small: Gateway) -> None:
    """With max_connections=2 a third connection is answered 503 and closed; the first two work."""
    with RawClient(small.port) as first, RawClient(small.port) as second:
        assert first.request(get("/1")).status == 200
        assert second.request(get("/2")).status == 200
        with RawClient(small.port) as third:
            response = third.read_response()
            assert response.status == 503
            assert set(response.json()) == {"error", "request_id"}
            assert third.is_closed()
        assert first.request(get("/again")).status == 200
    time.sleep(0.2)
    with RawClient(small.port) as later:
        assert later.request(get("/later")).status == 200
