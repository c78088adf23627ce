"""ECS access lines: their fields, their JSON, and how they are batched onto stdout."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from apigate.observability.access_log import (
    PIPE_BUF,
    AccessEntry,
    AccessLog,
    NullAccessLog,
    format_entry,
)

# .125 is exact in binary, so the millisecond digits do not depend on float rounding.
NOW = datetime(2026, 11, 28, 15, 21, 12, 125000, tzinfo=UTC).timestamp()


def entry(**changes: object) -> AccessEntry:
    values: dict[str, object] = {
        "method": "GET", "path": "/users/42", "status": 200, "duration_ns": 1_500_000,
        "client_ip": "203.0.113.7", "source_ip": "10.0.0.2", "request_id": "abc123",
    }
    values.update(changes)
    return AccessEntry(**values)  # type: ignore[arg-type]


class Sink:
    """A write() that records each call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in b"".join(self.writes).splitlines()]


def test_line_has_the_ecs_fields() -> None:
    """A full entry renders every ECS field with its value and type."""
    full = entry(query="a=1", request_bytes=10, response_bytes=512, user_agent="curl/8",
                 trace_id="4bf92f3577b34da6a3ce929d0e0e4736", route="users", upstream="users-svc",
                 consumer="acme", ratelimit_decision="allowed", ratelimit_policy="per-ip")
    line = format_entry(full, "2026-11-28T15:21:12.345Z", 77)
    assert line.endswith("\n")
    assert json.loads(line) == {
        "@timestamp": "2026-11-28T15:21:12.345Z", "log.level": "info",
        "message": "GET /users/42 200", "http.request.method": "GET", "url.path": "/users/42",
        "url.query": "a=1", "http.response.status_code": 200, "http.request.body.bytes": 10,
        "http.response.body.bytes": 512, "event.duration": 1_500_000,
        "client.ip": "203.0.113.7", "source.ip": "10.0.0.2", "user_agent.original": "curl/8",
        "http.request.id": "abc123", "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "apigate.route": "users", "apigate.upstream": "users-svc", "apigate.consumer": "acme",
        "apigate.ratelimit.decision": "allowed", "apigate.ratelimit.policy": "per-ip",
        "service.name": "apigate", "process.pid": 77,
    }


def test_absent_fields_are_left_out() -> None:
    """An empty query and None fields do not appear in the line."""
    doc = json.loads(format_entry(entry(), "t", 1))
    for name in ("url.query", "user_agent.original", "trace.id", "apigate.route",
                 "apigate.upstream", "apigate.consumer", "apigate.ratelimit.decision",
                 "apigate.ratelimit.policy"):
        assert name not in doc


def test_hostile_strings_stay_valid_ascii_json() -> None:
    """Quotes, backslashes, control and non-ASCII characters are escaped, not injected."""
    nasty = 'x"}\\\n\x00é\udcff'
    line = format_entry(entry(path=nasty, user_agent=nasty, consumer=nasty), "t", 1)
    line.encode("ascii")
    doc = json.loads(line)
    assert doc["url.path"] == doc["user_agent.original"] == doc["apigate.consumer"] == nasty


def test_timestamp_is_utc_iso_with_millis() -> None:
    """@timestamp comes from the injected clock as ISO 8601 UTC with milliseconds."""
    sink = Sink()
    AccessLog(sink, clock=lambda: NOW).log(entry())
    assert sink.lines()[0]["@timestamp"] == "2026-11-28T15:21:12.125Z"


async def test_lines_of_one_tick_are_written_together() -> None:
    """Lines logged in one loop tick reach stdout in one write, after the tick."""
    sink = Sink()
    log = AccessLog(sink, clock=lambda: NOW)
    log.log(entry(request_id="a"))
    log.log(entry(request_id="b"))
    assert sink.writes == []
    await asyncio.sleep(0)
    assert len(sink.writes) == 1
    assert [line["http.request.id"] for line in sink.lines()] == ["a", "b"]


def test_writes_are_whole_lines_within_pipe_buf() -> None:
    """A large flush is cut at line boundaries into writes of at most PIPE_BUF bytes."""
    sink = Sink()
    log = AccessLog(sink, clock=lambda: NOW, max_buffer_bytes=1 << 20)
    for number in range(100):
        log._lines.append(format_entry(entry(request_id=str(number)), "t", 1))
    log.flush()
    assert len(sink.writes) > 1
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in sink.writes)
    assert [line["http.request.id"] for line in sink.lines()] == [str(n) for n in range(100)]


def test_full_buffer_flushes_at_once() -> None:
    """When the buffer passes max_buffer_bytes the lines are written without waiting."""
    sink = Sink()
    log = AccessLog(sink, clock=lambda: NOW, max_buffer_bytes=1)
    log.log(entry())
    assert len(sink.lines()) == 1


def test_short_writes_are_completed() -> None:
    """A write() that takes only part of the data is called again with the rest."""
    taken: list[bytes] = []

    def trickle(data: bytes) -> int:
        taken.append(bytes(data[:7]))
        return min(7, len(data))

    AccessLog(trickle, clock=lambda: NOW).log(entry())
    assert json.loads(b"".join(taken))["url.path"] == "/users/42"


def test_write_errors_drop_lines_without_raising() -> None:
    """A closed stdout costs the lines (counted in dropped), never the request."""

    def broken(data: bytes) -> int:
        raise BrokenPipeError

    log = AccessLog(broken, clock=lambda: NOW)
    log.log(entry())
    log.log(entry())
    assert log.dropped == 2


def test_null_access_log_writes_nothing() -> None:
    """NullAccessLog takes entries and flushes without output or error."""
    log = NullAccessLog()
    log.log(entry())
    log.flush()
