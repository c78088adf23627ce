"""A raw-socket HTTP/1.x client for data-plane tests: send exact bytes, parse what comes back."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One TCP connection to the gateway; every read is bounded by ``timeout`` seconds."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self._buffer += data
        return bool(data)

    def read_until(self, separator: bytes) -> bytes:
        """Raw bytes up to and including ``separator``."""
        return self._take_until(separator)

    def _take_until(self, separator: bytes) -> bytes:
        while (index := self._buffer.find(separator)) < 0:
            if not self._fill():
                raise ConnectionError(f"closed before {separator!r}: {bytes(self._buffer)!r}")
        data = bytes(self._buffer[: index + len(separator)])
        del self._buffer[: index + len(separator)]
        return data

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise ConnectionError("closed inside a body")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_response(self, *, head: bool = False) -> Response:
        """The next response (a 1xx interim one too); ``head``: it answers a HEAD request."""
        lines = self._take_until(b"\r\n\r\n")[:-4].decode("latin-1").split("\r\n")
        version, status, _ = (lines[0] + " ").split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.lower(), value.strip()))
        response = Response(int(status), version, headers, b"")
        code = response.status
        if head or code in (101, 204, 304) or code < 200:
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            response.body = self._read_chunked()
        elif (length := response.header("content-length")) is not None:
            response.body = self._take(int(length))
        else:
            while self._fill():
                pass
            response.body, self._buffer = bytes(self._buffer), bytearray()
        return response

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while size := int(self._take_until(b"\r\n").split(b";")[0], 16):
            body += self._take(size + 2)[:-2]
        while self._take_until(b"\r\n") != b"\r\n":
            pass
        return bytes(body)

    def request(self, data: bytes, *, head: bool = False) -> Response:
        self.send(data)
        return self.read_response(head=head)

    def is_closed(self, timeout: float = 3.0) -> bool:
        """True once the gateway closes the connection (EOF or reset) within ``timeout``."""
        if self._buffer:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self._buffer += data
            return False
        return False

    def leftover(self) -> bytes:
        return bytes(self._buffer)


def get(path: str = "/", host: str = "gw.test", extra: str = "", version: str = "1.1") -> bytes:
    """A GET request head: ``get("/a", extra="X-A: 1\\r\\n")``."""
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until true or ``timeout``; integration tests only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
