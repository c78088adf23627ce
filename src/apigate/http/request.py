"""One parsed request head, as the data plane sees it after the framing rules."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from apigate.http.body import RequestBody


class HeaderView(Mapping[str, str]):
    """A read-only ``str -> str`` view of the request headers, looked up on demand.

    Auth and rate-limit keys read one or two headers; building a dict of all of them for
    every request would cost more than scanning the list for those few.
    ``HeaderView([(b"x-tenant", b"acme")])["x-tenant"]`` -> ``"acme"``.
    """

    __slots__ = ("_headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        """The field value; a repeated field is combined with ", " (RFC 9110 5.3), so a second
        credential or cost can never be ignored in favour of the first."""
        key = name.lower().encode("latin-1")
        values = [value for header, value in self._headers if header == key]
        if not values:
            raise KeyError(name)
        return (values[0] if len(values) == 1 else b", ".join(values)).decode("latin-1")

    def __iter__(self) -> Iterator[str]:
        seen = dict.fromkeys(name.decode("latin-1") for name, _ in self._headers)
        return iter(seen)

    def __len__(self) -> int:
        return len({name for name, _ in self._headers})


class Request:
    """A request whose head passed the framing rules; ``path`` is canonical."""

    __slots__ = (
        "body", "chunked", "content_length", "head_start", "headers", "host", "keep_alive",
        "method", "path", "query", "raw_path", "upgrade", "version",
    )

    def __init__(
        self,
        *,
        method: str,
        raw_path: bytes,
        path: str,
        query: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        host: bytes,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
        body: RequestBody | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade
        self.body = body
        # What the handler's head start (see server.HeadStart) left for the handler, if any.
        self.head_start: Any = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, by lower-case name: ``header(b"user-agent")``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]
