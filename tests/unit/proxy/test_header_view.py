"""The str view of request headers that auth and rate-limit keys read."""

from __future__ import annotations

import pytest

from apigate.http.request import HeaderView


def test_lookup_is_case_insensitive_and_decodes() -> None:
    """Names are matched case-insensitively and values come back as text."""
    view = HeaderView([(b"x-api-key", b"k1"), (b"accept", b"*/*")])
    assert view["X-API-Key"] == "k1"
    assert view.get("missing") is None
    assert set(view) == {"x-api-key", "accept"}


def test_repeated_field_is_combined_not_first_wins() -> None:
    """A repeated field reads as one comma-joined value, so a second credential is never
    silently ignored in favour of the first (RFC 9110 5.3)."""
    view = HeaderView([(b"x-api-key", b"good"), (b"x-api-key", b"bad")])
    assert view["x-api-key"] == "good, bad"
    with pytest.raises(KeyError):
        view["authorization"]
