"""Witness fixtures: a small signed log to feed the witness, and a witness around a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer, sign_checkpoint
from clawql_secrets.audit.cosignature import WitnessSigner
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.witness.server import Witness
from clawql_secrets.witness.state import AddCheckpointRequest, LogPolicy
from clawql_secrets.witness.store import StateStore

ORIGIN = "clawql.local/audit/n1"
NOW = 1_750_000_000


class Log:
    """A log over a real Merkle tree, signing C2SP checkpoints with its own key."""

    def __init__(self, signer: Ed25519Signer, origin: str = ORIGIN, *, tag: str = "") -> None:
        self.signer = signer
        self.origin = origin
        self.tag = tag
        self.tree = MerkleTree()

    def grow(self, n: int) -> Log:
        for _ in range(n):
            self.tree.append(merkle.leaf_hash(f"{self.tag}entry {self.tree.size}".encode()))
        return self

    def fork(self, size: int, *, tag: str = "fork ") -> Log:
        """A log sharing this log's first ``size`` entries, growing differently after them."""
        other = Log(self.signer, self.origin, tag=tag)
        other.tree = MerkleTree.from_leaf_hashes(b"".join(map(self.tree.leaf, range(size))))
        return other

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        n = self.tree.size if size is None else size
        return Checkpoint(self.origin, n, self.tree.root(n))

    def note(self, size: int | None = None) -> bytes:
        return sign_checkpoint(self.checkpoint(size), [self.signer])

    def proof(self, old: int, size: int | None = None) -> list[bytes]:
        n = self.tree.size if size is None else size
        return [] if old == 0 else self.tree.consistency_proof(old, n)

    def request(self, old: int, size: int | None = None) -> bytes:
        return AddCheckpointRequest.build(old, self.proof(old, size), self.note(size)).to_bytes()


@pytest.fixture(scope="session")
def log_signer() -> Ed25519Signer:
    return Ed25519Signer.generate(ORIGIN)


@pytest.fixture(scope="session")
def witness_signer() -> WitnessSigner:
    return WitnessSigner.generate("witness.test/w1")


@pytest.fixture
def log(log_signer: Ed25519Signer) -> Log:
    return Log(log_signer)


@pytest.fixture
def policy(log_signer: Ed25519Signer) -> LogPolicy:
    return LogPolicy(ORIGIN, (log_signer.verifier_key(),))


@pytest.fixture
def witness(tmp_path: Path, witness_signer: WitnessSigner, policy: LogPolicy) -> Iterator[Witness]:
    store = StateStore.open(tmp_path / "state", [ORIGIN])
    try:
        yield Witness(witness_signer, {ORIGIN: policy}, store, clock=lambda: NOW)
    finally:
        store.close()
