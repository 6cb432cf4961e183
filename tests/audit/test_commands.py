"""`audit verify|prove|consistency|check-proof`: exit 0 only when everything holds."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest

from clawql_secrets.audit import commands
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.errors import InputError, IntegrityError
from tests.audit.conftest import CP, SEG, Tamper


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_verify_ok(
    store: LocalWormStore, signer: Ed25519Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(signer.verifier_key())
    assert run(["audit", "verify", "--store", str(store.root), "--pubkey", key]) == 0
    out = capsys.readouterr().out
    assert "ok   n1: 30 entries, 3 checkpoints" in out and out.rstrip().endswith("verified")


def test_verify_json_and_key_file(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "log.pub"
    key_file.write_text(str(signer.verifier_key()) + "\n")
    argv = ["audit", "verify", "--store", str(store.root), "--pubkey-file", str(key_file), "--json"]
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_verify_tampered_exits_1_and_names_the_place(
    store: LocalWormStore, signer: Ed25519Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    Tamper(store.root).delete(SEG.format(10, 19))
    key = str(signer.verifier_key())
    assert run(["audit", "verify", "--store", str(store.root), "--pubkey", key]) == 1
    out = capsys.readouterr().out
    assert "FAIL n1" in out and "entries 10..19" in out and "NOT verified" in out


def test_verify_with_known_checkpoint(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path
) -> None:
    t = Tamper(store.root)
    known = tmp_path / "head.txt"
    known.write_bytes(t.read(CP.format(30)))
    t.delete(SEG.format(20, 29))
    t.delete(CP.format(30))
    key = str(signer.verifier_key())
    argv = ["audit", "verify", "--store", str(store.root), "--pubkey", key]
    assert run(argv) == 0
    assert run([*argv, "--known", str(known)]) == 1


def test_verify_empty_store_fails(tmp_path: Path, signer: Ed25519Signer) -> None:
    key = str(signer.verifier_key())
    assert run(["audit", "verify", "--store", str(tmp_path), "--pubkey", key]) == 1


def test_verify_missing_store_is_input_error(tmp_path: Path, signer: Ed25519Signer) -> None:
    key = str(signer.verifier_key())
    with pytest.raises(InputError):
        run(["audit", "verify", "--store", str(tmp_path / "none"), "--pubkey", key])


def test_prove_then_check_proof(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(["audit", "prove", "--store", str(store.root), "--stream", "n1", "--index", "7"]) == 0
    )
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    key = str(signer.verifier_key())
    assert run(["audit", "check-proof", "--pubkey", key, str(proof)]) == 0
    assert "entry 7 of stream 'n1' is in the log at tree size 30" in capsys.readouterr().out


def test_consistency_then_check_proof(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "consistency", "--store", str(store.root), "--stream", "n1"]
    assert run([*argv, "--old", "10", "--new", "30"]) == 0
    proof = tmp_path / "consistency.json"
    document = json.loads(out := capsys.readouterr().out)
    assert document["format"] == "clawql-audit-consistency-proof/1"
    assert (document["old_size"], document["new_size"]) == (10, 30)
    proof.write_text(out)
    key = str(signer.verifier_key())
    assert run(["audit", "check-proof", "--pubkey", key, str(proof)]) == 0
    assert "size 10 is a prefix of the signed tree of size 30" in capsys.readouterr().out


def test_consistency_proof_with_a_changed_hash_fails(
    store: LocalWormStore, signer: Ed25519Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "consistency", "--store", str(store.root), "--stream", "n1"]
    assert run([*argv, "--old", "10", "--new", "20"]) == 0
    document = json.loads(capsys.readouterr().out)
    first = bytearray(base64.b64decode(document["path"][0]))
    first[0] ^= 1
    document["path"][0] = base64.b64encode(bytes(first)).decode()
    proof = tmp_path / "bad.json"
    proof.write_text(json.dumps(document))
    with pytest.raises(IntegrityError):
        run(["audit", "check-proof", "--pubkey", str(signer.verifier_key()), str(proof)])


def test_consistency_refuses_unsigned_sizes(store: LocalWormStore) -> None:
    argv = ["audit", "consistency", "--store", str(store.root), "--stream", "n1"]
    with pytest.raises(InputError, match="no signed checkpoints at sizes 5 and 30"):
        run([*argv, "--old", "5", "--new", "30"])
