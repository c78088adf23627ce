"""Fixtures of the distributed rate-limiting tests (Redis ones come from the parent conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.gateway import demo_upstream


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """One demo JSON upstream for every gateway of the session."""
    with demo_upstream() as port:
        yield port
