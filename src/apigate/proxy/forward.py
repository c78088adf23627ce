"""Forward one request to an upstream and stream the response back, with retries and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from apigate.http.body import RequestBody
from apigate.http.errors import HttpError
from apigate.http.request import Request
from apigate.http.response import ResponseWriter
from apigate.http.server import HttpConnection
from apigate.proxy.connection import Exchange, ResponseHead, UpstreamConnection, UpstreamError
from apigate.proxy.headers import end_to_end
from apigate.proxy.upstream import Target, Upstream

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Added by the gateway itself; a client-sent copy is never passed on.
GATEWAY_REQUEST_HEADERS = frozenset(
    {
        b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
        b"x-forwarded-host", b"x-request-id", b"x-consumer", b"host",
    }
)
_RESPONSE_DROP = frozenset({b"content-length", b"x-request-id"})


@dataclass(slots=True)  # not frozen: a frozen dataclass pays object.__setattr__ per field
class Outbound:
    """What the gateway decided to send upstream besides the client's own headers."""

    path: str
    query: bytes  # the client's query, less an API key passed as a query parameter
    headers: list[tuple[bytes, bytes]]  # x-forwarded-*, x-request-id, x-consumer
    drop: frozenset[bytes]  # gateway-set and credential headers: never passed on
    response_lines: list[bytes]  # x-request-id, rate-limit headers: rendered header lines


