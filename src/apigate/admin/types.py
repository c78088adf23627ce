"""The admin plane's request/response values and handler type, shared by every admin API."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    authorization: bytes | None = None  # the Authorization header, for server.admin_token

    def json(self) -> Any:
        """The body parsed as JSON; raises AdminError(400) when it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise AdminError(400, "body is not valid JSON") from None


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def of(cls, data: Any, status: int = 200) -> AdminResponse:
        return cls(status, json.dumps(data, sort_keys=True).encode())


class AdminError(Exception):
    """Raised by a handler to answer ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]
# (method, exact path, handler); APIs expose `def admin_routes(...) -> list[AdminRoute]`.
AdminRoute = tuple[str, str, Handler]
