"""An append-only Merkle tree that keeps every complete subtree hash.

Level ``k`` holds, back to back, the 32-byte hashes of the complete, aligned
subtrees of 2**k leaves: ``size >> k`` of them. Any node the RFC 9162
recursions ask for is then either one slice of a level or, on the tree's
ragged right edge, a fold of at most log2(n) stored hashes, so an inclusion or
consistency proof in a log of ten million entries costs a few dozen lookups
instead of rehashing the log. The price is about 2 x 32 bytes per leaf of
memory (≈ 640 MB at 10 million leaves), held in plain ``bytearray``s so no
per-object overhead and no numpy.

The class is pure: it serialises to and from ``bytes`` and leaves files to its
caller.
"""

from __future__ import annotations

from clawql_secrets.audit import merkle
from clawql_secrets.errors import InputError, IntegrityError

_H = merkle.HASH_SIZE
_MAGIC = b"CQMT\x01"


class MerkleTree:
    """An RFC 9162 tree grown by appending leaf hashes."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: bytes | bytearray) -> MerkleTree:
        """Build in bulk from concatenated leaf hashes, level by level (fastest path)."""
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        return len(self._levels[0]) // _H

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index."""
        if len(leaf_hash) != _H:
            raise InputError(f"a leaf hash must be {_H} bytes, not {len(leaf_hash)}")
        index = self.size
        self.extend(leaf_hash)
        return index

    def extend(self, leaf_hashes: bytes | bytearray) -> None:
        """Add concatenated leaf hashes, completing every subtree they close."""
        if len(leaf_hashes) % _H:
            raise InputError("leaf hashes must be concatenated 32-byte SHA-256 digests")
        levels = self._levels
        levels[0] += leaf_hashes
        for k in range(64):
            pairs = len(levels[k]) // (2 * _H)
            if k + 1 == len(levels):
                if pairs == 0:
                    return
                levels.append(bytearray())
            upper = levels[k + 1]
            done = len(upper) // _H
            if done == pairs:
                return
            with memoryview(levels[k]) as lower:
                upper += merkle.hash_pairs(lower, done * 2 * _H, pairs * 2 * _H)

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise InputError(f"no leaf {index} in a tree of {self.size} leaves")
        return bytes(self._levels[0][index * _H : (index + 1) * _H])

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); the ``merkle.SubtreeHash`` the proof generators call."""
        if not 0 <= start < end <= self.size:
            raise InputError(f"no subtree [{start}, {end}) in a tree of {self.size} leaves")
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            off = (start >> level) * _H
            return bytes(self._levels[level][off : off + _H])
        k = merkle.split_point(n)
        return merkle.node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all of them)."""
        size = self.size if size is None else size
        if size == 0:
            return merkle.EMPTY_ROOT
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise InputError(f"the tree has {self.size} leaves, not {size}")
        return merkle.inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new_size = self.size if new_size is None else new_size
        if new_size > self.size:
            raise InputError(f"the tree has {self.size} leaves, not {new_size}")
        return merkle.consistency_proof(old_size, new_size, self.subtree)

    def to_bytes(self) -> bytes:
        """Magic, size (8 bytes, big-endian), then every level from the leaves up."""
        return b"".join([_MAGIC, self.size.to_bytes(8, "big"), *self._levels])

    @classmethod
    def from_bytes(cls, data: bytes, *, recompute: bool = True) -> MerkleTree:
        """Load ``to_bytes`` output.

        With ``recompute`` (the default) only the leaf level is trusted and every
        interior hash is rebuilt and compared, so a corrupted cache is reported
        rather than turned into proofs that fail later at a third party.
        """
        if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + 8:
            raise InputError("not a serialised Merkle tree (bad header)")
        size = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 8], "big")
        widths = [(size >> k) * _H for k in range(max(1, size.bit_length()))]
        body = memoryview(data)[len(_MAGIC) + 8 :]
        if len(body) != sum(widths):
            raise InputError(f"serialised Merkle tree of {size} leaves has the wrong length")
        if recompute:
            tree = cls.from_leaf_hashes(bytes(body[: widths[0]]))
            if tree.to_bytes() != data:
                raise IntegrityError(
                    "serialised Merkle tree: stored interior hashes differ from those "
                    "recomputed from its leaves"
                )
            return tree
        tree = cls()
        off = 0
        tree._levels = []
        for width in widths:
            tree._levels.append(bytearray(body[off : off + width]))
            off += width
        return tree
