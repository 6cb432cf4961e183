"""Regenerates tests/audit/vectors/*.json. Usage: .venv/bin/python -m tests.audit.make_vectors

The Merkle vectors come from the RFC 9162 list recursion (``merkle.list_subtree``),
not from the level store under test; the checkpoint vector is signed with a key
derived from a public label, so no key material is committed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer, sign_checkpoint

HERE = Path(__file__).parent / "vectors"
VECTOR_KEY_LABEL = b"clawql-secrets audit test vector key (public, never use)"
MAX_SIZE = 17


def leaves() -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(MAX_SIZE)]


def vector_signer() -> Ed25519Signer:
    seed = hashlib.sha256(VECTOR_KEY_LABEL).digest()
    return Ed25519Signer("clawql.test/vector", Ed25519PrivateKey.from_private_bytes(seed))


def merkle_vectors() -> dict[str, object]:
    hashes = [merkle.leaf_hash(d) for d in leaves()]
    mth = merkle.list_subtree(hashes)
    return {
        "leaves": [d.decode() for d in leaves()],
        "roots": [mth(0, n).hex() if n else merkle.EMPTY_ROOT.hex() for n in range(MAX_SIZE + 1)],
        "inclusion": [
            {"index": i, "size": n, "path": [h.hex() for h in merkle.inclusion_proof(i, n, mth)]}
            for n in range(1, MAX_SIZE + 1)
            for i in range(n)
        ],
        "consistency": [
            {"old": m, "new": n, "path": [h.hex() for h in merkle.consistency_proof(m, n, mth)]}
            for n in range(1, MAX_SIZE + 1)
            for m in range(n + 1)
        ],
    }


def checkpoint_vectors() -> dict[str, object]:
    signer = vector_signer()
    hashes = [merkle.leaf_hash(d) for d in leaves()]
    cp = Checkpoint("clawql.local/audit/n1", MAX_SIZE, merkle.root_of(hashes))
    return {
        "verifier_key": str(signer.verifier_key()),
        "note": sign_checkpoint(cp, [signer]).decode(),
    }


def render() -> dict[str, str]:
    return {
        "merkle.json": json.dumps(merkle_vectors(), indent=1) + "\n",
        "checkpoint.json": json.dumps(checkpoint_vectors(), indent=1, ensure_ascii=False) + "\n",
    }


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
