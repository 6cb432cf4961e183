"""Witnessed checkpoints: the log's operator, holding the log key, cannot fork or roll back.

The witness here is the real decision procedure and state store
(``clawql_secrets.witness``) called in-process; ``tests/witness`` drives the
same code over HTTP, and the stack test runs it as a separate process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import (
    Checkpoint,
    Ed25519Signer,
    NoteSignature,
    SignedNote,
    sign_checkpoint,
)
from clawql_secrets.audit.cosignature import WitnessKey, WitnessSigner, check_witnesses
from clawql_secrets.audit.errors import TamperError
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.audit.witnessing import (
    WitnessPolicy,
    WitnessSubmitter,
    cosignature_name,
    stored_cosignatures,
)
from clawql_secrets.errors import ConfigError
from clawql_secrets.witness.server import Witness
from clawql_secrets.witness.state import AddCheckpointRequest, LogPolicy
from clawql_secrets.witness.store import StateStore
from tests.audit.conftest import entry

PREFIX = layout.DEFAULT_ORIGIN_PREFIX
STREAMS = ("n1", "n2")


class InProcessWitness:
    """``WitnessClient``'s interface over the witness's own ``add_checkpoint``."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.key = witness.key

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> NoteSignature:
        body = AddCheckpointRequest.build(old_size, proof, note).to_bytes()
        line = self.witness.add_checkpoint(body).response_body()
        return SignedNote.parse(b"x\n\n" + line).signatures[0]


def make_witness(tmp: Path, log_key: Ed25519Signer, name: str = "witness.test/w1") -> Witness:
    origins = [layout.origin(PREFIX, s) for s in STREAMS]
    policies = {o: LogPolicy(o, (log_key.verifier_key(),)) for o in origins}
    return Witness(WitnessSigner.generate(name), policies, StateStore.open(tmp / name, origins))


def publish(
    log: AuditLog, submitter: WitnessSubmitter, start: int, n: int, streams: Sequence[str] = STREAMS
) -> None:
    for stream in streams:
        for i in range(start, start + n):
            log.append(stream, entry(stream, i))
        cp = log.checkpoint(stream)
        assert cp is not None
        note = log.store.get(layout.checkpoint_name(stream, cp.size))
        submitter.submit(stream, log.stream(stream).tree, cp, note)


@pytest.fixture
def log_key() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/audit")


def test_every_checkpoint_is_cosigned_and_verify_names_the_witnesses(
    tmp_path: Path, log_key: Ed25519Signer
) -> None:
    store = MemoryWormStore()
    w1, w2 = make_witness(tmp_path, log_key), make_witness(tmp_path, log_key, "witness.test/w2")
    sub = WitnessSubmitter([InProcessWitness(w1), InProcessWitness(w2)], store)
    log = AuditLog(store, log_key)
    for start in (0, 10, 25):
        publish(log, sub, start, 10 if start < 25 else 3)
    policy = WitnessPolicy((w1.key, w2.key), 2)
    verify.verify(store, log_key.verifier_key(), witnesses=policy)
    result = verify.report(store, log_key.verifier_key(), witnesses=policy)
    assert result.ok
    for s in result.streams:
        assert s.cosigned_by is not None and set(s.cosigned_by) == {w1.key.name, w2.key.name}
    assert {s: v.cosigned for s, v in sub.stats.items()} == {
        w1.key.name: {"n1": 23, "n2": 23},
        w2.key.name: {"n1": 23, "n2": 23},
    }
    # A proof carries the cosignatures; a third party checks them with the keys alone.
    proof = verify.prove(store, "n1", 4, log_key.verifier_key())
    assert set(check_witnesses(proof.checkpoint, [w1.key, w2.key], 2)) == {
        "witness.test/w1",
        "witness.test/w2",
    }
    assert verify.check_inclusion(proof, log_key.verifier_key()).size == 23


