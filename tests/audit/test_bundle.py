"""Offline proof bundles: built from a real log, every tamper refused with a named reason."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.audit import commands
from clawql_secrets.audit.bundle import (
    HEADER,
    MAX_PROOF_HASHES,
    Bundle,
    BundleReport,
    TrustPolicy,
    check_bundle,
    max_bundle_bytes,
    report,
)
from clawql_secrets.audit.checkpoint import (
    Checkpoint,
    Ed25519Signer,
    SignedNote,
    sign_checkpoint,
)
from clawql_secrets.audit.cosignature import WitnessSigner, add_cosignatures
from clawql_secrets.audit.errors import ProofError, SignatureError
from clawql_secrets.audit.keyset import KeyEpoch, KeySet
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore
from clawql_secrets.audit.verify import prove
from clawql_secrets.errors import ConfigError, InputError, IntegrityError
from tests.audit.conftest import CP, Tamper, build_log

WITNESS_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z


def leaf(i: int, agent: str = "agent-1") -> dict[str, Any]:
    """A stored leaf as the shipper writes it (``leaf.py``): kind, id, redacted entry."""
    return {
        "v": 1,
        "id": f"{i:064x}",
        "kind": "entry",
        "entry": {
            "time": f"2026-11-28T19:00:{i % 60:02d}.000000001Z",
            "type": "response",
            "auth": {"entity_id": agent, "metadata": {"tenant": "t1"}},
            "request": {"id": f"req-{i}", "path": f"secret/data/x{i}", "operation": "read"},
        },
    }


@pytest.fixture(scope="module")
def log_key() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/bundle")


@pytest.fixture(scope="module")
def witnesses() -> list[WitnessSigner]:
    return [WitnessSigner.generate(f"witness{n}.example") for n in (1, 2, 3)]


@pytest.fixture(scope="module")
def memory(log_key: Ed25519Signer) -> MemoryWormStore:
    """Stream n1: 13 leaves in two checkpoints (sizes 8, 13); stream n2: 3 leaves."""
    store = MemoryWormStore()
    log = AuditLog(store, log_key)
    for i in range(13):
        log.append("n1", leaf(i))
        if i == 7:
            log.checkpoint("n1")
    log.checkpoint("n1")
    for i in range(3):
        log.append("n2", leaf(100 + i))
    log.checkpoint("n2")
    return store


def bundle_of(store: MemoryWormStore | LocalWormStore, stream: str, index: int) -> bytes:
    return Bundle.from_proof(prove(store, stream, index)).to_bytes()


def cosign(note: bytes, signers: list[WitnessSigner], timestamp: int = WITNESS_TIME) -> bytes:
    body = SignedNote.parse(note).text
    return add_cosignatures(note, [w.cosign(body, timestamp + n) for n, w in enumerate(signers)])


def with_checkpoint(data: bytes, note: bytes) -> bytes:
    head, _ = data.split(b"\n\n", 1)
    return head + b"\n\n" + note


def policy(
    key: Ed25519Signer,
    witnesses: Sequence[WitnessSigner] = (),
    *,
    stream: str | None = None,
    threshold: int | None = None,
) -> TrustPolicy:
    return TrustPolicy(
        (key.verifier_key(),),
        stream=stream,
        witness_keys=tuple(w.witness_key() for w in witnesses),
        witness_threshold=threshold,
    )


# -- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 7, 8, 12])
def test_bundle_round_trip_from_a_real_log(
    memory: MemoryWormStore, log_key: Ed25519Signer, index: int
) -> None:
    data = bundle_of(memory, "n1", index)
    parsed = Bundle.parse(data)
    assert parsed.to_bytes() == data and parsed.index == index
    check_bundle(data, policy(log_key))
    result = report(data, policy(log_key))
    assert result.ok and (result.stream, result.index, result.tree_size) == ("n1", index, 13)
    assert result.request_id == f"req-{index}" and result.entry_kind == "entry"
    assert result.time == f"2026-11-28T19:00:{index:02d}.000000001Z"
    assert result.log_key == "clawql.test/bundle"
    assert result.lines()[0].startswith(
        f"entry {index} of stream 'n1' is in the log at tree size 13"
    )
    assert result.lines()[-1] == "verified"


def test_bundle_is_a_c2sp_tlog_proof_with_the_entry_as_extra_data(
    memory: MemoryWormStore,
) -> None:
    proof = prove(memory, "n1", 5)
    lines = Bundle.from_proof(proof).to_bytes().split(b"\n")
    assert lines[0] == HEADER.encode()
    assert lines[1] == b"extra " + base64.b64encode(proof.entry)
    assert lines[2] == b"index 5"
    assert lines[3 : 3 + len(proof.path)] == [base64.b64encode(h) for h in proof.path]
    assert lines[3 + len(proof.path)] == b""
    stored = memory.get(CP.format(13))
    assert b"\n".join(lines[4 + len(proof.path) :]) == stored  # the note, verbatim


def test_bundle_of_another_stream_names_it(memory: MemoryWormStore, log_key: Ed25519Signer) -> None:
    result = report(bundle_of(memory, "n2", 1), policy(log_key))
    assert result.ok and (result.stream, result.tree_size) == ("n2", 3)


def test_the_stream_can_be_pinned(memory: MemoryWormStore, log_key: Ed25519Signer) -> None:
    data = bundle_of(memory, "n2", 1)
    check_bundle(data, policy(log_key, stream="n2"))
    with pytest.raises(SignatureError, match=re.escape("not 'clawql.local/audit/n1'")):
        check_bundle(data, policy(log_key, stream="n1"))


def test_a_log_that_changed_keys_is_checked_with_all_of_them(
    memory: MemoryWormStore, log_key: Ed25519Signer
) -> None:
    data = bundle_of(memory, "n1", 3)
    newer = Ed25519Signer.generate("clawql.test/bundle-2024")
    check_bundle(data, TrustPolicy((newer.verifier_key(), log_key.verifier_key())))
    result = report(data, TrustPolicy((newer.verifier_key(), log_key.verifier_key())))
    assert result.log_key == "clawql.test/bundle"


def test_a_retired_key_past_its_range_is_refused(
    memory: MemoryWormStore, log_key: Ed25519Signer
) -> None:
    """Whoever kept the old key cannot vouch for sizes after the new key took over."""
    newer = Ed25519Signer.generate("clawql.test/bundle-new")
    keys = KeySet((KeyEpoch(log_key.verifier_key()), KeyEpoch(newer.verifier_key(), {"n1": 8})))
    data = bundle_of(memory, "n1", 3)  # against the size-13 checkpoint, signed by the old key
    with pytest.raises(SignatureError, match="outside its key's validity range"):
        check_bundle(data, TrustPolicy((keys,)))


# -- witnesses ----------------------------------------------------------------------------


def test_witness_cosignatures_are_counted_and_reported(
    memory: MemoryWormStore, log_key: Ed25519Signer, witnesses: list[WitnessSigner]
) -> None:
    data = bundle_of(memory, "n1", 4)
    note = Bundle.parse(data).checkpoint
    cosigned = with_checkpoint(data, cosign(note, witnesses[:2]))
    result = report(cosigned, policy(log_key, witnesses, threshold=2))
    assert result.ok, result.problem
    assert dict(result.witnesses) == {
        "witness1.example": WITNESS_TIME,
        "witness2.example": WITNESS_TIME + 1,
    }
    text = "\n".join(result.lines())
    assert "witnesses: 2 cosigned, 2 required" in text
    assert "witness1.example cosigned at 2026-01-01T00:00:00Z" in text
    # A plain tlog-proof reader still finds the log's signature: cosignatures are extra lines.
    check_bundle(cosigned, policy(log_key))


def test_threshold_defaults_to_every_witness_given(
    memory: MemoryWormStore, log_key: Ed25519Signer, witnesses: list[WitnessSigner]
) -> None:
    data = bundle_of(memory, "n1", 4)
    cosigned = with_checkpoint(data, cosign(Bundle.parse(data).checkpoint, witnesses[:2]))
    check_bundle(cosigned, policy(log_key, witnesses[:2]))
    with pytest.raises(IntegrityError, match=re.escape("witness3.example")):
        check_bundle(cosigned, policy(log_key, witnesses))


@pytest.mark.parametrize(
    "kw",
    [
        {"log_keys": ()},
        {"witness_threshold": 1},
        {"witness_threshold": 0, "witness_keys": "one"},
        {"witness_threshold": 2, "witness_keys": "one"},
    ],
    ids=["no-log-key", "threshold-without-witnesses", "threshold-zero", "threshold-above-keys"],
)
def test_empty_or_impossible_policies_fail_closed(
    log_key: Ed25519Signer, witnesses: list[WitnessSigner], kw: dict[str, object]
) -> None:
    args: dict[str, object] = {"log_keys": (log_key.verifier_key(),), **kw}
    if args.get("witness_keys") == "one":
        args["witness_keys"] = (witnesses[0].witness_key(),)
    with pytest.raises(ConfigError):
        TrustPolicy(**args)  # type: ignore[arg-type]


# -- every tamper is refused -------------------------------------------------------------


Edit = Callable[[bytes, Ed25519Signer, list[WitnessSigner]], bytes]


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, note = data.split(b"\n\n", 1)
    return head.split(b"\n"), note


def _join(lines: list[bytes], note: bytes) -> bytes:
    return b"\n".join(lines) + b"\n\n" + note


def flipped_entry_byte(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    entry = bytearray(base64.b64decode(lines[1][6:]))
    entry[20] ^= 0x01
    lines[1] = b"extra " + base64.b64encode(bytes(entry))
    return _join(lines, note)


def entry_of_another_index(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    lines[1] = b"extra " + base64.b64encode(json.dumps(leaf(5), separators=(",", ":")).encode())
    return _join(lines, note)


def wrong_index(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    lines[2] = b"index 5"
    return _join(lines, note)


def index_beyond_the_tree(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    lines[2] = b"index 13"
    return _join(lines, note)


def swapped_proof_hashes(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    lines[3], lines[4] = lines[4], lines[3]
    return _join(lines, note)


def dropped_proof_hash(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    del lines[-1]
    return _join(lines, note)


def altered_checkpoint_root(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    body, sigs = note.split(b"\n\n", 1)
    origin, size, _root = body.split(b"\n")
    fake = base64.b64encode(b"\x07" * 32)
    return _join(lines, b"\n".join([origin, size, fake]) + b"\n\n" + sigs)


def checkpoint_signed_by_another_key(data: bytes, *_: object) -> bytes:
    """Same key name, another key: an attacker's checkpoint passing for the log's."""
    lines, note = _lines(data)
    cp = Checkpoint.parse(SignedNote.parse(note).text)
    forger = Ed25519Signer.generate("clawql.test/bundle")
    return _join(lines, sign_checkpoint(cp, [forger]))


def forged_log_over_a_fake_entry(data: bytes, *_: object) -> bytes:
    """A whole consistent log around a fake entry, signed with the attacker's key."""
    fake = MemoryWormStore()
    log = AuditLog(fake, Ed25519Signer.generate("clawql.test/bundle"))
    for i in range(13):
        log.append("n1", leaf(i, agent="someone-else" if i == 4 else "agent-1"))
    log.checkpoint("n1")
    return bundle_of(fake, "n1", 4)


