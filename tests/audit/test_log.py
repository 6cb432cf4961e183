"""The log writer: canonical entries, segments ending at checkpoints, resume, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.errors import ConsistencyError, StoreError, TamperError
from clawql_secrets.audit.layout import AuditLimits
from clawql_secrets.audit.log import AuditLog, StreamLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore
from clawql_secrets.audit.verify import prove, replay_stream, verify
from clawql_secrets.errors import InputError
from tests.audit.conftest import CP, SEG, Tamper, entry


class FlakyStore(MemoryWormStore):
    """The in-memory store, failing writes whose name contains ``fail_on`` (an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_on: str | None = None

    def put_once(self, name: str, data: bytes) -> None:
        if self.fail_on and self.fail_on in name:
            raise StoreError(f"store unavailable for {name}")
        super().put_once(name, data)


def test_nothing_new_writes_nothing(signer: Ed25519Signer) -> None:
    store = MemoryWormStore()
    log = AuditLog(store, signer)
    assert log.checkpoint("n1") is None
    log.append("n1", entry("n1", 0))
    cp = log.checkpoint("n1")
    assert cp is not None and cp.size == 1
    assert log.checkpoint("n1") is None
    assert sorted(store.objects) == [CP.format(1), SEG.format(0, 0)]


def test_entries_are_canonical_json(signer: Ed25519Signer) -> None:
    store = MemoryWormStore()
    log = AuditLog(store, signer)
    log.append("n1", {"b": 1, "a": [1.0, "é"]})
    log.checkpoint("n1")
    assert store.get(SEG.format(0, 0)) == '{"a":[1,"é"],"b":1}\n'.encode()
    same = StreamLog("n1", "o")
    same.append({"a": [1, "é"], "b": 1.0})
    assert same.tree.leaf(0) == merkle.leaf_hash(b'{"a":[1,"\xc3\xa9"],"b":1}')


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("not_an_object", [1, 2]),
        ("nan", {"x": float("nan")}),
        ("non_string_key", {1: "x"}),
        ("unserialisable", {"x": object()}),
        ("oversized", {"x": "y" * 300_000}),
    ],
)
def test_bad_entries_are_input_errors_and_change_nothing(
    signer: Ed25519Signer, name: str, value: object
) -> None:
    log = AuditLog(MemoryWormStore(), signer)
    with pytest.raises(InputError):
        log.append("n1", value)  # type: ignore[arg-type]
    assert log.stream("n1").size == 0


def test_invalid_stream_name_is_input_error(signer: Ed25519Signer) -> None:
    with pytest.raises(InputError):
        AuditLog(MemoryWormStore(), signer).append("../n1", {})


def test_large_batches_are_split_each_segment_with_its_checkpoint(signer: Ed25519Signer) -> None:
    store = MemoryWormStore()
    limits = AuditLimits(max_segment_entries=4)
    log = AuditLog(store, signer, limits=limits)
    for i in range(10):
        log.append("n1", entry("n1", i))
    assert log.checkpoint("n1") is not None
    assert store.list("segments/") == [SEG.format(0, 3), SEG.format(4, 7), SEG.format(8, 9)]
    assert store.list("checkpoints/") == [CP.format(4), CP.format(8), CP.format(10)]
    verify(store, signer.verifier_key(), limits=limits)


def test_resume_continues_the_same_tree(tmp_path: Path, signer: Ed25519Signer) -> None:
    store = LocalWormStore(tmp_path)
    first = AuditLog(store, signer)
    for i in range(5):
        first.append("n1", entry("n1", i))
    first.checkpoint("n1")
    second = AuditLog(LocalWormStore(tmp_path), signer)
    assert second.append("n1", entry("n1", 5)) == 5
    cp = second.checkpoint("n1")
    assert cp is not None and cp.size == 6
    verify(store, signer.verifier_key())
    assert prove(store, "n1", 5, signer.verifier_key()).entry.startswith(b'{"auth"')


def test_resume_refuses_a_tampered_store(tmp_path: Path, signer: Ed25519Signer) -> None:
    store = LocalWormStore(tmp_path)
    log = AuditLog(store, signer)
    for i in range(5):
        log.append("n1", entry("n1", i))
    log.checkpoint("n1")
    Tamper(tmp_path).write(SEG.format(0, 4), store.get(SEG.format(0, 4)).replace(b"read", b"list"))
    with pytest.raises(TamperError):
        AuditLog(store, signer).append("n1", entry("n1", 5))


def test_checkpoint_outage_then_resume_covers_the_stored_tail(signer: Ed25519Signer) -> None:
    """A crash between segment and checkpoint: the next writer checkpoints that segment first."""
    store = FlakyStore()
    log = AuditLog(store, signer)
    for i in range(3):
        log.append("n1", entry("n1", i))
    store.fail_on = "checkpoints/"
    with pytest.raises(StoreError):
        log.checkpoint("n1")
    assert store.list("segments/") == [SEG.format(0, 2)]
    store.fail_on = None
    resumed = AuditLog(store, signer)
    resumed.append("n1", entry("n1", 3))
    resumed.checkpoint("n1")
    assert store.list("checkpoints/") == [CP.format(3), CP.format(4)]
    verify(store, signer.verifier_key())


def test_retry_after_outage_in_the_same_process_writes_no_overlap(signer: Ed25519Signer) -> None:
    store = FlakyStore()
    log = AuditLog(store, signer)
    for i in range(3):
        log.append("n1", entry("n1", i))
    store.fail_on = "checkpoints/"
    with pytest.raises(StoreError):
        log.checkpoint("n1")
    store.fail_on = None
    log.append("n1", entry("n1", 3))
    log.checkpoint("n1")
    assert store.list("segments/") == [SEG.format(0, 2), SEG.format(3, 3)]
    verify(store, signer.verifier_key())


def test_store_rolled_back_under_a_live_log_is_refused(signer: Ed25519Signer) -> None:
    store = MemoryWormStore()
    log = AuditLog(store, signer)
    log.append("n1", entry("n1", 0))
    log.checkpoint("n1")
    log.append("n1", entry("n1", 1))
    log.checkpoint("n1")
    del store.objects[CP.format(2)]
    log.append("n1", entry("n1", 2))
    with pytest.raises(ConsistencyError, match="rolled back"):
        log.checkpoint("n1")


def test_new_checkpoint_must_extend_the_stored_one(signer: Ed25519Signer) -> None:
    """A stored head that this tree does not extend (another writer forked) stops signing."""
    store = MemoryWormStore()
    log = AuditLog(store, signer)
    log.append("n1", entry("n1", 0))
    log.checkpoint("n1")
    rival = StreamLog("n1", "clawql.local/audit/n1")
    rival.append(entry("n1", 999))
    steps = rival.prepare([signer], None)
    store.objects[CP.format(1)] = steps[0].note
    log.append("n1", entry("n1", 1))
    with pytest.raises(ConsistencyError):
        log.checkpoint("n1")


def test_replay_without_key_still_checks_roots(store: LocalWormStore) -> None:
    state = replay_stream(store, "n1", None)
    assert state.tree.size == 30 and len(state.checkpoints) == 3
