"""Audit fixtures: a real local write-once store holding two streams, and tamper tools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.errors import StoreError
from clawql_secrets.audit.leaf import leaf_id
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore

SEG = "segments/n1/{:020d}-{:020d}.jsonl"
CP = "checkpoints/n1/{:020d}.txt"


def entry(stream: str, i: int) -> dict[str, object]:
    return {
        "time": f"2025-01-01T00:00:{i % 60:02d}Z",
        "type": "response",
        "request": {"path": f"database/creds/agent-{i % 3}", "operation": "read"},
        "auth": {"entity_id": f"agent-{i % 5}", "metadata": {"tenant": "t1"}},
        "node": stream,
        "seq": i,
    }


def stored_ids(store: WormStore, stream: str) -> list[str]:
    """Entry ids of a stream's stored leaves, in order."""
    ids: list[str] = []
    for name in store.list(f"segments/{stream}/"):
        ids.extend(leaf_id(e) for e in layout.decode_segment(store.get(name)))
    return ids


def all_bytes(store: WormStore) -> bytes:
    return b"".join(store.get(n) for n in store.list(""))


class DownStore(MemoryWormStore):
    """A memory store whose writes fail while ``down`` is set (a store outage)."""

    down = False

    def put_once(self, name: str, data: bytes) -> None:
        if self.down:
            raise StoreError("down")
        super().put_once(name, data)


@pytest.fixture(scope="session")
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/audit")


def build_log(root: Path, signer: Ed25519Signer) -> LocalWormStore:
    """Stream n1: 3 checkpoints of 10 entries; stream n2: one of 10."""
    store = LocalWormStore(root)
    log = AuditLog(store, signer)
    for batch in range(3):
        for i in range(10):
            log.append("n1", entry("n1", batch * 10 + i))
        log.checkpoint("n1")
    for i in range(10):
        log.append("n2", entry("n2", i))
    log.checkpoint("n2")
    return store


@pytest.fixture
def store(tmp_path: Path, signer: Ed25519Signer) -> LocalWormStore:
    return build_log(tmp_path / "worm", signer)


class Tamper:
    """What root can do to a local write-once directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        path = self.path(name)
        if path.exists():
            os.chmod(path, 0o644)
        path.write_bytes(data)
        os.chmod(path, 0o444)

    def delete(self, name: str) -> None:
        self.path(name).unlink()

    def rename(self, old: str, new: str) -> None:
        self.path(old).rename(self.path(new))

    def lines(self, name: str) -> list[bytes]:
        return self.read(name).splitlines(keepends=True)

    def set_lines(self, name: str, lines: list[bytes]) -> None:
        self.write(name, b"".join(lines))