def stripped_log_signature(data: bytes, *_: object) -> bytes:
    lines, note = _lines(data)
    witness = WitnessSigner.generate("witness9.example")
    text = SignedNote.parse(note).text
    only_cosigned = add_cosignatures(note, [witness.cosign(text, WITNESS_TIME)])
    parsed = SignedNote.parse(only_cosigned)
    kept = [s for s in parsed.signatures if s.key_name != "clawql.test/bundle"]
    return _join(lines, SignedNote(parsed.text, tuple(kept)).to_bytes())


def checkpoint_of_another_stream(data: bytes, _: Ed25519Signer, __: object) -> bytes:
    return data.replace(b"clawql.local/audit/n1", b"clawql.local/audit/n2")


def trailing_garbage(data: bytes, *_: object) -> bytes:
    return data + b"garbage"


def trailing_line(data: bytes, *_: object) -> bytes:
    return data + "\u2014 x !!\n".encode()


def trailing_newline(data: bytes, *_: object) -> bytes:
    return data + b"\n"


def oversize(data: bytes, *_: object) -> bytes:
    return data + b"A" * max_bundle_bytes()


TAMPERS: list[tuple[Edit, type[Exception], str]] = [
    (flipped_entry_byte, ProofError, "not proven at index 4"),
    (entry_of_another_index, ProofError, "does not lead to the tree root"),
    (wrong_index, ProofError, "not proven at index 5"),
    (index_beyond_the_tree, ProofError, "outside a tree of 13 leaves"),
    (swapped_proof_hashes, ProofError, "does not lead to the tree root"),
    (dropped_proof_hash, ProofError, "hashes, 4 expected"),
    (altered_checkpoint_root, SignatureError, "does not verify"),
    (checkpoint_signed_by_another_key, SignatureError, "no signature by key"),
    (forged_log_over_a_fake_entry, SignatureError, "no signature by key"),
    (stripped_log_signature, SignatureError, "no signature by key 'clawql.test/bundle'"),
    (checkpoint_of_another_stream, SignatureError, "does not verify"),
    (trailing_garbage, InputError, "signature block must be lines"),
    (trailing_line, InputError, "signature line 2 is not valid base64"),
    (trailing_newline, InputError, "bundle checkpoint: note text"),
    (oversize, InputError, "exceeds the"),
]