def test_a_restarted_shipper_learns_the_witness_size_from_its_409(
    tmp_path: Path, log_key: Ed25519Signer
) -> None:
    store = MemoryWormStore()
    w = make_witness(tmp_path, log_key)
    publish(AuditLog(store, log_key), WitnessSubmitter([InProcessWitness(w)], store), 0, 10)
    # A new process: it does not know the witness holds size 10.
    fresh = WitnessSubmitter([InProcessWitness(w)], store)
    publish(AuditLog(store, log_key), fresh, 10, 5)
    assert fresh.stats[w.key.name].cosigned == {"n1": 15, "n2": 15}
    assert fresh.stats[w.key.name].outcomes == {"cosigned": 2}
    # and an already cosigned head is not sent again (it is in the store)
    again = WitnessSubmitter([InProcessWitness(w)], store)
    log = AuditLog(store, log_key)
    for stream in STREAMS:
        cp = log.stream(stream).published
        assert cp is not None
        note = store.get(layout.checkpoint_name(stream, cp.size))
        assert again.submit(stream, log.stream(stream).tree, cp, note) == 1
    assert again.stats[w.key.name].outcomes == {}


def _copy(store: WormStore, keep: int, stream: str = "n1") -> MemoryWormStore:
    """The store as it was at size ``keep`` of ``stream`` (other streams whole)."""
    out = MemoryWormStore()
    for name in store.list(""):
        if layout.stream_of(name) == stream or name.startswith(f"cosignatures/{stream}/"):
            if name.startswith("segments/"):
                if layout.parse_segment_name(name).last >= keep:
                    continue
            elif name.startswith("checkpoints/"):
                if layout.parse_checkpoint_name(name)[1] > keep:
                    continue
            elif int(name.split("/")[2]) > keep:
                continue
        out.put_once(name, store.get(name))
    return out


def test_the_operator_truncating_and_re_signing_the_tail_is_caught(
    tmp_path: Path, log_key: Ed25519Signer
) -> None:
    store = MemoryWormStore()
    w = make_witness(tmp_path, log_key)
    sub = WitnessSubmitter([InProcessWitness(w)], store)
    log = AuditLog(store, log_key)
    publish(log, sub, 0, 10)
    publish(log, sub, 10, 10)
    policy = WitnessPolicy((w.key,), 1)
    verify.verify(store, log_key.verifier_key(), witnesses=policy)
    # The operator, holding the log key, drops entries 10..19 and their checkpoint,
    # cosignature included, then logs something else in their place and re-signs.
    rolled = _copy(store, 10)
    forged_log = AuditLog(rolled, log_key)
    forged = WitnessSubmitter([InProcessWitness(w)], rolled)
    publish(forged_log, forged, 100, 4, streams=("n1",))
    # The witness refused: it cosigned size 20, and 14 is not an extension of it.
    assert forged.stats[w.key.name].outcomes.get("cosigned", 0) == 0
    assert set(forged.stats[w.key.name].outcomes) <= {"refused", "conflict"}
    # The log key alone is satisfied; the witness policy names the checkpoint.
    verify.verify(rolled, log_key.verifier_key())
    with pytest.raises(TamperError, match=r"checkpoints/n1/0+14\.txt.*0 of the 1 witnesses"):
        verify.verify(rolled, log_key.verifier_key(), witnesses=policy)


def test_a_fork_of_the_same_size_is_refused_and_old_cosignatures_expose_a_rewrite(
    tmp_path: Path, log_key: Ed25519Signer
) -> None:
    store = MemoryWormStore()
    w = make_witness(tmp_path, log_key)
    sub = WitnessSubmitter([InProcessWitness(w)], store)
    log = AuditLog(store, log_key)
    publish(log, sub, 0, 10)
    publish(log, sub, 10, 10)
    # Same size 20, other entries 10..19: a second tree of one size.
    fork = _copy(store, 10)
    fork_log = AuditLog(fork, log_key)
    fork_sub = WitnessSubmitter([InProcessWitness(w)], fork)
    publish(fork_log, fork_sub, 500, 10, streams=("n1",))
    assert fork_log.stream("n1").size == 20
    assert fork_sub.stats[w.key.name].outcomes.get("cosigned", 0) == 0
    policy = WitnessPolicy((w.key,), 1)
    with pytest.raises(TamperError, match="0 of the 1 witnesses"):
        verify.verify(fork, log_key.verifier_key(), witnesses=policy)
    # Copying the honest cosignature next to the forked checkpoint does not help.
    name = cosignature_name("n1", 20, w.key)
    fork.put_once(name, store.get(name))
    with pytest.raises(TamperError, match="not the one the witness cosigned"):
        verify.verify(fork, log_key.verifier_key(), witnesses=policy)


