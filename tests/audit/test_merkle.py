"""RFC 9162 Merkle math: external and committed vectors, then properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawql_secrets.audit import merkle
from clawql_secrets.audit.errors import ConsistencyError, ProofError
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.errors import InputError, IntegrityError
from tests.audit import make_vectors

h = bytes.fromhex

# The RFC 6962 test vectors shared by certificate-transparency and
# transparency-dev/merkle (testonly): leaves, roots of sizes 1..8 and proofs.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
             "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (index, size, path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (0, 1, []),
]  # fmt: skip
CT_CONSISTENCY = [  # (old, new, path)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip


def ct_tree() -> MerkleTree:
    return MerkleTree.from_leaf_hashes(b"".join(merkle.leaf_hash(h(x)) for x in CT_LEAVES))


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert MerkleTree().root() == h(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_ct_roots(size: int) -> None:
    assert ct_tree().root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    tree = ct_tree()
    assert [p.hex() for p in tree.inclusion_proof(index, size)] == path
    leaf = merkle.leaf_hash(h(CT_LEAVES[index]))
    merkle.verify_inclusion(leaf, index, size, [h(p) for p in path], h(CT_ROOTS[size - 1]))


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    tree = ct_tree()
    assert [p.hex() for p in tree.consistency_proof(old, new)] == path
    proof = [h(p) for p in path]
    merkle.verify_consistency(old, new, proof, h(CT_ROOTS[old - 1]), h(CT_ROOTS[new - 1]))


def test_committed_vectors_are_reproduced_byte_for_byte() -> None:
    for name, text in make_vectors.render().items():
        assert (make_vectors.HERE / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run python -m tests.audit.make_vectors and review the diff"
        )


def test_level_store_matches_committed_vectors() -> None:
    vectors = json.loads((Path(make_vectors.HERE) / "merkle.json").read_text())
    hashes = [merkle.leaf_hash(leaf.encode()) for leaf in vectors["leaves"]]
    incremental = MerkleTree()
    for n, root in enumerate(vectors["roots"]):
        assert incremental.root().hex() == root
        if n < len(hashes):
            incremental.append(hashes[n])
    for case in vectors["inclusion"]:
        path = incremental.inclusion_proof(case["index"], case["size"])
        assert [p.hex() for p in path] == case["path"]
    for case in vectors["consistency"]:
        path = incremental.consistency_proof(case["old"], case["new"])
        assert [p.hex() for p in path] == case["path"]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(left + right) != merkle.node_hash(left, right)


def test_bulk_and_incremental_builds_agree_at_every_size() -> None:
    hashes = [merkle.leaf_hash(bytes([i])) for i in range(70)]
    one_by_one = MerkleTree()
    for i, leaf in enumerate(hashes):
        one_by_one.append(leaf)
        assert (
            one_by_one.to_bytes()
            == MerkleTree.from_leaf_hashes(b"".join(hashes[: i + 1])).to_bytes()
        )
    chunked = MerkleTree()
    for lo in range(0, 70, 9):
        chunked.extend(b"".join(hashes[lo : lo + 9]))
    assert chunked.to_bytes() == one_by_one.to_bytes()


def test_serialised_tree_round_trips() -> None:
    tree = MerkleTree.from_leaf_hashes(b"".join(merkle.leaf_hash(bytes([i])) for i in range(37)))
    data = tree.to_bytes()
    assert MerkleTree.from_bytes(data).root() == tree.root()
    assert MerkleTree.from_bytes(data, recompute=False).inclusion_proof(5) == tree.inclusion_proof(
        5
    )


def test_serialised_tree_with_corrupt_interior_hash_is_refused() -> None:
    data = bytearray(MerkleTree.from_leaf_hashes(b"\x11" * 32 * 9).to_bytes())
    data[-1] ^= 1  # the root level, an interior hash
    with pytest.raises(IntegrityError, match="interior hashes"):
        MerkleTree.from_bytes(bytes(data))


@pytest.mark.parametrize(
    "blob",
    [b"", b"CQMT\x01", b"XXXX\x01" + bytes(8), b"CQMT\x01" + (3).to_bytes(8, "big") + b"\0" * 31],
    ids=["empty", "no-size", "bad-magic", "wrong-length"],
)
def test_malformed_serialised_tree_is_input_error(blob: bytes) -> None:
    with pytest.raises(InputError):
        MerkleTree.from_bytes(blob)


# -- failures: which error, for which fault ---------------------------------------------

ROOT8, ROOT6 = h(CT_ROOTS[7]), h(CT_ROOTS[5])
LEAF5 = merkle.leaf_hash(h(CT_LEAVES[5]))
PATH5 = [h(p) for p in CT_INCLUSION[1][2]]
CONS68 = [h(p) for p in CT_CONSISTENCY[1][2]]
vi, vc = merkle.verify_inclusion, merkle.verify_consistency


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("wrong_index", lambda: vi(LEAF5, 4, 8, PATH5, ROOT8)),
        ("index_beyond_size", lambda: vi(LEAF5, 8, 8, PATH5, ROOT8)),
        ("negative_index", lambda: vi(LEAF5, -1, 8, PATH5, ROOT8)),
        ("proof_too_short", lambda: vi(LEAF5, 5, 8, PATH5[:-1], ROOT8)),
        ("proof_too_long", lambda: vi(LEAF5, 5, 8, [*PATH5, ROOT8], ROOT8)),
        ("short_hash_in_proof", lambda: vi(LEAF5, 5, 8, [PATH5[0][:31], *PATH5[1:]], ROOT8)),
        ("wrong_size", lambda: vi(LEAF5, 5, 6, PATH5, ROOT8)),
        ("consistency_proof_truncated", lambda: vc(6, 8, CONS68[:-1], ROOT6, ROOT8)),
        ("consistency_wrong_new_root", lambda: vc(6, 8, CONS68, ROOT6, ROOT6)),
        ("consistency_nonempty_from_empty", lambda: vc(0, 8, CONS68, ROOT6, ROOT8)),
        ("consistency_nonempty_equal_sizes", lambda: vc(8, 8, CONS68, ROOT8, ROOT8)),
        ("consistency_empty_proof", lambda: vc(6, 8, [], ROOT6, ROOT8)),
    ],
)
def test_insufficient_proofs_are_proof_errors(name: str, call: object) -> None:
    with pytest.raises(ProofError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("tree_shrank", lambda: vc(8, 6, [], ROOT8, ROOT6)),
        ("two_roots_one_size", lambda: vc(8, 8, [], ROOT8, ROOT6)),
        # The proof leads to the new root, yet its prefix is not the old tree head: a fork.
        ("old_head_not_a_prefix", lambda: vc(6, 8, CONS68, h(CT_ROOTS[4]), ROOT8)),
    ],
)
def test_log_misbehaviour_is_consistency_error(name: str, call: object) -> None:
    with pytest.raises(ConsistencyError):
        call()  # type: ignore[operator]


def test_generating_proofs_for_absent_leaves_is_input_error() -> None:
    tree = ct_tree()
    for call in (
        lambda: tree.inclusion_proof(8),
        lambda: tree.inclusion_proof(0, 9),
        lambda: tree.consistency_proof(9),
        lambda: tree.consistency_proof(5, 4),
        lambda: tree.append(b"short"),
    ):
        with pytest.raises(InputError):
            call()


# -- properties -----------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)


def random_tree(n: int) -> tuple[list[bytes], MerkleTree]:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    return hashes, MerkleTree.from_leaf_hashes(b"".join(hashes))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_inclusion_proof_verifies_and_any_flipped_bit_fails(data: st.DataObject) -> None:
    n = data.draw(sizes)
    hashes, tree = random_tree(n)
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    root = tree.root(size)
    assert root == merkle.root_of(hashes[:size])
    proof = tree.inclusion_proof(index, size)
    merkle.verify_inclusion(hashes[index], index, size, proof, root)

    bit = data.draw(st.integers(0, 255))
    target = data.draw(st.sampled_from(["leaf", "root", *range(len(proof))]))
    leaf, bad_root, bad_proof = hashes[index], root, list(proof)
    if target == "leaf":
        leaf = flip(leaf, bit)
    elif target == "root":
        bad_root = flip(root, bit)
    else:
        bad_proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf, index, size, bad_proof, bad_root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_consistency_proof_verifies_and_any_flipped_bit_fails(data: st.DataObject) -> None:
    n = data.draw(sizes)
    _, tree = random_tree(n)
    new = data.draw(st.integers(1, n))
    old = data.draw(st.integers(1, new))
    old_root, new_root = tree.root(old), tree.root(new)
    proof = tree.consistency_proof(old, new)
    merkle.verify_consistency(old, new, proof, old_root, new_root)

    bit = data.draw(st.integers(0, 255))
    target = data.draw(st.sampled_from(["old", "new", *range(len(proof))]))
    a, b, bad_proof = old_root, new_root, list(proof)
    if target == "old":
        a = flip(a, bit)
    elif target == "new":
        b = flip(b, bit)
    else:
        bad_proof[target] = flip(proof[target], bit)
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(old, new, bad_proof, a, b)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_inclusion_proofs_do_not_transfer_to_other_positions(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 200))
    hashes, tree = random_tree(n)
    index = data.draw(st.integers(0, n - 1))
    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(hashes[index], other, n, tree.inclusion_proof(index), tree.root())