@pytest.mark.parametrize(
    ("edit", "error", "message"), TAMPERS, ids=[t[0].__name__ for t in TAMPERS]
)
def test_every_tamper_is_refused_with_its_reason(
    memory: MemoryWormStore,
    log_key: Ed25519Signer,
    witnesses: list[WitnessSigner],
    edit: Edit,
    error: type[Exception],
    message: str,
) -> None:
    data = bundle_of(memory, "n1", 4)
    check_bundle(data, policy(log_key))
    bad = edit(data, log_key, witnesses)
    assert bad != data
    with pytest.raises(error, match=message):
        check_bundle(bad, policy(log_key))
    result = report(bad, policy(log_key))
    assert not result.ok and result.problem and message.split()[0] in result.problem
    assert result.lines()[-1] == "NOT verified"


WitnessEdit = Callable[[bytes, list[WitnessSigner]], bytes]


def stripped_cosignature(note: bytes, witnesses: list[WitnessSigner]) -> bytes:
    parsed = SignedNote.parse(cosign(note, witnesses[:2]))
    kept = [s for s in parsed.signatures if s.key_name != "witness2.example"]
    return SignedNote(parsed.text, tuple(kept)).to_bytes()


def forged_cosignature(note: bytes, witnesses: list[WitnessSigner]) -> bytes:
    parsed = SignedNote.parse(cosign(note, witnesses[:2]))
    sigs = list(parsed.signatures)
    last = sigs[-1]
    flipped = bytearray(last.signature)
    flipped[-1] ^= 0x01
    sigs[-1] = type(last)(last.key_name, last.key_hash, bytes(flipped))
    return SignedNote(parsed.text, tuple(sigs)).to_bytes()