def test_stored_cosignatures_are_checked_strictly(tmp_path: Path, log_key: Ed25519Signer) -> None:
    store = LocalWormStore(tmp_path / "store")
    w = make_witness(tmp_path, log_key)
    publish(AuditLog(store, log_key), WitnessSubmitter([InProcessWitness(w)], store), 0, 5)
    name = cosignature_name("n1", 5, w.key)
    [line] = stored_cosignatures(store, "n1", 5)
    assert w.key.verify(
        Checkpoint.parse(
            log_key.verifier_key().open(store.get("checkpoints/n1/00000000000000000005.txt"))
        ).body(),
        line,
    )
    path = tmp_path / "store" / name
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    policy = WitnessPolicy((w.key,), 1)
    with pytest.raises(TamperError, match=name):
        verify.verify(store, log_key.verifier_key(), witnesses=policy)
    other = WitnessKey.parse(str(WitnessSigner.generate("witness.test/other").witness_key()))
    for keys, k in [((), 1), ((w.key,), 2), ((w.key, w.key), 1), ((w.key, other), 0)]:
        with pytest.raises(ConfigError):
            WitnessPolicy(keys, k)


def test_a_witness_reading_the_logs_key_file_follows_a_key_transition_not_a_fork(
    tmp_path: Path, log_key: Ed25519Signer
) -> None:
    """The local stack's witness reads the log's verifier key file per request: a key
    transition reaches it without a restart, and it still refuses a non-extension."""
    from clawql_secrets.audit.key_transition import adopt
    from clawql_secrets.witness.config import WitnessConfig
    from clawql_secrets.witness.server import open_witness
    from clawql_secrets.witness.state import UntrustedCheckpoint

    key_file = tmp_path / "verifier.txt"
    signer = WitnessSigner.generate("witness.test/local")
    (tmp_path / "w.key").write_text(signer.key_string())
    (tmp_path / "w.key").chmod(0o600)
    config = WitnessConfig.model_validate(
        {
            "name": "witness.test/local",
            "key_file": "w.key",
            "state_dir": "state",
            "logs": [
                {"origin": layout.origin(PREFIX, s), "verifier_keys_file": "verifier.txt"}
                for s in STREAMS
            ],
        }
    ).resolved(tmp_path)
    witness = open_witness(config)
    store = MemoryWormStore()
    sub = WitnessSubmitter([InProcessWitness(witness)], store)
    log = AuditLog(store, log_key)
    log.append("n1", entry("n1", 0))
    cp = log.checkpoint("n1")
    assert cp is not None
    with pytest.raises(UntrustedCheckpoint, match="cannot read verifier key file"):
        witness.add_checkpoint(
            AddCheckpointRequest.build(0, [], store.get(layout.checkpoint_name("n1", 1))).to_bytes()
        )
    keys = adopt(store, log_key.verifier_key(), key_file)
    publish(AuditLog(store, log_key, keys=keys), sub, 1, 5, streams=("n1",))
    assert sub.stats["witness.test/local"].cosigned == {"n1": 6}
    # The HSM is lost: a new key takes over; the witness cosigns its extension.
    new_key = Ed25519Signer.generate("clawql.test/audit")
    keys = adopt(store, new_key.verifier_key(), key_file)
    publish(AuditLog(store, new_key, keys=keys), sub, 6, 5, streams=("n1",))
    assert sub.stats["witness.test/local"].cosigned == {"n1": 11}
    # Red team: a retired key extending the log past its takeover is refused (403).
    state = verify.replay_stream(store, "n1", keys)
    stale = MerkleTree.from_leaf_hashes(b"".join(state.tree.leaf(i) for i in range(11)))
    stale.append(b"\x07" * 32)
    cp = Checkpoint(layout.origin(PREFIX, "n1"), 12, stale.root())
    request = AddCheckpointRequest.build(
        11, stale.consistency_proof(11, 12), sign_checkpoint(cp, [log_key])
    )
    with pytest.raises(UntrustedCheckpoint):
        witness.add_checkpoint(request.to_bytes())
    verify.verify(store, keys, witnesses=WitnessPolicy((signer.witness_key(),), 1))
    # but the new key re-writing the old history is refused (same size, other tree)
    forged = MemoryWormStore()
    forged_log = AuditLog(forged, new_key)
    fsub = WitnessSubmitter([InProcessWitness(witness)], forged)
    publish(forged_log, fsub, 900, 11, streams=("n1",))
    assert fsub.stats["witness.test/local"].outcomes.get("cosigned", 0) == 0
