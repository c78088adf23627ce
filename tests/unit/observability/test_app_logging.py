"""JSON application logs and the request context they carry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from apigate.observability.logging import (
    JsonFormatter,
    RequestContext,
    bind_request,
    configure_logging,
    current_request,
    unbind,
    update_request,
)

# .125 is exact in binary, so the millisecond digits do not depend on float rounding.
NOW = datetime(2026, 11, 28, 15, 21, 12, 125000, tzinfo=UTC).timestamp()


def record(extra: dict[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("apigate.test", logging.WARNING, __file__, 1, "hello", (), None)
    rec.created = NOW
    rec.__dict__.update(extra or {})
    return rec


def render(rec: logging.LogRecord) -> dict[str, object]:
    doc: dict[str, object] = json.loads(JsonFormatter().format(rec))
    return doc


def test_ecs_base_fields() -> None:
    """A record renders @timestamp, log.level, message, log.logger and process.pid."""
    doc = render(record())
    assert doc["@timestamp"] == "2026-11-28T15:21:12.125Z"
    assert doc["log.level"] == "warning"
    assert doc["message"] == "hello"
    assert doc["log.logger"] == "apigate.test"
    assert isinstance(doc["process.pid"], int)
    assert "http.request.id" not in doc


def test_extra_fields_are_kept() -> None:
    """Fields passed with extra= appear as they are; unserialisable ones as strings."""
    doc = render(record({"apigate.upstream": "users", "attempt": 2, "obj": object()}))
    assert doc["apigate.upstream"] == "users"
    assert doc["attempt"] == 2
    assert str(doc["obj"]).startswith("<object object")


def test_exception_fields() -> None:
    """An exception renders error.type, error.message and error.stack_trace."""
    try:
        raise ValueError("bad thing")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = render(rec)
    assert doc["error.type"] == "ValueError"
    assert doc["error.message"] == "bad thing"
    assert "Traceback" in str(doc["error.stack_trace"])


def test_bound_context_is_rendered_and_unbound() -> None:
    """Fields bound at ingress and added later appear until unbind()."""
    token = bind_request("req-1", client_ip="203.0.113.7")
    update_request(route="users", consumer="acme")
    try:
        doc = render(record())
    finally:
        unbind(token)
    assert doc["http.request.id"] == "req-1"
    assert doc["client.ip"] == "203.0.113.7"
    assert doc["apigate.route"] == "users"
    assert doc["apigate.consumer"] == "acme"
    assert current_request() is None
    assert "http.request.id" not in render(record())


def test_an_update_keeps_what_it_does_not_name() -> None:
    """The consumer added after auth leaves the route bound at ingress, and a later update of
    the route leaves the consumer."""
    token = bind_request("req-2", client_ip="203.0.113.8", route="users")
    try:
        update_request(consumer="acme")
        assert current_request() == RequestContext("req-2", "203.0.113.8", "users", "acme")
        update_request(route="orders")
        assert current_request() == RequestContext("req-2", "203.0.113.8", "orders", "acme")
    finally:
        unbind(token)


def test_update_without_bind_is_a_no_op() -> None:
    """update_request() outside a request binds nothing."""
    update_request(route="users")
    assert current_request() is None


async def test_concurrent_requests_keep_their_own_context() -> None:
    """Two tasks binding different requests each log their own request id."""
    seen: dict[str, object] = {}
    gate = asyncio.Event()

    async def handle(request_id: str) -> None:
        token = bind_request(request_id)
        await gate.wait()
        seen[request_id] = render(record())["http.request.id"]
        unbind(token)

    tasks = [asyncio.create_task(handle(rid)) for rid in ("a", "b")]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert seen == {"a": "a", "b": "b"}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_writes_json_lines(root_logger: logging.Logger) -> None:
    """configure_logging() sends records at the level and above as JSON lines, once."""
    stream = io.StringIO()
    configure_logging("info", stream)
    configure_logging("info", stream)  # a reload replaces, never duplicates, the handler
    logging.getLogger("apigate.x").debug("hidden")
    logging.getLogger("apigate.x").info("shown", extra={"k": "v"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line["k"]) for line in lines] == [("shown", "v")]


def test_configure_logging_rejects_unknown_level(root_logger: logging.Logger) -> None:
    """An unknown level name is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