def cosignature_by_an_impostor(note: bytes, witnesses: list[WitnessSigner]) -> bytes:
    impostor = WitnessSigner.generate("witness2.example")
    body = SignedNote.parse(note).text
    return add_cosignatures(note, [witnesses[0].cosign(body, 1), impostor.cosign(body, 2)])


def cosignature_of_another_checkpoint(note: bytes, witnesses: list[WitnessSigner]) -> bytes:
    body = SignedNote.parse(note).text
    other = Checkpoint.parse(body)
    older = Checkpoint(other.origin, other.size - 1, b"\x01" * 32).body()
    return add_cosignatures(note, [witnesses[0].cosign(body, 1), witnesses[1].cosign(older, 2)])


def threshold_not_met(note: bytes, witnesses: list[WitnessSigner]) -> bytes:
    return cosign(note, witnesses[:1])


WITNESS_TAMPERS: list[WitnessEdit] = [
    stripped_cosignature,
    forged_cosignature,
    cosignature_by_an_impostor,
    cosignature_of_another_checkpoint,
    threshold_not_met,
]


@pytest.mark.parametrize("edit", WITNESS_TAMPERS, ids=[t.__name__ for t in WITNESS_TAMPERS])
def test_witness_tampers_are_refused_naming_the_missing_witness(
    memory: MemoryWormStore,
    log_key: Ed25519Signer,
    witnesses: list[WitnessSigner],
    edit: WitnessEdit,
) -> None:
    data = bundle_of(memory, "n1", 4)
    strict = policy(log_key, witnesses[:2], threshold=2)
    check_bundle(
        with_checkpoint(data, cosign(Bundle.parse(data).checkpoint, witnesses[:2])), strict
    )
    bad = with_checkpoint(data, edit(Bundle.parse(data).checkpoint, witnesses))
    with pytest.raises(IntegrityError, match=re.escape("witness2.example")):
        check_bundle(bad, strict)
    assert not report(bad, strict).ok


