"""Application logs as ECS JSON lines on stderr, with the current request's context.

The request context (request id, route, client ip, consumer) lives in one ContextVar: bound
at ingress with :func:`bind_request`, completed with :func:`update_request` once routing and
auth know more, and rendered into every log line written while it is bound. Bind it inside
the task that handles the request; ``asyncio`` copies the context into each new task, so
concurrent requests never see each other's values. Access lines go to stdout
(:mod:`apigate.observability.access_log`); application lines go to stderr so the two writers
never share a buffer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What app log lines say about the request they were written for."""

    request_id: str
    client_ip: str | None = None
    route: str | None = None
    consumer: str | None = None


_CONTEXT: ContextVar[RequestContext | None] = ContextVar("apigate_request", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": 40}


def bind_request(
    request_id: str,
    *,
    client_ip: str | None = None,
    route: str | None = None,
    consumer: str | None = None,
) -> Token[RequestContext | None]:
    """Bind the request context; pass the token to :func:`unbind` when the request ends."""
    return _CONTEXT.set(RequestContext(request_id, client_ip, route, consumer))


def update_request(*, route: str | None = None, consumer: str | None = None) -> None:
    """Add the route or consumer once known; a no-op when no request is bound."""
    current = _CONTEXT.get()
    if current is None:
        return
    # Not dataclasses.replace(): it costs several times this, once per authenticated request.
    _CONTEXT.set(RequestContext(
        current.request_id,
        current.client_ip,
        current.route if route is None else route,
        current.consumer if consumer is None else consumer,
    ))


def unbind(token: Token[RequestContext | None]) -> None:
    """Restore the context that was current before :func:`bind_request` (and its updates)."""
    _CONTEXT.reset(token)


def current_request() -> RequestContext | None:
    """The bound request context, if any."""
    return _CONTEXT.get()


class JsonFormatter(logging.Formatter):
    """One ECS JSON object per record, e.g. ``{"@timestamp": "...", "log.level": "info",
    "message": "reloaded", "log.logger": "apigate.supervisor", "process.pid": 7}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "@timestamp": _iso(record.created),
            "log.level": record.levelname.lower(),
            "message": record.getMessage(),
            "log.logger": record.name,
            "process.pid": record.process,
        }
        context = _CONTEXT.get()
        if context is not None:
            doc["http.request.id"] = context.request_id
            _put(doc, "client.ip", context.client_ip)
            _put(doc, "apigate.route", context.route)
            _put(doc, "apigate.consumer", context.consumer)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            doc["error.type"] = type(error).__qualname__
            doc["error.message"] = str(error)
            doc["error.stack_trace"] = "".join(traceback.format_exception(error)).rstrip()
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        return json.dumps(doc, default=str, separators=(",", ":"))


def _iso(created: float) -> str:
    """``1764343272.345`` -> ``"2026-11-28T15:21:12.345Z"``."""
    second = int(created)
    millis = int((created - second) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{millis:03d}Z"


def _put(doc: dict[str, Any], key: str, value: str | None) -> None:
    if value is not None:
        doc[key] = value


_HANDLER_NAME = "apigate-json"


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every logger's records at ``level`` or above as JSON lines to ``stream`` (stderr).

    ``level`` is one of debug, info, warning, error (``observability.log_level``). Calling it
    again (on reload) replaces apigate's handler instead of adding a second one.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {sorted(_LEVELS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
