"""Request ids and W3C traceparent parsing."""

from __future__ import annotations

import pytest

from apigate.observability.request_id import new_request_id, trace_id, valid_request_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01".encode()


def test_new_ids_are_hex_unique_and_acceptable() -> None:
    """new_request_id() gives 32 lowercase hex chars, distinct across many calls."""
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert all(valid_request_id(i.encode()) for i in ids[:10])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"abc-123", True),
        (b"A.b_c:d-9", True),
        (b"x" * 128, True),
        (b"", False),
        (b"x" * 129, False),
        (b"a b", False),
        (b"a/b", False),
        (b'a"b', False),
        (b"caf\xc3\xa9", False),
        (b"abc\n", False),
    ],
)
def test_valid_request_id(value: bytes, ok: bool) -> None:
    """A client X-Request-ID is kept only when it is 1-128 chars of [A-Za-z0-9._:-]."""
    assert valid_request_id(value) is ok


def test_trace_id_from_valid_traceparent() -> None:
    """A version-00 traceparent yields its trace id."""
    assert trace_id(VALID) == TRACE


def test_trace_id_future_version_may_append_fields() -> None:
    """A later version is read by its 00 prefix, extra fields after a dash allowed."""
    assert trace_id(b"01" + VALID[2:] + b"-extra") == TRACE


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"ff" + VALID[2:],  # forbidden version
        b"zz" + VALID[2:],  # not hex
        VALID + b"-extra",  # version 00 is exactly 55 chars
        b"01" + VALID[2:] + b"x",  # a later version must continue with "-"
        VALID[:-1],  # too short
        f"00-{'0' * 32}-00f067aa0ba902b7-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        VALID.upper(),  # uppercase hex
        VALID.replace(b"-", b"_"),  # wrong separators
        f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01".encode(),  # non-hex trace id
    ],
)
def test_trace_id_rejects_invalid(value: bytes | None) -> None:
    """An absent or malformed traceparent gives no trace id."""
    assert trace_id(value) is None