class ForwardFailed(HttpError):
    """A proxied request failed; ``kind`` feeds the upstream error metric."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(status, message)
        self.kind = kind


def _request_head(request: Request, outbound: Outbound, target: Target) -> bytes:
    target_bytes = outbound.path.encode()
    if outbound.query:
        target_bytes += b"?" + outbound.query
    host = request.host or target.host_header
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), target_bytes, host)]
    for name, value in end_to_end(request.headers, outbound.drop):
        lines += (name, b": ", value, b"\r\n")  # pieces for the one join: no bytes per header
    for name, value in outbound.headers:
        lines += (name, b": ", value, b"\r\n")
    if request.upgrade:
        upgrade = request.header(b"upgrade") or b""
        lines.append(b"connection: upgrade\r\nupgrade: %s\r\n" % upgrade)
    if request.chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    elif request.content_length is not None:
        lines.append(b"content-length: %d\r\n" % request.content_length)
    lines.append(b"\r\n")
    return b"".join(lines)


async def _stream_body(
    body: RequestBody, chunked: bool, conn: UpstreamConnection, exchange: Exchange
) -> ResponseHead:
    """Send the body while waiting for the response head (an upstream may answer early)."""
    sender = asyncio.get_running_loop().create_task(_send_body(body, conn, chunked))
    try:
        await asyncio.wait((sender, exchange.head), return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
        return await exchange.head
    except BaseException:
        conn.close()  # half a request went upstream: the connection cannot be reused
        raise
    finally:
        if not sender.done():
            # The upstream answered before reading the whole body: stop sending.
            sender.cancel()
            conn.reusable = False


async def _send_body(body: RequestBody, conn: UpstreamConnection, chunked: bool) -> None:
    while chunk := await body.read():
        conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


class Forwarder:
    """Forwards requests of one route's upstream; stateless apart from the upstream."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def forward(
        self, request: Request, writer: ResponseWriter, client: HttpConnection, outbound: Outbound
    ) -> str:
        """Proxy the request; return the target URL used. Raises ForwardFailed before a reply."""
        upstream = self.upstream
        tried: tuple[Target, ...] = ()
        retriable = request.method in IDEMPOTENT
        attempts = 1 + (upstream.retries if retriable else 0)
        # A pooled connection the upstream had already closed is retried once on a new one,
        # when nothing of the request's body was consumed by the failed attempt.
        stale_retry = retriable and request.body is None
        while True:
            target = upstream.pick(exclude=tried)
            if target is None:
                raise ForwardFailed(503, "no healthy upstream target", "ejected")
            tried += (target,)
            target.active += 1  # counted from the pick, so least_conn sees connects in flight
            try:
                try:
                    conn, reused = await upstream.connect(target)
                except UpstreamError as exc:
                    upstream.record_failure(target)
                    attempts -= 1
                    if attempts > 0 and (request.body is None or request.body.received == 0):
                        continue
                    raise ForwardFailed(502, str(exc), exc.kind) from None
                exchange = conn.begin(
                    head_only=request.method == "HEAD",
                    read_timeout_s=upstream.read_timeout_s,
                )
                conn.write(_request_head(request, outbound, target))
                try:
                    if request.body is None:
                        head = await exchange.head  # the common case, without an extra frame
                    else:
                        head = await _stream_body(request.body, request.chunked, conn, exchange)
                except UpstreamError as exc:
                    conn.close()
                    if reused and exc.kind == "reset" and stale_retry:
                        stale_retry = False
                        tried = tried[:-1]
                        continue
                    upstream.record_failure(target)
                    status = 504 if exc.kind == "timeout" else 502
                    kind = "reset" if exc.kind == "protocol" else exc.kind
                    raise ForwardFailed(status, str(exc), kind) from None
                except BaseException:
                    conn.close()  # cancelled mid-exchange: the connection cannot be reused
                    raise
                upstream.record_success(target)
                await self._relay(
                    request=request, writer=writer, client=client, conn=conn, target=target,
                    head=head, exchange=exchange, outbound=outbound,
                )
                return target.url
            finally:
                target.active -= 1

    async def _relay(
        self,
        *,
        request: Request,
        writer: ResponseWriter,
        client: HttpConnection,
        conn: UpstreamConnection,
        target: Target,
        head: ResponseHead,
        exchange: Exchange,
        outbound: Outbound,
    ) -> None:
        headers = end_to_end(head.headers, _RESPONSE_DROP)
        lines = outbound.response_lines
        if head.status == 101 and request.upgrade:
            upgrade = b"upgrade: %s\r\n" % _header(head.headers, b"upgrade")
            writer.start(101, headers, content_length=None, upgrade=True, lines=[*lines, upgrade])
            await _tunnel(client, conn, exchange)
            return
        length = None if exchange.body_until_eof or head.status == 101 else head.content_length
        if head.content_length is None and request.method == "HEAD":
            length = None
        if head.status == 101:
            writer.close = True  # a 101 the client did not ask for: nothing sane follows
        writer.start(head.status, headers, content_length=length, lines=lines)
        done = exchange.done
        if done.done() and done.exception() is None:
            # The whole response came with its head (the common small response): no sink.
            for chunk in exchange.buffered:
                writer.write(chunk)
            exchange.buffered.clear()
            writer.end()
            self._finish(request, target, conn)
            return
        client.on_writable = conn.resume_reading

        def sink(chunk: bytes) -> None:
            writer.write(chunk)
            if client.writing_paused:
                conn.pause_reading()

        exchange.set_sink(sink)
        try:
            await exchange.done
        except UpstreamError:
            conn.close()
            writer.close = True  # the response is cut short; the client sees the close
            return
        finally:
            client.on_writable = None
        writer.end()
        self._finish(request, target, conn)

    def _finish(self, request: Request, target: Target, conn: UpstreamConnection) -> None:
        if request.body is not None and not request.body.complete:
            conn.reusable = False
        self.upstream.release(target, conn)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return next((v for n, v in headers if n == name), b"")


async def _tunnel(client: HttpConnection, conn: UpstreamConnection, exchange: Exchange) -> None:
    """Splice bytes both ways after 101 until either side closes."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def close_both() -> None:
        if not closed.done():
            closed.set_result(None)

    def to_client(data: bytes) -> None:
        client.write(data)
        if client.writing_paused:  # a slow reader: stop reading the other side until it drains
            conn.pause_reading()

    def to_upstream(data: bytes) -> None:
        conn.write(data)
        if conn.writing_paused:
            client.pause_reading()

    for chunk in exchange.buffered:
        client.write(chunk)
    exchange.buffered.clear()
    conn.tunnel = to_client
    client.tunnel = to_upstream
    client.on_writable = conn.resume_reading
    conn.on_writable = client.resume_reading
    early = client.take_upgrade_data()
    if early:
        to_upstream(early)
    client.tunnel_closed = close_both
    conn.on_lost = close_both
    if conn.closed:
        close_both()
    with contextlib.suppress(asyncio.CancelledError):
        await closed
    conn.close()
    client.close()
