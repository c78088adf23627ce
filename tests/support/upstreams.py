"""Scriptable raw-socket upstreams for data-plane tests.

An :class:`UpstreamLoop` runs one asyncio event loop in a background thread and hosts any number
of :class:`ScriptedUpstream` servers on it. Each upstream records exactly the bytes it received
(per connection) and the requests it parsed, and answers with a per-test ``handler`` coroutine:
echo (the default), fixed bytes, delays, closes, chunked bodies, ``101`` + echo, slow reads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.support.gateway import free_port

T = TypeVar("T")
Handler = Callable[["UpstreamConn"], Awaitable[None]]


@dataclass
class ReceivedRequest:
    """One request as the upstream parsed it (names lower-cased, order and case of values kept)."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    connection: int = 0

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name.lower()), None)

    def names(self) -> set[str]:
        return {n for n, _ in self.headers}


class UpstreamConn:
    """One connection accepted by a :class:`ScriptedUpstream`; every byte read is recorded."""

    def __init__(
        self, upstream: ScriptedUpstream, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter, index: int,
    ) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.index = index
        self.raw = bytearray()

    async def read_some(self, size: int = 65536) -> bytes:
        data = await self.reader.read(size)
        self._record(data)
        return data

    async def read_until(self, separator: bytes) -> bytes:
        data = await self.reader.readuntil(separator)
        self._record(data)
        return data

    async def read_exactly(self, size: int) -> bytes:
        data = await self.reader.readexactly(size)
        self._record(data)
        return data

    def _record(self, data: bytes) -> None:
        self.raw += data
        self.upstream.bytes_received += len(data)

    async def read_head(self) -> ReceivedRequest | None:
        """The next request head, or None when the peer closed first."""
        try:
            head = await self.read_until(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                self._record(exc.partial)
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [_split_header(line) for line in lines[1:]]
        request = ReceivedRequest(method, target, version, headers, connection=self.index)
        self.upstream.requests.append(request)
        return request

    async def read_body(self, request: ReceivedRequest, *, keep: bool = True) -> int:
        """Read the request's body (Content-Length or chunked); keep it or count and discard."""
        total = 0
        kept = bytearray()
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                size = int((await self.read_until(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                chunk = await self.read_exactly(size + 2)
                total += size
                if keep:
                    kept += chunk[:-2]
            while (line := await self.read_until(b"\r\n")) != b"\r\n":
                request.trailers.append(_split_header(line[:-2].decode("latin-1")))
        else:
            remaining = int(request.header("content-length") or 0)
            while remaining:
                data = await self.read_some(min(remaining, 1 << 20))
                if not data:
                    raise ConnectionError("body cut short")
                remaining -= len(data)
                total += len(data)
                if keep:
                    kept += data
        request.body = bytes(kept)
        return total

    async def read_request(self, *, keep_body: bool = True) -> ReceivedRequest | None:
        request = await self.read_head()
        if request is not None:
            await self.read_body(request, keep=keep_body)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self, status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} X"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        if status not in (204, 304) and status >= 200:
            lines.append(f"content-length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def close(self) -> None:
        self.writer.close()


def _split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.lower(), value.strip()


def echo_json(request: ReceivedRequest) -> bytes:
    """The echo body: what the upstream saw, as JSON."""
    return json.dumps({
        "method": request.method, "target": request.target, "headers": request.headers,
        "body_bytes": len(request.body),
    }).encode()


async def echo(conn: UpstreamConn) -> None:
    """Answer every request on the connection with a JSON echo, keep-alive."""
    while (request := await conn.read_request()) is not None:
        await conn.respond(200, echo_json(request), [
            ("content-type", "application/json"), ("x-upstream", conn.upstream.name),
        ])


class ScriptedUpstream:
    """A loopback server whose behaviour is ``handler``; see the module docstring."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.handler: Handler = echo
        self.requests: list[ReceivedRequest] = []
        self.conns: list[UpstreamConn] = []
        self.bytes_received = 0
        self.open_connections = 0
        self.server: asyncio.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.conns)

    def reset(self, handler: Handler = echo) -> None:
        """Close open connections, forget what was recorded, answer with ``handler`` from now on.

        Closing matters: a gateway's pooled connection would otherwise keep the old handler.
        """
        if self.loop is not None and self.conns:
            conns = list(self.conns)

            def close_all() -> None:
                for conn in conns:
                    conn.writer.close()

            self.loop.call_soon_threadsafe(close_all)
            time.sleep(0.1)  # let the gateway see the EOF before the next request
        self.handler = handler
        self.requests = []
        self.conns = []
        self.bytes_received = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = UpstreamConn(self, reader, writer, len(self.conns))
        self.conns.append(conn)
        self.open_connections += 1
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()


class UpstreamLoop:
    """An event loop in a daemon thread hosting scripted upstreams; ``close()`` stops it all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.upstreams: list[ScriptedUpstream] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def serve(self, name: str = "up", port: int | None = None) -> ScriptedUpstream:
        upstream = ScriptedUpstream(name, port or free_port())
        upstream.loop = self.loop

        async def start() -> None:
            upstream.server = await asyncio.start_server(
                upstream._accept, "127.0.0.1", upstream.port, limit=1 << 20
            )

        self.run(start())
        self.upstreams.append(upstream)
        return upstream

    def stop(self, upstream: ScriptedUpstream) -> None:
        """Stop listening (the port then refuses connections) and close its connections."""

        async def stop() -> None:
            if upstream.server is not None:
                upstream.server.close()
                for conn in upstream.conns:
                    conn.writer.close()
                upstream.server = None

        self.run(stop())

    def close(self) -> None:
        for upstream in self.upstreams:
            self.stop(upstream)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
