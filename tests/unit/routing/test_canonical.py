"""The canonical path that routing, auth and rate-limit keys share."""

from __future__ import annotations

import pytest

from apigate.routing.canonical import BadPath, canonical_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/users/42", "/users/42"),
        (b"//admin", "/admin"),
        (b"/a//b///c", "/a/b/c"),
        (b"/public/../admin", "/admin"),
        (b"/public/%2e%2e/admin", "/admin"),
        (b"/public/%2E%2E/admin", "/admin"),
        (b"/%61dmin", "/admin"),
        (b"/a/./b/.", "/a/b/"),
        (b"/a/b/..", "/a/"),
        (b"/x%2a", "/x%2A"),
        (b"/%7Euser", "/~user"),
        (b"/a/b/", "/a/b/"),
    ],
)
def test_canonical_forms(raw: bytes, expected: str) -> None:
    """Dot segments, `//` and encoded unreserved characters normalise to one path."""
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/..",
        b"/a/../../b",
        b"/%2e%2e/x",
        b"/public/..%2fadmin",
        b"/a%5cb",
        b"/a%00b",
        b"/a%zz",
        b"/a%4",
        b"/a b",
        b"/caf\xc3\xa9",
        b"relative",
    ],
)
def test_refused_paths(raw: bytes) -> None:
    """Paths escaping the root, encoded separators and bad escapes are refused."""
    with pytest.raises(BadPath):
        canonical_path(raw)


@pytest.mark.parametrize("raw", [b"/public/..;/admin", b"/a/.;x/b", b"/public/%2e%2e;/admin"])
def test_dot_segments_with_path_parameters_are_refused(raw: bytes) -> None:
    """`..;` reads as `..` to servlet containers, so it is refused rather than routed as a name."""
    with pytest.raises(BadPath):
        canonical_path(raw)
