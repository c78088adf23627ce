"""Fixtures of the end-to-end auth tests: one thread hosting the scripted upstreams."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.upstreams import UpstreamLoop


@pytest.fixture(scope="session")
def auth_upstreams() -> Iterator[UpstreamLoop]:
    """The event loop thread that every scripted upstream of these tests runs on."""
    loop = UpstreamLoop()
    yield loop
    loop.close()
