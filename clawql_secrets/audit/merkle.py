"""RFC 9162 Merkle tree hashing and proofs (§2.1), with no I/O.

Leaves and interior nodes hash with different prefixes (0x00, 0x01) so that no
leaf can pass for a node. Proof *generation* is written against a
``SubtreeHash`` callback, MTH(D[start:end]), so the same RFC recursions serve a
plain list in tests and the stored level index of ``tree.MerkleTree`` in
production. Verification follows the RFC's iterative algorithms word for word,
so a third party can check our proofs with the RFC alone.

Failures are split the way certificate-transparency splits them:
``ProofError`` when a proof is malformed or does not lead to the roots it
claims (retry with a better proof), ``ConsistencyError`` only when the
evidence shows the log itself misbehaved: a tree that shrank, two roots for one
size, or a proof that authenticates against the new root yet shows the old
tree head is not its prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from clawql_secrets.audit.errors import ConsistencyError, ProofError
from clawql_secrets.errors import InputError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = hashlib.sha256(b"\x00")
_NODE = hashlib.sha256(b"\x01")

SubtreeHash = Callable[[int, int], bytes]
"""MTH(D[start:end]) for the aligned ranges the RFC recursions ask for."""


def leaf_hash(data: bytes) -> bytes:
    h = _LEAF.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    h = _NODE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def hash_leaves(entries: Iterable[bytes]) -> bytes:
    """Leaf hashes of many entries, concatenated: the bulk path of ``verify``."""
    leaf = _LEAF.copy
    parts = []
    for data in entries:
        h = leaf()
        h.update(data)
        parts.append(h.digest())
    return b"".join(parts)


def hash_pairs(level: memoryview, start: int, stop: int) -> bytes:
    """Parent hashes of the concatenated sibling pairs ``level[start:stop]`` (64 bytes each)."""
    node = _NODE.copy
    parts = []
    for off in range(start, stop, 2 * HASH_SIZE):
        h = node()
        h.update(level[off : off + 2 * HASH_SIZE])
        parts.append(h.digest())
    return b"".join(parts)


def split_point(n: int) -> int:
    """The largest power of two strictly below ``n`` (RFC 9162's k), for n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list: the reference definition, for small trees and tests."""
    return list_subtree(leaf_hashes)(0, len(leaf_hashes))


def list_subtree(leaf_hashes: Sequence[bytes]) -> SubtreeHash:
    """A ``SubtreeHash`` that recomputes from a list: O(n), fine for small trees."""

    def mth(start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return leaf_hashes[start]
        k = split_point(n)
        return node_hash(mth(start, start + k), mth(start + k, end))

    return mth


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, ordered from the leaf upwards."""
    if not 0 <= index < size:
        raise InputError(f"no leaf {index} in a tree of {size} leaves")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1 (SUBPROOF, unrolled)."""
    if not 0 <= old_size <= new_size:
        raise InputError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, complete = 0, new_size, True
    while old_size != hi:
        k = split_point(hi - lo)
        if old_size - lo <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            complete = False
    if not complete:
        proof.append(subtree(lo, hi))
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ``ProofError`` unless ``proof`` leads ``leaf`` to ``root``."""
    _check_hashes([leaf, root, *proof])
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
    want = _inclusion_length(index, size)
    if len(proof) != want:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, {want} expected")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the tree root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise unless the tree of ``old_size`` is a prefix of the new one."""
    _check_hashes([old_root, new_root, *proof])
    if old_size < 0 or new_size < old_size:
        raise ConsistencyError(f"the tree shrank from {old_size} to {new_size} leaves")
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ConsistencyError(f"two different roots for the same size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    want = _consistency_length(old_size, new_size)
    if len(proof) != want:
        raise ProofError(f"consistency proof has {len(proof)} hashes, {want} expected")
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or sr != new_root:
        raise ProofError(f"consistency proof {old_size}->{new_size} does not lead to the new root")
    if fr != old_root:
        # sr authenticated the path, so fr is the new tree's true prefix root.
        raise ConsistencyError(
            f"the tree of {new_size} leaves does not extend the tree head of size {old_size}: "
            "the log was rewritten or forked"
        )


def _inclusion_length(index: int, size: int) -> int:
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_length(old_size: int, new_size: int) -> int:
    shift = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size == 1 << shift else 1
    return seed + _inclusion_length(old_size - 1, new_size) - shift


def _check_hashes(hashes: Sequence[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"a hash of {len(h)} bytes where SHA-256 gives {HASH_SIZE}")