# -- strict parsing -----------------------------------------------------------------------


def _set_line(number: int, value: bytes) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        lines, note = _lines(data)
        lines[number] = value
        return _join(lines, note)

    return edit


def _drop_line(number: int) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        lines, note = _lines(data)
        del lines[number]
        return _join(lines, note)

    return edit


def _insert_line(number: int, value: bytes) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        lines, note = _lines(data)
        lines.insert(number, value)
        return _join(lines, note)

    return edit


MALFORMED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("other-header", _set_line(0, b"c2sp.org/tlog-proof@v2"), "does not start with"),
    ("no-entry", _drop_line(1), "no entry"),
    ("empty-entry", _set_line(1, b"extra "), "is empty"),
    ("entry-not-base64", _set_line(1, b"extra not*base64"), "entry ('extra' line) is not valid"),
    ("entry-non-canonical-base64", _set_line(1, b"extra QR=="), "not canonical base64"),
    ("entry-with-newline", _set_line(1, b"extra " + base64.b64encode(b"a\nb")), "one non-empty"),
    ("entry-too-large", _set_line(1, b"extra " + base64.b64encode(b"x" * 300_000)), "exceeds"),
    ("no-index", _set_line(2, b"idx 4"), "no 'index <n>' line"),
    ("index-leading-zero", _set_line(2, b"index 04"), "not a canonical decimal"),
    ("index-sign", _set_line(2, b"index +4"), "not a canonical decimal"),
    ("index-space", _set_line(2, b"index  4"), "not a canonical decimal"),
    ("index-huge", _set_line(2, b"index 99999999999999999999"), "not a canonical decimal"),
    ("short-hash", _set_line(3, base64.b64encode(b"x" * 31)), "proof hash 1 is not a 32-byte"),
    ("hash-not-base64", _set_line(3, b"!" * 44), "proof hash 1 is not valid base64"),
    (
        "hash-non-canonical",
        _set_line(3, base64.b64encode(b"\x00" * 32)[:-2] + b"B="),
        "proof hash 1 is not canonical",
    ),
    ("crlf", lambda d: d.replace(b"\n", b"\r\n", 3), "does not start with"),
    ("non-ascii", _set_line(2, "index 4\u00a0".encode()), "not ASCII"),
    ("no-blank-line", lambda d: d.replace(b"\n\n", b"\n", 1), "proof hash 5 is not valid"),
    ("blank-line-inside-proof", _insert_line(4, b""), "bundle checkpoint"),
    ("too-many-hashes", _insert_line(3, b"\n".join([b"A" * 43 + b"="] * 64)), "more than 63"),
    ("not-utf8-note", lambda d: d.replace(b"clawql.local", b"clawql\xff.local"), "not UTF-8"),
]


