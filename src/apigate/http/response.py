"""Writing one response to the client: framing (Content-Length, chunked, close), HEAD rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from apigate.http.errors import error_body, status_line

if TYPE_CHECKING:
    from apigate.http.request import Request
    from apigate.http.server import HttpConnection

_NO_BODY_STATUS = frozenset({204, 304})


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Headers rendered as they are written: ``[(b"A", b"1")]`` -> ``b"A: 1\r\n"``."""
    return b"".join(b"%s: %s\r\n" % header for header in headers)


class ResponseWriter:
    """``start`` the head once, ``write`` body chunks, ``end``; framing is chosen in ``start``."""

    __slots__ = (
        "_chunked", "_conn", "_no_body", "bytes_sent", "close", "request", "started", "status",
    )

    def __init__(self, conn: HttpConnection, request: Request) -> None:
        self._conn = conn
        self.request = request
        self.started = False
        self.status = 0
        self.bytes_sent = 0
        self.close = not request.keep_alive
        self._chunked = False
        self._no_body = False

    def start(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        *,
        content_length: int | None,
        upgrade: bool = False,
        lines: Sequence[bytes] = (),
    ) -> None:
        """Write the head; ``content_length=None`` streams (chunked on 1.1, close on 1.0).

        ``lines`` are header lines already rendered (``b"RateLimit: ...\r\n"``, see
        :func:`header_lines`), written after ``headers``.
        """
        request = self.request
        self.started = True
        self.status = status
        self._no_body = request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        if request.body is not None and not request.body.complete and not upgrade:
            self.close = True  # the rest of the body would have to be read and thrown away
        if request.upgrade and not upgrade:
            self.close = True  # llhttp stopped parsing at the Upgrade: nothing after it is HTTP
        parts = [status_line(request.version, status)]
        for name, value in headers:  # pieces for the one join below: no bytes built per header
            parts += (name, b": ", value, b"\r\n")
        parts += lines
        if upgrade:
            parts.append(b"connection: upgrade\r\n")
        elif content_length is not None:
            if not (status in _NO_BODY_STATUS or status < 200):
                parts.append(b"content-length: %d\r\n" % content_length)
        elif not self._no_body:
            if request.version == "1.1":
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close = True
        if self.close and not upgrade:
            parts.append(b"connection: close\r\n")
        elif request.version == "1.0" and not upgrade:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._conn.write(b"".join(parts))

    def write(self, chunk: bytes) -> None:
        if self._no_body or not chunk:
            return
        self.bytes_sent += len(chunk)
        if self._chunked:
            self._conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self._conn.write(chunk)

    def end(self) -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")

    def send(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *, close: bool = False
    ) -> None:
        """A whole small response in one write."""
        self.close = self.close or close
        self.start(status, headers, content_length=len(body))
        self.write(body)

    def send_error(
        self,
        status: int,
        message: str,
        request_id: str,
        *,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        hdrs = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
        hdrs.extend(headers)
        self.send(status, error_body(message, request_id), hdrs, close=close)
