"""Key transitions: the log goes on under a new checkpoint key and verifies whole.

The scenario behind them: the HSM token holding the checkpoint key is lost and
restored without it; the shipper starts with a new key. The old history must
stay verifiable, the new key must continue it (not rewrite it), and the old
key, if someone kept it, must not extend the log any more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer, sign_checkpoint
from clawql_secrets.audit.errors import SignatureError, TamperError
from clawql_secrets.audit.key_transition import adopt, load_keyset
from clawql_secrets.audit.keyset import KeyEpoch, KeySet
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.errors import ConfigError, InputError
from tests.audit.conftest import entry

NAME = "clawql.test/audit"


def grow(store: WormStore, signer: Ed25519Signer, keys: KeySet | None, start: int, n: int) -> None:
    log = AuditLog(store, signer, keys=keys)
    for stream in ("n1", "n2"):
        for i in range(start, start + n):
            log.append(stream, entry(stream, i))
        log.checkpoint(stream)


@pytest.fixture
def old() -> Ed25519Signer:
    return Ed25519Signer.generate(NAME)


@pytest.fixture
def new() -> Ed25519Signer:
    return Ed25519Signer.generate(NAME)


def transitioned(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> tuple[LocalWormStore, Path, KeySet]:
    """30 entries per stream under ``old`` (two checkpoints), then 20 more under ``new``."""
    store = LocalWormStore(tmp_path / "store")
    key_file = tmp_path / "verifier.txt"
    first = adopt(store, old.verifier_key(), key_file)
    grow(store, old, first, 0, 20)
    grow(store, old, first, 20, 10)
    keys = adopt(store, new.verifier_key(), key_file)
    grow(store, new, keys, 30, 20)
    return store, key_file, keys


def test_the_new_key_takes_over_where_the_old_one_stopped_and_the_chain_verifies(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> None:
    store, key_file, keys = transitioned(tmp_path, old, new)
    assert [e.key for e in keys] == [old.verifier_key(), new.verifier_key()]
    assert keys.epochs[1].after == {"n1": 30, "n2": 30}
    assert load_keyset(key_file) == keys
    verify.verify(store, load_keyset(key_file))
    result = verify.report(store, keys)
    assert result.ok and [(s.entries, s.checkpoints) for s in result.streams] == [(50, 3)] * 2
    # Either key alone proves only its own part: the old one cannot open the new
    # checkpoints, the new one cannot open the old ones.
    for alone in (old.verifier_key(), new.verifier_key()):
        with pytest.raises(TamperError, match="signature"):
            verify.verify(store, alone)
    # Proofs against the newest checkpoint check out with the key set.
    proof = verify.prove(store, "n1", 3, keys)
    assert verify.check_inclusion(proof, keys).size == 50
    cons = verify.consistency(store, "n1", 20, 50, keys)
    assert [c.size for c in verify.check_consistency(cons, keys)] == [20, 50]


def test_adopting_is_idempotent_and_a_retired_key_never_signs_again(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> None:
    store, key_file, keys = transitioned(tmp_path, old, new)
    before = key_file.read_bytes()
    assert adopt(store, new.verifier_key(), key_file) == keys
    assert key_file.read_bytes() == before
    with pytest.raises(ConfigError, match="retired"):
        adopt(store, old.verifier_key(), key_file)
    with pytest.raises(ConfigError, match="not the newest key"):
        AuditLog(store, old, keys=keys)
    assert key_file.read_bytes() == before


def test_a_stolen_old_key_cannot_extend_the_log_after_the_takeover(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> None:
    store, _, keys = transitioned(tmp_path, old, new)
    # The thief appends an entry and signs the grown tree with the old key.
    state = verify.replay_stream(store, "n1", keys)
    tree = MerkleTree.from_leaf_hashes(b"".join(state.tree.leaf(i) for i in range(50)))
    data = layout.canonical_entry(entry("n1", 99), layout.DEFAULT_LIMITS)
    store.put_once(layout.SegmentName(50, 50, "n1").name, layout.encode_segment([data]))
    from clawql_secrets.audit import merkle

    tree.append(merkle.leaf_hash(data))
    cp = Checkpoint(layout.origin(layout.DEFAULT_ORIGIN_PREFIX, "n1"), 51, tree.root())
    store.put_once(layout.checkpoint_name("n1", 51), sign_checkpoint(cp, [old]))
    with pytest.raises(TamperError, match="outside its key's validity range"):
        verify.verify(store, keys)


def test_the_new_key_cannot_stand_in_for_the_old_ones_last_checkpoint(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> None:
    """A history rebuilt under the new key alone (old checkpoints dropped) is refused:
    the handover checkpoint, signed by the old key, must be there."""
    store, _, keys = transitioned(tmp_path, old, new)
    # Entries 20..49 re-stored as one segment, so no segment ends at the handover
    # size and its checkpoint is not missed as "a deleted checkpoint".
    merged = MemoryWormStore()
    tail = []
    for name in store.list("segments/n1/"):
        seg = layout.parse_segment_name(name)
        if seg.first < 20:
            merged.put_once(name, store.get(name))
        else:
            tail += layout.decode_segment(store.get(name))
    merged.put_once(layout.SegmentName(20, 49, "n1").name, layout.encode_segment(tail))
    for size in (20, 50):
        merged.put_once(
            layout.checkpoint_name("n1", size), store.get(layout.checkpoint_name("n1", size))
        )
    with pytest.raises(TamperError, match="no checkpoint of that size signed by its predecessor"):
        verify.verify(merged, keys)
    root_30 = verify.replay_stream(store, "n1", keys).tree.root(30)
    (tmp_path / "store" / layout.checkpoint_name("n1", 30)).unlink()
    with pytest.raises(TamperError, match="checkpoint deleted"):
        verify.verify(store, keys)
    # and the new key re-signing that size is outside its range
    forged = MemoryWormStore()
    for name in store.list(""):
        if name != layout.checkpoint_name("n1", 30):
            forged.put_once(name, store.get(name))
    cp = Checkpoint(layout.origin(layout.DEFAULT_ORIGIN_PREFIX, "n1"), 30, root_30)
    forged.put_once(layout.checkpoint_name("n1", 30), sign_checkpoint(cp, [new]))
    with pytest.raises(TamperError, match="outside its key's validity range"):
        verify.verify(forged, keys)


def test_adopt_refuses_to_sign_over_what_it_cannot_vouch_for(
    tmp_path: Path, old: Ed25519Signer, new: Ed25519Signer
) -> None:
    store = LocalWormStore(tmp_path / "store")
    grow(store, old, None, 0, 5)
    # A store signed by some key, but no key file naming it: refused, nothing written.
    key_file = tmp_path / "verifier.txt"
    with pytest.raises(ConfigError, match="not signed by the log's keys"):
        adopt(store, new.verifier_key(), key_file)
    assert not key_file.exists()
    # A key file that does not hold the key that signed the newest checkpoint: refused.
    stranger = Ed25519Signer.generate(NAME)
    key_file.write_text(str(KeySet.single(stranger.verifier_key())))
    before = key_file.read_bytes()
    with pytest.raises(ConfigError, match="refusing to sign over it"):
        adopt(store, new.verifier_key(), key_file)
    assert key_file.read_bytes() == before
    # A corrupt key file is a clear error, not a fresh start.
    key_file.write_text("clawql.test/audit+zz\n")
    with pytest.raises(ConfigError, match="line 1"):
        adopt(store, old.verifier_key(), key_file)


def test_key_set_files_parse_strictly_and_round_trip(
    old: Ed25519Signer, new: Ed25519Signer
) -> None:
    keys = KeySet.single(old.verifier_key()).extended(new.verifier_key(), {"n1": 4, "n2": 0})
    assert KeySet.parse(str(keys)) == keys
    # a single key line, as shipped before key sets, is a set of one
    assert KeySet.parse(str(old.verifier_key()) + "\n") == KeySet.single(old.verifier_key())
    a, b = str(old.verifier_key()), str(new.verifier_key())
    for text, what in [
        ("", "at least one key"),
        (f"{a}\n{a}\n", "twice"),
        (f"{a} after n1=3\n", "first key"),
        (f"{a}\n{b} after\n", "expected 'after"),
        (f"{a}\n{b} after n1=03\n", "bad or repeated"),
        (f"{a}\n{b} after n1=3 n1=4\n", "bad or repeated"),
        (f"{a}\n{b} sometime n1=3\n", "expected 'after"),
        ("x" * 70_000, "too large"),
    ]:
        with pytest.raises(InputError, match=what):
            KeySet.parse(text)
    c = Ed25519Signer.generate(NAME).verifier_key()
    with pytest.raises(InputError, match="before its predecessor"):
        KeySet(
            (
                KeyEpoch(old.verifier_key()),
                KeyEpoch(new.verifier_key(), {"n1": 10}),
                KeyEpoch(c, {"n1": 5}),
            )
        )


def test_a_checkpoint_of_another_log_is_refused_even_by_a_key_of_the_set(
    old: Ed25519Signer,
) -> None:
    keys = KeySet.single(old.verifier_key())
    cp = Checkpoint("elsewhere/n1", 3, b"\x00" * 32)
    with pytest.raises(SignatureError, match="comes from elsewhere"):
        keys.open(sign_checkpoint(cp, [old]), stream="n1", origin="clawql.local/audit/n1")
