"""Fixtures shared by the data-plane tests: one thread hosting every scripted upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.upstreams import UpstreamLoop


@pytest.fixture(scope="session")
def upstream_loop() -> Iterator[UpstreamLoop]:
    """The event loop thread that every scripted upstream of the session runs on."""
    loop = UpstreamLoop()
    yield loop
    loop.close()
