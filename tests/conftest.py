"""Shared fixtures: free loopback ports and a live local stack."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_stack_ports() -> tuple[int, int]:
    """A base port with the 6 node ports free, and a free bridge port."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 45000, 100)
        ports = [base + 10 * i + j for i in range(len(NODE_IDS)) for j in (0, 1)]
        bridge = base + 50
        if all(_free(p) for p in [*ports, bridge]):
            return base, bridge
    raise RuntimeError("no free port range found")


def new_settings(tmp: Path) -> StackSettings:
    base, bridge = free_stack_ports()
    return StackSettings(data_dir=tmp / "stack", base_port=base, bridge_port=bridge)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """A 3-node cluster behind a SoftHSM2-backed bridge, up for one test module."""
    settings = new_settings(tmp_path_factory.mktemp("live"))
    try:
        stack.up(settings)
        yield settings
    finally:
        stack.down(settings)
