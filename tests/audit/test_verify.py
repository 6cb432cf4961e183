"""Invariant 6: every change, deletion, reordering or truncation is detected and located."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawql_secrets.audit import verify as audit_verify
from clawql_secrets.audit.checkpoint import (
    Checkpoint,
    Ed25519Signer,
    SignedNote,
    open_checkpoint,
    sign_checkpoint,
)
from clawql_secrets.audit.errors import ProofError, TamperError
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore
from clawql_secrets.audit.verify import InclusionProof, check_inclusion, prove, report, verify
from clawql_secrets.errors import InputError, IntegrityError
from tests.audit.conftest import CP, SEG, Tamper

Mutation = Callable[[Tamper, Ed25519Signer], None]


def change_byte(t: Tamper, _: Ed25519Signer) -> None:
    lines = t.lines(SEG.format(10, 19))
    lines[2] = lines[2].replace(b"agent-", b"agent_", 1)
    t.set_lines(SEG.format(10, 19), lines)


def delete_entry(t: Tamper, _: Ed25519Signer) -> None:
    lines = t.lines(SEG.format(10, 19))
    del lines[3]
    t.set_lines(SEG.format(10, 19), lines)


def insert_entry(t: Tamper, _: Ed25519Signer) -> None:
    lines = t.lines(SEG.format(10, 19))
    lines.insert(4, lines[4])
    t.set_lines(SEG.format(10, 19), lines)


def reorder_entries(t: Tamper, _: Ed25519Signer) -> None:
    lines = t.lines(SEG.format(10, 19))
    lines[2], lines[5] = lines[5], lines[2]
    t.set_lines(SEG.format(10, 19), lines)


def swap_entries_across_segments(t: Tamper, _: Ed25519Signer) -> None:
    a, b = t.lines(SEG.format(0, 9)), t.lines(SEG.format(10, 19))
    a[-1], b[0] = b[0], a[-1]
    t.set_lines(SEG.format(0, 9), a)
    t.set_lines(SEG.format(10, 19), b)


def truncate_tail(t: Tamper, _: Ed25519Signer) -> None:
    t.delete(SEG.format(20, 29))


def cut_segment_short(t: Tamper, _: Ed25519Signer) -> None:
    t.write(SEG.format(20, 29), t.read(SEG.format(20, 29))[:-40])


def delete_middle_segment(t: Tamper, _: Ed25519Signer) -> None:
    t.delete(SEG.format(10, 19))


def rename_segment_to_overlap(t: Tamper, _: Ed25519Signer) -> None:
    t.rename(SEG.format(10, 19), SEG.format(9, 19))


def swap_checkpoints(t: Tamper, _: Ed25519Signer) -> None:
    a, b = t.read(CP.format(10)), t.read(CP.format(20))
    t.write(CP.format(10), b)
    t.write(CP.format(20), a)


def forge_checkpoint_with_other_key(t: Tamper, signer: Ed25519Signer) -> None:
    body = Checkpoint.parse(SignedNote.parse(t.read(CP.format(20))).text)
    forger = Ed25519Signer.generate(signer.key_name)
    t.write(CP.format(20), sign_checkpoint(body, [forger]))


def resign_with_forged_signature_bytes(t: Tamper, signer: Ed25519Signer) -> None:
    """Same key name and key hash, a different root, the old signature bytes."""
    note = SignedNote.parse(t.read(CP.format(20)))
    body = Checkpoint.parse(note.text)
    forged = Checkpoint(body.origin, body.size, body.root[::-1])
    t.write(CP.format(20), SignedNote(forged.body(), note.signatures).to_bytes())


def delete_middle_checkpoint(t: Tamper, _: Ed25519Signer) -> None:
    t.delete(CP.format(20))


def delete_latest_checkpoint(t: Tamper, _: Ed25519Signer) -> None:
    t.delete(CP.format(30))


def roll_back_checkpoint_name(t: Tamper, _: Ed25519Signer) -> None:
    t.write(CP.format(30), t.read(CP.format(20)))


def copy_checkpoint_from_other_stream(t: Tamper, _: Ed25519Signer) -> None:
    t.write(CP.format(10), t.read("checkpoints/n2/00000000000000000010.txt"))


def plant_foreign_object(t: Tamper, _: Ed25519Signer) -> None:
    t.write("segments/n1/evil.jsonl", b"{}\n")


def rewrite_middle_and_resign_its_checkpoint(t: Tamper, signer: Ed25519Signer) -> None:
    """An attacker holding the key rewrites 10..19 and re-signs checkpoint 20 only."""
    change_byte(t, signer)
    from clawql_secrets.audit import merkle
    from clawql_secrets.audit.tree import MerkleTree

    entries = [e for n in (SEG.format(0, 9), SEG.format(10, 19)) for e in t.read(n).splitlines()]
    root = MerkleTree.from_leaf_hashes(merkle.hash_leaves(entries)).root()
    t.write(CP.format(20), sign_checkpoint(Checkpoint("clawql.local/audit/n1", 20, root), [signer]))


# (mutation, where verify must point, what it must say)
CASES: list[tuple[Mutation, str, str]] = [
    (change_byte, CP.format(20), SEG.format(10, 19)),
    (delete_entry, SEG.format(10, 19), "holds 9 entries"),
    (insert_entry, SEG.format(10, 19), "holds 11 entries"),
    (reorder_entries, CP.format(20), "entries 10..19"),
    (swap_entries_across_segments, CP.format(10), SEG.format(0, 9)),
    (truncate_tail, CP.format(30), "entries 20..29 were deleted"),
    (cut_segment_short, SEG.format(20, 29), "does not end with a newline"),
    (delete_middle_segment, "entries 10..19", "missing"),
    (rename_segment_to_overlap, SEG.format(9, 19), "overlaps"),
    (swap_checkpoints, CP.format(10), "swapped or renamed"),
    (forge_checkpoint_with_other_key, CP.format(20), "no signature by key"),
    (resign_with_forged_signature_bytes, CP.format(20), "does not verify"),
    (delete_middle_checkpoint, SEG.format(10, 19), "checkpoint deleted"),
    (delete_latest_checkpoint, "entries 20..29", "not covered"),
    (roll_back_checkpoint_name, CP.format(30), "swapped or renamed"),
    (copy_checkpoint_from_other_stream, CP.format(10), "comes from elsewhere"),
    (plant_foreign_object, "segments/n1/evil.jsonl", "unexpected object"),
    (rewrite_middle_and_resign_its_checkpoint, CP.format(30), "re-signed"),
]


def test_untampered_log_verifies(store: LocalWormStore, signer: Ed25519Signer) -> None:
    verify(store, signer.verifier_key())
    result = report(store, signer.verifier_key())
    assert result.ok
    assert [(s.stream, s.entries, s.checkpoints) for s in result.streams] == [
        ("n1", 30, 3),
        ("n2", 10, 1),
    ]


@pytest.mark.parametrize(
    ("mutate", "location", "message"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_tampering_is_detected_and_located(
    store: LocalWormStore, signer: Ed25519Signer, mutate: Mutation, location: str, message: str
) -> None:
    mutate(Tamper(store.root), signer)
    with pytest.raises(TamperError) as caught:
        verify(store, signer.verifier_key())
    assert caught.value.stream == "n1"
    assert caught.value.location == location
    assert message in caught.value.message
    # The display result never raises, names the same fault and keeps the intact stream.
    result = report(store, signer.verifier_key())
    assert not result.ok
    n1, n2 = result.streams
    assert n1.problem is not None and location in n1.problem
    assert n2.problem is None and n2.entries == 10


def test_empty_store_proves_nothing(tmp_path: Path, signer: Ed25519Signer) -> None:
    store = LocalWormStore(tmp_path)
    with pytest.raises(IntegrityError, match="nothing is proven"):
        verify(store, signer.verifier_key())
    result = report(store, signer.verifier_key())
    assert not result.ok and result.streams == ()


def test_stream_without_any_checkpoint_proves_nothing(signer: Ed25519Signer) -> None:
    store = MemoryWormStore()
    store.put_once("segments/n1/00000000000000000000-00000000000000000000.jsonl", b"{}\n")
    with pytest.raises(TamperError, match="no signed checkpoint"):
        verify(store, signer.verifier_key())


def test_wrong_verifier_key_fails(store: LocalWormStore) -> None:
    with pytest.raises(TamperError, match="no signature by key"):
        verify(store, Ed25519Signer.generate("someone-else").verifier_key())


def test_rewritten_and_resigned_tail_is_caught_by_a_known_tree_head(
    store: LocalWormStore, signer: Ed25519Signer
) -> None:
    """With the key, an attacker can rewrite the newest segment and re-sign; the store
    alone cannot tell, but a checkpoint kept elsewhere (witness, Prometheus) can."""
    t = Tamper(store.root)
    known = open_checkpoint(t.read(CP.format(30)), signer.verifier_key())
    lines = t.lines(SEG.format(20, 29))
    lines[0] = lines[0].replace(b"read", b"list")
    t.set_lines(SEG.format(20, 29), lines)
    from clawql_secrets.audit import merkle
    from clawql_secrets.audit.tree import MerkleTree

    entries = [e for n in sorted(store.list("segments/n1/")) for e in store.get(n).splitlines()]
    root = MerkleTree.from_leaf_hashes(merkle.hash_leaves(entries)).root()
    t.write(CP.format(30), sign_checkpoint(Checkpoint(known.origin, 30, root), [signer]))
    verify(store, signer.verifier_key())  # undetectable from the store alone
    with pytest.raises(TamperError, match="history was rewritten") as caught:
        verify(store, signer.verifier_key(), known=[known])
    assert caught.value.location == "known tree head of size 30"


def test_log_rolled_back_to_an_older_tree_is_caught_by_a_known_tree_head(
    store: LocalWormStore, signer: Ed25519Signer
) -> None:
    t = Tamper(store.root)
    known = open_checkpoint(t.read(CP.format(30)), signer.verifier_key())
    t.delete(SEG.format(20, 29))
    t.delete(CP.format(30))
    verify(store, signer.verifier_key())  # a consistent, shorter log
    with pytest.raises(TamperError, match="truncated or rolled back"):
        verify(store, signer.verifier_key(), known=[known])


def test_known_tree_head_of_a_missing_log_fails(
    store: LocalWormStore, signer: Ed25519Signer
) -> None:
    other = Checkpoint("clawql.local/audit/n9", 1, b"\0" * 32)
    with pytest.raises(IntegrityError, match="missing from the store"):
        verify(store, signer.verifier_key(), known=[other])


# -- proofs -----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 9, 10, 17, 29])
def test_prove_and_check_inclusion(
    store: LocalWormStore, signer: Ed25519Signer, index: int
) -> None:
    proof = prove(store, "n1", index, signer.verifier_key())
    document = json.loads(json.dumps(proof.to_json()))
    assert document["tree_size"] == 30 and json.loads(document["entry"])["seq"] == index
    parsed = InclusionProof.from_json(document)
    assert check_inclusion(parsed, signer.verifier_key()).size == 30


def test_proof_of_a_changed_entry_fails(store: LocalWormStore, signer: Ed25519Signer) -> None:
    proof = prove(store, "n1", 12)
    forged = InclusionProof(
        proof.stream, proof.index, proof.entry.replace(b"read", b"list"), proof.path,
        proof.checkpoint,
    )  # fmt: skip
    with pytest.raises(ProofError):
        check_inclusion(forged, signer.verifier_key())
    moved = InclusionProof(proof.stream, 13, proof.entry, proof.path, proof.checkpoint)
    with pytest.raises(ProofError):
        check_inclusion(moved, signer.verifier_key())


def test_proof_against_another_key_fails(store: LocalWormStore) -> None:
    proof = prove(store, "n1", 3)
    with pytest.raises(IntegrityError):
        check_inclusion(proof, Ed25519Signer.generate("clawql.test/audit").verifier_key())


@pytest.mark.parametrize(
    "edit",
    [
        {"format": "other"},
        {"index": "3"},
        {"index": True},
        {"path": "AAAA"},
        {"path": ["not base64!"]},
        {"root": "AAAA"},
        {"tree_size": 31},
        {"leaf_hash": "AAAA"},
        {"stream": "../n1"},
        {"extra": 1},
    ],
    ids=lambda e: next(iter(e)) + "=" + repr(next(iter(e.values())))[:12],
)
def test_malformed_proof_documents_are_input_errors(
    store: LocalWormStore, edit: dict[str, object]
) -> None:
    document = {**prove(store, "n1", 3).to_json(), **edit}
    with pytest.raises(InputError):
        InclusionProof.from_json(document)


def test_entries_beyond_the_latest_checkpoint_have_no_proof_yet(store: LocalWormStore) -> None:
    with pytest.raises(InputError, match="not covered"):
        prove(store, "n1", 30)


def test_no_proof_from_a_tampered_store(store: LocalWormStore, signer: Ed25519Signer) -> None:
    change_byte(Tamper(store.root), signer)
    with pytest.raises(TamperError):
        prove(store, "n1", 3)


def test_verify_module_exposes_streams(store: LocalWormStore) -> None:
    assert audit_verify.streams(store) == ["n1", "n2"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.audit.conftest import build_log

    signer = Ed25519Signer.from_key_string(SHARED_SIGNER.key_string())
    store = build_log(tmp_path_factory.mktemp("pristine"), signer)
    return {name: store.get(name) for name in store.list("")}


SHARED_SIGNER = Ed25519Signer.generate("clawql.test/property")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_changed_or_cut_byte_anywhere_in_the_store_is_detected(
    pristine: dict[str, bytes], data: st.DataObject
) -> None:
    store = MemoryWormStore()
    store.objects.update(pristine)
    name = data.draw(st.sampled_from(sorted(pristine)))
    blob = bytearray(pristine[name])
    if data.draw(st.booleans()):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] ^= data.draw(st.integers(1, 255))
    else:
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    store.objects[name] = bytes(blob)
    with pytest.raises(IntegrityError):
        verify(store, SHARED_SIGNER.verifier_key())
    result = report(store, SHARED_SIGNER.verifier_key())
    assert not result.ok
    broken = [s for s in result.streams if s.problem]
    assert [s.stream for s in broken] == [name.split("/")[1]]