@pytest.mark.parametrize(
    ("edit", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_bundles_are_input_errors_naming_what(
    memory: MemoryWormStore, edit: Callable[[bytes], bytes], message: str
) -> None:
    data = edit(bundle_of(memory, "n1", 4))
    with pytest.raises(InputError, match=re.escape(message)):
        Bundle.parse(data)


def test_limits_are_the_typed_audit_limits() -> None:
    assert MAX_PROOF_HASHES == 63
    assert max_bundle_bytes() > 256 * 1024 * 4 // 3


def test_an_empty_report_is_not_ok() -> None:
    assert not BundleReport().ok
    assert BundleReport().lines() == ["FAIL: nothing was checked", "NOT verified"]


def test_entry_text_is_shown_without_control_codes(log_key: Ed25519Signer) -> None:
    store = MemoryWormStore()
    log = AuditLog(store, log_key)
    evil = leaf(0)
    evil["entry"]["request"]["id"] = "req\x1b[2Jgone"
    log.append("n1", evil)
    log.checkpoint("n1")
    text = "\n".join(report(bundle_of(store, "n1", 0), policy(log_key)).lines())
    assert "\x1b" not in text and "req\\u001b[2Jgone" in text


# -- CLI ----------------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter, as an auditor runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWQL")}
    return subprocess.run(
        [sys.executable, "-m", "clawql_secrets", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_prove_bundle_then_check_proof_offline(
    tmp_path: Path, signer: Ed25519Signer, witnesses: list[WitnessSigner]
) -> None:
    store = build_log(tmp_path / "worm", signer)
    # The store keeps the witnessed copy of its newest checkpoint (cosignatures added).
    tamper = Tamper(store.root)
    tamper.write(CP.format(30), cosign(tamper.read(CP.format(30)), witnesses[:2]))
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    key_file = auditor / "log.pub"
    key_file.write_text(str(signer.verifier_key()) + "\n")
    bundle = auditor / "entry-7.tlog-proof"
    prove_argv = ["audit", "prove", "--store", str(store.root), "--stream", "n1", "--index", "7"]
    done = cli(*prove_argv, "--pubkey-file", str(key_file), "--bundle", str(bundle), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert bundle.read_bytes().startswith(HEADER.encode() + b"\nextra ")

    w1, w2, w3 = (str(w.witness_key()) for w in witnesses)
    check = ["audit", "check-proof", "--bundle", bundle.name, "--pubkey-file", key_file.name]
    done = cli(*check, "--witness-key", w1, "--witness-key", w2, cwd=auditor)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "entry 7 of stream 'n1' is in the log at tree size 30" in done.stdout
    assert "request id -, time 2025-01-01T00:00:07Z" in done.stdout
    assert "witness1.example cosigned at 2026-01-01T00:00:00Z" in done.stdout
    assert "witness2.example cosigned at 2026-01-01T00:00:01Z" in done.stdout
    assert done.stdout.rstrip().endswith("\nverified")

    # All three witnesses required, only two cosigned: exit 1, the missing one named.
    done = cli(*check, "--witness-key", w1, "--witness-key", w2, "--witness-key", w3, cwd=auditor)
    assert done.returncode == 1 and "witness3.example" in done.stdout
    assert done.stdout.rstrip().endswith("NOT verified")
    done = cli(*check, "--witness-key", w3, "--witness-threshold", "1", cwd=auditor)
    assert done.returncode == 1

    # Another log key: exit 1.
    other = auditor / "other.pub"
    other.write_text(str(Ed25519Signer.generate("clawql.test/audit").verifier_key()) + "\n")
    done = cli(
        "audit", "check-proof", "--bundle", bundle.name, "--pubkey-file", other.name, cwd=auditor
    )
    assert done.returncode == 1 and "NOT verified" in done.stdout

    # A tampered bundle: exit 1.
    bundle.write_bytes(flipped_entry_byte(bundle.read_bytes()))
    done = cli(*check, cwd=auditor)
    assert done.returncode == 1 and "not proven at index 7" in done.stdout

    # The bundle is not overwritten without --force.
    done = cli(*prove_argv, "--bundle", str(bundle), cwd=tmp_path)
    assert done.returncode == 1 and "exists" in done.stderr
    done = cli(*prove_argv, "--bundle", str(bundle), "--force", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert cli(*check, cwd=auditor).returncode == 0


def test_cli_check_proof_accepts_several_key_files(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "b.tlog-proof"
    assert run(["audit", "prove", "--store", str(store.root), "--stream", "n2", "--index", "3",
                "--bundle", str(bundle)]) == 0  # fmt: skip
    old, new = tmp_path / "old.pub", tmp_path / "new.pub"
    old.write_text(str(signer.verifier_key()))
    new.write_text(str(Ed25519Signer.generate("clawql.test/next").verifier_key()))
    argv = ["audit", "check-proof", "--bundle", str(bundle), "--pubkey-file", str(new)]
    assert run(argv) == 1
    assert run([*argv, "--pubkey-file", str(old)]) == 0
    assert "entry 3 of stream 'n2'" in capsys.readouterr().out


def test_cli_check_proof_still_reads_json_proofs_with_witnesses(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(["audit", "prove", "--store", str(store.root), "--stream", "n1", "--index", "2"]) == 0
    )
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    key = str(signer.verifier_key())
    assert run(["audit", "check-proof", "--pubkey", key, str(proof)]) == 0
    assert "entry 2 of stream 'n1' is in the log at tree size 30" in capsys.readouterr().out
    assert run(["audit", "check-proof", "--pubkey", key, "--stream", "n1", str(proof)]) == 0
    with pytest.raises(InputError, match="not 'n2'"):
        run(["audit", "check-proof", "--pubkey", key, "--stream", "n2", str(proof)])
    witness = WitnessSigner.generate("witness1.example")
    argv = ["audit", "check-proof", "--pubkey", key, "--witness-key", str(witness.witness_key())]
    assert run([*argv, str(proof)]) == 1
    assert "witness1.example" in capsys.readouterr().out


def test_cli_check_proof_needs_a_log_key(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"")
    with pytest.raises(InputError, match="trusted log key is required"):
        run(["audit", "check-proof", "--bundle", str(tmp_path / "b")])


def test_cli_check_proof_refuses_an_oversized_file_unread(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    big = tmp_path / "big.tlog-proof"
    big.write_bytes(b"A" * (max_bundle_bytes() + 1))
    with pytest.raises(InputError, match="exceeds"):
        run(["audit", "check-proof", "--bundle", str(big), "--pubkey", str(signer.verifier_key())])


@pytest.fixture
def leaf_store(tmp_path: Path, signer: Ed25519Signer) -> LocalWormStore:
    store = LocalWormStore(tmp_path / "leaves")
    log = AuditLog(store, signer)
    for i in range(6):
        log.append("n1", leaf(i, agent="agent-1" if i % 2 else "agent-2"))
    log.checkpoint("n1")
    return store


def test_cli_query_writes_one_bundle_per_match(
    leaf_store: LocalWormStore,
    signer: Ed25519Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "bundles"
    argv = [
        "audit", "query", "--store", str(leaf_store.root), "--pubkey", str(signer.verifier_key()),
        "--agent", "agent-1", "--proofs", "--bundle-dir", str(out),
    ]  # fmt: skip
    assert run(argv) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    assert [m["index"] for m in matches] == [1, 3, 5]
    assert sorted(p.name for p in out.iterdir()) == [f"n1-{i}.tlog-proof" for i in (1, 3, 5)]
    for m in matches:
        data = Path(m["bundle"]).read_bytes()
        result = report(data, TrustPolicy((signer.verifier_key(),)))
        assert result.ok and result.index == m["index"] and result.request_id == m["request_id"]
        assert m["proof"]["format"] == "clawql-audit-inclusion-proof/1"
    with pytest.raises(InputError, match="use --force"):
        run(argv)
    assert run([*argv, "--force"]) == 0


def test_cli_query_without_proofs(
    leaf_store: LocalWormStore,
    signer: Ed25519Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "audit", "query", "--store", str(leaf_store.root), "--pubkey", str(signer.verifier_key()),
        "--agent", "agent-1", "--no-proofs",
    ]  # fmt: skip
    assert run(argv) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    assert len(matches) == 3 and all("proof" not in m for m in matches)
    with pytest.raises(InputError, match="--no-proofs"):
        run([*argv, "--bundle-dir", str(tmp_path / "b")])
