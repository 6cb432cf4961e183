"""C2SP signed notes and tlog-checkpoints: external vector, strict parsing, forgery."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import (
    Checkpoint,
    Ed25519Signer,
    SignedNote,
    VerifierKey,
    open_checkpoint,
    sign_checkpoint,
    sign_note,
)
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import BackendError, ConfigError, InputError, IntegrityError
from tests.audit import make_vectors

# golang.org/x/mod/sumdb/note: the example signer, verifier and signed note (public test key).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFY"
        "C2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)

ORIGIN = "clawql.local/audit/n1"
ROOT = merkle.leaf_hash(b"x")


@pytest.fixture(scope="module")
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("clawql.test/log")


def test_go_note_vector_is_reproduced_byte_for_byte() -> None:
    go = Ed25519Signer.from_key_string(GO_SIGNER)
    assert str(go.verifier_key()) == GO_VERIFIER
    assert sign_note(GO_TEXT, [go]) == GO_NOTE
    assert VerifierKey.parse(GO_VERIFIER).open(GO_NOTE) == GO_TEXT


def test_committed_checkpoint_vector_opens() -> None:
    vector = json.loads((make_vectors.HERE / "checkpoint.json").read_text(encoding="utf-8"))
    verifier = VerifierKey.parse(vector["verifier_key"])
    cp = open_checkpoint(vector["note"].encode(), verifier, origin=ORIGIN)
    assert cp.size == make_vectors.MAX_SIZE


def test_checkpoint_round_trip(signer: Ed25519Signer) -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT)
    note = sign_checkpoint(cp, [signer])
    assert note.startswith(f"{ORIGIN}\n42\n".encode())
    assert open_checkpoint(note, signer.verifier_key(), origin=ORIGIN) == cp


def test_signer_key_string_round_trips(signer: Ed25519Signer) -> None:
    again = Ed25519Signer.from_key_string(signer.key_string())
    assert again.verifier_key() == signer.verifier_key()
    assert "PRIVATE" not in repr(again)


def test_signer_file_errors_are_config_errors(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "key"
    with pytest.raises(ConfigError):
        Ed25519Signer.from_file(path)
    path.write_text("PRIVATE+KEY+broken")
    with pytest.raises(ConfigError):
        Ed25519Signer.from_file(path)


def test_cosignature_by_another_key_is_ignored(signer: Ed25519Signer) -> None:
    witness = Ed25519Signer.generate("witness.example")
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), [signer, witness])
    assert open_checkpoint(note, signer.verifier_key()).size == 1
    assert open_checkpoint(note, witness.verifier_key()).size == 1


@pytest.mark.parametrize(
    "name",
    ["forged_with_other_key_same_name", "signed_by_unknown_key", "signature_of_other_text"],
)
def test_forgeries_are_signature_errors(signer: Ed25519Signer, name: str) -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    if name == "forged_with_other_key_same_name":
        note = sign_checkpoint(cp, [Ed25519Signer.generate(signer.key_name)])
    elif name == "signed_by_unknown_key":
        note = sign_checkpoint(cp, [Ed25519Signer.generate("mallory")])
    else:
        good = SignedNote.parse(sign_checkpoint(cp, [signer]))
        other = SignedNote.parse(sign_checkpoint(Checkpoint(ORIGIN, 8, ROOT), [signer]))
        note = SignedNote(good.text, other.signatures).to_bytes()
    with pytest.raises(SignatureError):
        open_checkpoint(note, signer.verifier_key())


def test_checkpoint_of_another_log_is_refused(signer: Ed25519Signer) -> None:
    note = sign_checkpoint(Checkpoint("clawql.local/audit/n2", 7, ROOT), [signer])
    with pytest.raises(SignatureError, match="elsewhere"):
        open_checkpoint(note, signer.verifier_key(), origin=ORIGIN)


def test_two_signatures_by_the_trusted_key_are_refused(signer: Ed25519Signer) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), [signer, signer])
    with pytest.raises(SignatureError, match="2 signatures"):
        open_checkpoint(note, signer.verifier_key())


class LyingSigner:
    """An HSM that advertises one key and signs with another."""

    key_name = "hsm.example"

    def __init__(self) -> None:
        self._advertised = Ed25519Signer.generate("hsm.example")
        self._actual = Ed25519Signer.generate("hsm.example")

    def public_key_bytes(self) -> bytes:
        return self._advertised.public_key_bytes()

    def sign(self, message: bytes) -> bytes:
        return self._actual.sign(message)


def test_signer_whose_signature_does_not_verify_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="own public key"):
        sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), [LyingSigner()])


def test_signing_needs_a_signer() -> None:
    with pytest.raises(InputError):
        sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), [])


B64_ROOT = "yBj9TmUQnwSobjhrmvb0d53gJGOMvbM/YHLWtDjqjK0="


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("missing_root_line", f"{ORIGIN}\n5\n"),
        ("empty_origin", f"\n5\n{B64_ROOT}\n"),
        ("size_with_leading_zero", f"{ORIGIN}\n05\n{B64_ROOT}\n"),
        ("size_negative", f"{ORIGIN}\n-5\n{B64_ROOT}\n"),
        ("size_with_plus", f"{ORIGIN}\n+5\n{B64_ROOT}\n"),
        ("size_unicode_digit", f"{ORIGIN}\n\u0665\n{B64_ROOT}\n"),
        ("size_too_large", f"{ORIGIN}\n{2**63}\n{B64_ROOT}\n"),
        ("root_short", f"{ORIGIN}\n5\nAAAA\n"),
        ("root_unpadded", f"{ORIGIN}\n5\n{B64_ROOT.rstrip('=')}\n"),
        ("root_noncanonical_bits", f"{ORIGIN}\n5\n{B64_ROOT[:-2]}1=\n"),
        ("root_urlsafe_alphabet", f"{ORIGIN}\n5\n{B64_ROOT.replace('/', '_')}\n"),
        ("no_final_newline", f"{ORIGIN}\n5\n{B64_ROOT}"),
        ("empty_extension_line", f"{ORIGIN}\n5\n{B64_ROOT}\n\n"),
    ],
)
def test_malformed_checkpoint_body_is_input_error(name: str, body: str) -> None:
    with pytest.raises(InputError):
        Checkpoint.parse(body.encode())


def test_extension_lines_are_kept() -> None:
    cp = Checkpoint.parse(f"{ORIGIN}\n5\n{B64_ROOT}\nts 1700000000\n".encode())
    assert cp.extensions == ("ts 1700000000",)
    assert Checkpoint.parse(cp.body()) == cp


def _note(signer: Ed25519Signer) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), [signer])


@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("no_signature_block", lambda n: n.split(b"\n\n")[0] + b"\n"),
        ("no_final_newline", lambda n: n[:-1]),
        ("hyphen_instead_of_em_dash", lambda n: n.replace("\u2014".encode(), b"-")),
        ("extra_space_in_signature_line", lambda n: n.replace(b"\x94 ", b"\x94  ")),
        ("signature_not_base64", lambda n: n[:-3] + b"!=\n"),
        ("signature_too_short", lambda n: n.split(b"\n\n")[0] + "\n\n\u2014 k AAAA\n".encode()),
        ("blank_line_inside_text", lambda n: n.replace(b"\n5\n", b"\n\n5\n")),
        ("control_character", lambda n: n.replace(b"5", b"5\x07")),
        ("not_utf8", lambda n: n.replace(b"5", b"\xff")),
        ("oversized", lambda n: n + b"x" * 70_000),
        ("too_many_signatures", lambda n: n + n.split(b"\n\n")[1] * 100),
    ],
)
def test_malformed_note_is_input_error(signer: Ed25519Signer, name: str, mangle: object) -> None:
    with pytest.raises(InputError):
        open_checkpoint(mangle(_note(signer)), signer.verifier_key())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("two_fields", "PeterNeumann+c74f20a3"),
        ("hash_uppercase", GO_VERIFIER.replace("c74f20a3", "C74F20A3")),
        ("hash_mismatch", GO_VERIFIER.replace("c74f20a3", "c74f20a4")),
        ("wrong_algorithm", "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        ("key_truncated", GO_VERIFIER[:-4]),
        ("name_with_space", GO_VERIFIER.replace("Peter", "Pe ter")),
        ("empty_name", GO_VERIFIER[len("PeterNeumann") :]),
    ],
)
def test_malformed_verifier_key_is_input_error(name: str, key: str) -> None:
    with pytest.raises(InputError):
        VerifierKey.parse(key)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0))
def test_any_flipped_bit_in_a_signed_checkpoint_is_refused(position: int) -> None:
    signer = Ed25519Signer.from_key_string(GO_SIGNER)
    note = bytearray(sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), [signer]))
    bit = position % (len(note) * 8)
    note[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((InputError, IntegrityError)):
        open_checkpoint(bytes(note), signer.verifier_key(), origin=ORIGIN)
