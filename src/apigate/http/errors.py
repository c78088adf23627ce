"""Errors the data plane answers itself, each with a status and a short JSON body."""

from __future__ import annotations

import json

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """Answer ``status`` with ``{"error": message, "request_id": ...}``.

    ``close`` forces ``Connection: close`` (framing errors: nothing after them can be trusted).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers


def error_body(message: str, request_id: str) -> bytes:
    """``error_body("no route", "ab12")`` -> ``b'{"error":"no route","request_id":"ab12"}'``."""
    return json.dumps({"error": message, "request_id": request_id}, separators=(",", ":")).encode()


_STATUS_LINES: dict[tuple[str, int], bytes] = {}


def status_line(version: str, status: int) -> bytes:
    """``status_line("1.1", 404)`` -> ``b"HTTP/1.1 404 Not Found\\r\\n"``, built once, cached."""
    line = _STATUS_LINES.get((version, status))
    if line is None:
        line = f"HTTP/{version} {status} {REASONS.get(status, 'Unknown')}\r\n".encode()
        if len(_STATUS_LINES) < 4096:
            _STATUS_LINES[(version, status)] = line
    return line
