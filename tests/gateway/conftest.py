"""Fixtures of the gateway's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.registry_redis import PrivateRedis, private_redis


@pytest.fixture(scope="module")
def registry_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The stack's registry Redis alone (no OpenBao), for one test module."""
    with private_redis(tmp_path_factory.mktemp("registry-redis")) as r:
        yield r
