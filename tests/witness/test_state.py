"""The add-checkpoint decision procedure: each refusal tlog-witness names, and no rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import Checkpoint, Ed25519Signer, sign_checkpoint, sign_note
from clawql_secrets.audit.cosignature import add_cosignatures, cosignature_timestamp
from clawql_secrets.errors import ConfigError, InputError, IntegrityError
from clawql_secrets.witness.server import Witness
from clawql_secrets.witness.state import (
    AddCheckpointRequest,
    InconsistentCheckpoint,
    LogPolicy,
    LogState,
    MalformedRequest,
    UnknownLog,
    UntrustedCheckpoint,
    WitnessConflict,
    decide,
)
from tests.witness.conftest import NOW, ORIGIN, Log


def state(witness: Witness) -> tuple[int, bytes] | None:
    s = witness.store.get(ORIGIN)
    return None if s is None else (s.size, s.root)


def test_first_checkpoint_then_growth(witness: Witness, log: Log) -> None:
    first = witness.add_checkpoint(log.grow(5).request(0))
    assert state(witness) == (5, log.tree.root())
    note = first.response_body()
    assert note.startswith("\u2014 witness.test/w1 ".encode()) and note.endswith(b"\n")
    assert witness.key.verify(log.checkpoint().body(), first.signature) == NOW
    witness.add_checkpoint(log.grow(11).request(5))
    assert state(witness) == (16, log.tree.root())


def test_same_checkpoint_again_is_cosigned_again(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.grow(4).request(0))
    again = witness.add_checkpoint(log.request(4))
    assert again.state.size == 4 and state(witness) == (4, log.tree.root())


def test_empty_tree(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.request(0))
    assert state(witness) == (0, merkle.EMPTY_ROOT)
    witness.add_checkpoint(log.grow(3).request(0))  # from size 0 no proof is needed
    assert state(witness) == (3, log.tree.root())


def test_empty_tree_with_a_root_is_refused(witness: Witness, log_signer: Ed25519Signer) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 0, bytes(32)), [log_signer])
    with pytest.raises(InconsistentCheckpoint, match="size 0"):
        witness.add_checkpoint(AddCheckpointRequest.build(0, [], note).to_bytes())
    assert state(witness) is None


# -- forks and rollbacks --------------------------------------------------------------


def test_fork_of_the_same_size_is_refused(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.grow(3).request(0))
    witness.add_checkpoint(log.grow(5).request(3))
    fork = log.fork(3).grow(5)  # the same first 3 entries, then others: another tree of 8
    assert fork.tree.size == 8 and fork.tree.root() != log.tree.root()
    with pytest.raises(WitnessConflict, match="fork") as refused:
        witness.add_checkpoint(fork.request(8))
    assert refused.value.known_size == 8 and refused.value.fork
    assert state(witness) == (8, log.tree.root())


def test_fork_that_grew_is_refused(witness: Witness, log: Log) -> None:
    """A forked tree with a valid proof *of its own history* from the cosigned size."""
    witness.add_checkpoint(log.grow(6).request(0))
    fork = log.fork(4).grow(6)
    with pytest.raises(InconsistentCheckpoint):
        witness.add_checkpoint(fork.request(6))
    assert state(witness) == (6, log.tree.root())


def test_truncation_is_refused(witness: Witness, log: Log) -> None:
    """The log key re-signs an older, smaller tree head: never cosigned again."""
    witness.add_checkpoint(log.grow(9).request(0))
    with pytest.raises(WitnessConflict) as stale:
        witness.add_checkpoint(log.request(5, size=5))
    assert stale.value.known_size == 9
    with pytest.raises(MalformedRequest, match="larger than"):
        witness.add_checkpoint(
            AddCheckpointRequest.build(9, [], log.note(size=5)).to_bytes()
        )  # tlog-witness: old size above the checkpoint's is a 400
    assert state(witness) == (9, log.tree.root())


def test_stale_old_size_gets_409_with_the_size(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.grow(4).request(0))
    witness.add_checkpoint(log.grow(4).request(4))
    with pytest.raises(WitnessConflict) as stale:
        witness.add_checkpoint(log.grow(4).request(4))
    assert stale.value.known_size == 8 and not stale.value.fork
    assert stale.value.fix is not None and "old 8" in stale.value.fix
    witness.add_checkpoint(log.request(8))  # the client retries from the size it was told
    assert state(witness) == (12, log.tree.root())


def test_never_cosigned_means_size_zero(witness: Witness, log: Log) -> None:
    with pytest.raises(WitnessConflict) as unknown:
        witness.add_checkpoint(log.grow(4).request(2, size=4))
    assert unknown.value.known_size == 0


@pytest.mark.parametrize(
    "bad_proof",
    [
        pytest.param(lambda p: [bytes(32), *p[1:]], id="wrong-hash"),
        pytest.param(lambda p: p[:-1], id="too-short"),
        pytest.param(lambda p: [*p, bytes(32)], id="too-long"),
        pytest.param(lambda p: [], id="missing"),
    ],
)
def test_bad_consistency_proof_is_422(
    witness: Witness, log: Log, bad_proof: Callable[[list[bytes]], list[bytes]]
) -> None:
    witness.add_checkpoint(log.grow(5).request(0))
    log.grow(7)
    body = AddCheckpointRequest.build(5, bad_proof(log.proof(5)), log.note()).to_bytes()
    with pytest.raises(InconsistentCheckpoint):
        witness.add_checkpoint(body)
    assert state(witness) is not None and state(witness) == (5, log.tree.root(5))


def test_proof_from_zero_must_be_empty(witness: Witness, log: Log) -> None:
    body = AddCheckpointRequest.build(0, [bytes(32)], log.grow(3).note()).to_bytes()
    with pytest.raises(InconsistentCheckpoint):
        witness.add_checkpoint(body)
    assert state(witness) is None


# -- whose signature -------------------------------------------------------------------


def test_wrong_log_key_is_403(witness: Witness, log: Log) -> None:
    other = Log(Ed25519Signer.generate(ORIGIN)).grow(3)  # same name, another key
    with pytest.raises(UntrustedCheckpoint, match="no signature"):
        witness.add_checkpoint(other.request(0))
    assert state(witness) is None


def test_forged_signature_by_the_trusted_key_is_403(witness: Witness, log: Log) -> None:
    note = bytearray(log.grow(3).note())
    note[-6] ^= 1  # inside the base64 signature
    with pytest.raises((UntrustedCheckpoint, MalformedRequest)):
        witness.add_checkpoint(AddCheckpointRequest.build(0, [], bytes(note)).to_bytes())
    good = log.note()
    line = good.split(b"\n\n")[1]
    forged = good.replace(line, line[:-10] + (b"A" if line[-10:-9] != b"A" else b"B") + line[-9:])
    with pytest.raises(UntrustedCheckpoint, match="does not verify"):
        witness.add_checkpoint(AddCheckpointRequest.build(0, [], forged).to_bytes())
    assert state(witness) is None


def test_other_signatures_are_ignored(witness: Witness, log: Log) -> None:
    stranger = Ed25519Signer.generate("someone.else/key")
    note = sign_checkpoint(log.grow(3).checkpoint(), [stranger, log.signer])
    witness.add_checkpoint(AddCheckpointRequest.build(0, [], note).to_bytes())
    assert state(witness) == (3, log.tree.root())


def test_unknown_origin_is_404(witness: Witness, log_signer: Ed25519Signer) -> None:
    other = Log(log_signer, "clawql.local/audit/n9").grow(2)
    with pytest.raises(UnknownLog):
        witness.add_checkpoint(other.request(0))


def test_key_transition(witness: Witness, log: Log) -> None:
    """Two configured keys: either may sign, so the log can move to its new key."""
    new_key = Ed25519Signer.generate(ORIGIN + "/2")
    witness.policies[ORIGIN] = LogPolicy(
        ORIGIN, (*witness.policies[ORIGIN].keys, new_key.verifier_key())
    )
    witness.add_checkpoint(log.grow(3).request(0))
    moved = Log(new_key)
    moved.tree = log.tree
    witness.add_checkpoint(moved.grow(2).request(3))
    assert state(witness) == (5, log.tree.root())


# -- malformed bodies ----------------------------------------------------------------------


def _bodies(log: Log) -> dict[str, tuple[bytes, type[Exception]]]:
    note = log.grow(3).note()
    size = f"\n{log.tree.size}\n".encode()
    h = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    root = log.checkpoint().body().split(b"\n")[2].decode()
    bad = MalformedRequest
    return {
        "empty": (b"", bad),
        "no-blank-line": (b"old 0\n" + note.replace(b"\n\n", b"\n"), bad),
        "no-old-line": (b"\n" + note, bad),
        "old-missing-space": (b"old0\n\n" + note, bad),
        "old-leading-zero": (b"old 00\n\n" + note, bad),
        "old-negative": (b"old -1\n\n" + note, bad),
        "old-plus": (b"old +1\n\n" + note, bad),
        "old-too-big": (b"old 9223372036854775808\n\n" + note, bad),
        "old-not-ascii": ("old \u0661\n\n".encode() + note, bad),
        "proof-not-base64": (b"old 0\nnot base64!\n\n" + note, bad),
        "proof-short-hash": (b"old 0\nAAAA\n\n" + note, bad),
        "proof-non-canonical": (b"old 0\n" + h[:-2].encode() + b"B=\n\n" + note, bad),
        "proof-64-lines": (b"old 0\n" + (h + "\n").encode() * 64 + b"\n" + note, bad),
        "note-without-newline": (b"old 0\n\n" + note[:-1], bad),
        "note-unsigned": (b"old 0\n\n" + note.split(b"\n\n")[0] + b"\n", bad),
        "note-not-utf8": (b"old 0\n\n" + note.replace(size, b"\n\xff\n"), bad),
        "note-control-char": (b"old 0\n\n" + note.replace(size, size[:-1] + b"\x01\n"), bad),
        "signed-size-not-canonical": (
            b"old 0\n\n" + sign_note(f"{ORIGIN}\n03\n{root}\n".encode(), [log.signer]),
            bad,
        ),
        "signed-no-root": (b"old 0\n\n" + sign_note(f"{ORIGIN}\n3\n".encode(), [log.signer]), bad),
        "text-changed-after-signing": (
            b"old 0\n\n" + note.replace(size, b"\n0" + size[1:]),
            UntrustedCheckpoint,
        ),
        "huge": (b"old 0\n\n" + b"x" * (128 * 1024), bad),
    }


def test_garbage_is_refused_and_changes_nothing(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.grow(2).request(0))
    before = state(witness)
    for name, (body, refusal) in _bodies(log).items():
        with pytest.raises(refusal):
            witness.add_checkpoint(body)
        assert state(witness) == before, name


def test_request_encoding_validates() -> None:
    with pytest.raises(InputError):
        AddCheckpointRequest.build(-1, [], b"x\n")
    with pytest.raises(InputError):
        AddCheckpointRequest.build(0, [bytes(31)], b"x\n")
    with pytest.raises(InputError):
        AddCheckpointRequest.build(0, [bytes(32)] * 64, b"x\n")
    with pytest.raises(InputError):
        AddCheckpointRequest.build(0, [], b"no newline")


def test_values_validate(log_signer: Ed25519Signer) -> None:
    with pytest.raises(ConfigError):
        LogPolicy(ORIGIN, ())
    with pytest.raises(InputError):
        LogPolicy("bad\norigin", (log_signer.verifier_key(),))
    with pytest.raises(InputError):
        LogState(ORIGIN, 0, bytes(32))
    with pytest.raises(InputError):
        LogState(ORIGIN, -1, merkle.EMPTY_ROOT)


def test_recorded_state_must_be_for_the_origin(
    log: Log, policy: LogPolicy, witness: Witness
) -> None:
    request = AddCheckpointRequest.parse(log.grow(1).request(0))
    other = LogState("elsewhere", 0, merkle.EMPTY_ROOT)
    with pytest.raises(InputError):
        decide(request, {ORIGIN: policy}, other, witness.signer, NOW)


def test_cosignature_covers_extension_lines(witness: Witness, log: Log) -> None:
    cp = Checkpoint(ORIGIN, log.grow(2).tree.size, log.tree.root(), ("ext a", "ext b"))
    note = sign_checkpoint(cp, [log.signer])
    cosigned = witness.add_checkpoint(AddCheckpointRequest.build(0, [], note).to_bytes())
    assert cosignature_timestamp(add_cosignatures(note, [cosigned.signature]), witness.key) == NOW
    stripped = sign_checkpoint(Checkpoint(ORIGIN, cp.size, cp.root), [log.signer])
    with pytest.raises(IntegrityError):
        cosignature_timestamp(add_cosignatures(stripped, [cosigned.signature]), witness.key)


# -- concurrency: no rollback (the race tlog-witness describes) ---------------------------------


def test_concurrent_requests_never_roll_back(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.grow(1).request(0))
    sizes = [3, 5, 9, 17, 33]
    log.grow(32)
    bodies = [log.request(1, size=n) for n in sizes]
    barrier = threading.Barrier(len(bodies))
    won: list[int] = []
    conflicts: list[int] = []

    def submit(body: bytes, size: int) -> None:
        barrier.wait()
        try:
            witness.add_checkpoint(body)
            won.append(size)
        except WitnessConflict as exc:
            conflicts.append(exc.known_size)

    threads = [
        threading.Thread(target=submit, args=(b, n)) for b, n in zip(bodies, sizes, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and conflicts == [won[0]] * (len(sizes) - 1)
    assert state(witness) == (won[0], log.tree.root(won[0]))
