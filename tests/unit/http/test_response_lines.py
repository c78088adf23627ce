"""ResponseWriter.start with header lines rendered beforehand (the gateway's own headers)."""

from __future__ import annotations

from typing import Any, cast

from apigate.http.request import Request
from apigate.http.response import ResponseWriter, header_lines


class _Conn:
    """What ResponseWriter needs of a connection: write()."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def _request() -> Request:
    return Request(
        method="GET", raw_path=b"/", path="/", query=b"", version="1.1", headers=[],
        host=b"example.test", keep_alive=True, content_length=None, chunked=False,
        upgrade=False, body=None,
    )


def test_header_lines_render_each_header_on_its_own_line() -> None:
    """(name, value) pairs become ``name: value`` lines, in order; none gives nothing."""
    assert header_lines([(b"Retry-After", b"3"), (b"RateLimit", b'"a";r=0;t=3')]) == (
        b'Retry-After: 3\r\nRateLimit: "a";r=0;t=3\r\n'
    )
    assert header_lines(()) == b""


def test_lines_follow_the_headers_and_precede_the_framing() -> None:
    """Pre-rendered lines are written as given, after the upstream's headers and before
    Content-Length and the blank line that ends the head."""
    conn = _Conn()
    writer = ResponseWriter(cast(Any, conn), _request())
    lines = [
        b"x-request-id: abc\r\n",
        b'RateLimit-Policy: "a";q=5;w=60\r\nRateLimit: "a";r=4;t=60\r\n',
    ]
    writer.start(200, [(b"content-type", b"text/plain")], content_length=2, lines=lines)
    writer.write(b"ok")
    assert conn.written == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-request-id: abc\r\n"
        b'RateLimit-Policy: "a";q=5;w=60\r\nRateLimit: "a";r=4;t=60\r\n'
        b"content-length: 2\r\n\r\nok"
    )
