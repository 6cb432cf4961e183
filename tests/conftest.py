"""Shared fixtures: a live local stack on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """A 3-node cluster behind a SoftHSM2-backed bridge, up for one test module."""
    settings = stack.free_settings(tmp_path_factory.mktemp("live") / "stack")
    try:
        stack.up(settings)
        yield settings
    finally:
        stack.down(settings)
