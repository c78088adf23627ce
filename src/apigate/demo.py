"""A tiny demo upstream for ``make run``: answers every request with a JSON echo."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import httptools


class _DemoProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self._name = name
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body_bytes = b"", {}, 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        body = json.dumps(
            {
                "upstream": self._name,
                "method": self._parser.get_method().decode(),
                "url": self._url.decode("latin-1"),
                "headers": self._headers,
                "body_bytes": self._body_bytes,
            },
            indent=1,
        ).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        if self._transport is not None:
            self._transport.write(head % len(body) + body)
            if not self._parser.should_keep_alive():
                self._transport.close()


async def serve_demo(host: str, port: int, name: str = "demo") -> asyncio.Server:
    """Start the demo upstream on ``host:port``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _DemoProtocol(name), host, port)
