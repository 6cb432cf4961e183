"""Cosignatures: signing, strict parsing, forgery, witness policies, note assembly, key files."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    Ed25519Signer,
    NoteSignature,
    SignedNote,
    sign_checkpoint,
)
from clawql_secrets.audit.cosignature import (
    MAX_TIMESTAMP,
    WitnessKey,
    WitnessSigner,
    add_cosignatures,
    check_witnesses,
    cosignature_timestamp,
)
from clawql_secrets.errors import ConfigError, InputError, IntegrityError

BODY = Checkpoint("example.com/log", 7, merkle.EMPTY_ROOT).body()
TS = 1_700_000_000


@pytest.fixture(scope="module")
def w1() -> WitnessSigner:
    return WitnessSigner.generate("witness.test/w1")


@pytest.fixture(scope="module")
def w2() -> WitnessSigner:
    return WitnessSigner.generate("witness.test/w2")


@pytest.fixture(scope="module")
def logged() -> bytes:
    return sign_checkpoint(Checkpoint.parse(BODY), [Ed25519Signer.generate("example.com/log")])


def cosigned(note: bytes, *signers: WitnessSigner, ts: int = TS) -> bytes:
    text = SignedNote.parse(note).text
    return add_cosignatures(note, [s.cosign(text, ts) for s in signers])


# -- signing and verifying -------------------------------------------------------


def test_round_trip(w1: WitnessSigner, logged: bytes) -> None:
    assert cosignature_timestamp(cosigned(logged, w1), w1.witness_key()) == TS


@pytest.mark.parametrize("ts", [0, 1, MAX_TIMESTAMP])
def test_timestamp_range_edges(w1: WitnessSigner, ts: int) -> None:
    line = w1.cosign(BODY, ts)
    assert w1.witness_key().verify(BODY, line) == ts


@pytest.mark.parametrize("ts", [-1, MAX_TIMESTAMP + 1, True])
def test_timestamp_out_of_range(w1: WitnessSigner, ts: int) -> None:
    with pytest.raises(InputError, match="timestamp"):
        w1.cosign(BODY, ts)


@pytest.mark.parametrize("body", [b"hello\n", b"", b"o\n1\nnot base64\n", b"o\n01\n" + BODY[-45:]])
def test_cosign_signs_only_checkpoints(w1: WitnessSigner, body: bytes) -> None:
    with pytest.raises(InputError):
        w1.cosign(body, TS)


def test_cosignature_is_not_a_log_signature(w1: WitnessSigner) -> None:
    """Type 0x04 and 0x01 key hashes differ: a cosignature never passes for a note signature."""
    line = w1.cosign(BODY, TS)
    note_key = Ed25519Signer.from_key_string(w1.key_string()).verifier_key()
    assert line.key_hash != note_key.key_hash
    with pytest.raises(IntegrityError):
        note_key.open(BODY + b"\n" + line.line().encode())


_FIXED = WitnessSigner.generate("witness.test/fixed")


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(0, 2**63 - 1),
    ts=st.integers(0, MAX_TIMESTAMP),
    bit=st.integers(0, 8 * (4 + 8 + 64) - 1),
)
def test_any_bit_flip_fails(size: int, ts: int, bit: int) -> None:
    body = Checkpoint("example.com/log", size, bytes(32)).body()
    line = _FIXED.cosign(body, ts)
    assert _FIXED.witness_key().verify(body, line) == ts
    raw = bytearray(line.key_hash + line.signature)
    raw[bit // 8] ^= 1 << (bit % 8)
    note = (
        body + b"\n" + NoteSignature(line.key_name, bytes(raw[:4]), bytes(raw[4:])).line().encode()
    )
    if bit < 32:  # the key hash: the line is no longer this key's, and is ignored
        assert cosignature_timestamp(note, _FIXED.witness_key()) is None
    else:
        with pytest.raises(IntegrityError):
            cosignature_timestamp(note, _FIXED.witness_key())


# -- strict vkey parsing ----------------------------------------------------------


def _vkey_parts(w: WitnessSigner) -> tuple[str, str, str]:
    name, khash, material = str(w.witness_key()).split("+", 2)
    return name, khash, material


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda n, h, m: f"{n}+{h}", id="two-parts"),
        # an all-digit hash has no upper case: put a capital letter in it then
        pytest.param(
            lambda n, h, m: f"{n}+{h.upper() if h != h.upper() else 'A' + h[1:]}+{m}",
            id="upper-hex",
        ),
        pytest.param(lambda n, h, m: f"{n}+{h[:6]}+{m}", id="short-hash"),
        pytest.param(lambda n, h, m: f"{n}+{h}+{m[:-1]}", id="bad-base64"),
        pytest.param(lambda n, h, m: f"{n}+{h}+{m}AAAA", id="long-key"),
        pytest.param(lambda n, h, m: f"other+{h}+{m}", id="hash-of-other-name"),
        pytest.param(lambda n, h, m: f"+{h}+{m}", id="empty-name"),
        pytest.param(
            lambda n, h, m: f"{n}+{h}+" + base64.b64encode(b"\x05" + bytes(32)).decode(),
            id="type-0x05",
        ),
    ],
)
def test_malformed_vkeys(w1: WitnessSigner, mutate: object) -> None:
    text = mutate(*_vkey_parts(w1))  # type: ignore[operator]
    with pytest.raises(InputError):
        WitnessKey.parse(text)


@pytest.mark.parametrize("tweak", [lambda m: m + "=", lambda m: m[:20] + "\n" + m[20:]])
def test_non_strict_base64_vkey(tweak: object) -> None:
    name, khash, material = str(WitnessKey("w", bytes(range(32)))).split("+", 2)
    with pytest.raises(InputError, match="base64"):
        WitnessKey.parse(f"{name}+{khash}+{tweak(material)}")  # type: ignore[operator]


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\t", "nl\n", "nbsp\u00a0"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(InputError):
        WitnessKey(name, bytes(32))
    with pytest.raises(InputError):
        WitnessSigner.generate(name)


# -- finding and checking a witness's line ------------------------------------------


def test_absent_is_none(w1: WitnessSigner, w2: WitnessSigner, logged: bytes) -> None:
    assert cosignature_timestamp(logged, w1.witness_key()) is None
    assert cosignature_timestamp(cosigned(logged, w2), w1.witness_key()) is None


def test_same_name_other_key_is_ignored(w1: WitnessSigner, logged: bytes) -> None:
    """signed-note: a line matching a known key's name but not its key hash is not its line."""
    impostor = WitnessSigner.generate(w1.name)
    note = cosigned(logged, impostor)
    assert cosignature_timestamp(note, w1.witness_key()) is None


def test_forged_line_is_integrity_error(w1: WitnessSigner, logged: bytes) -> None:
    line = w1.cosign(SignedNote.parse(logged).text, TS)
    forged = NoteSignature(line.key_name, line.key_hash, line.signature[:8] + bytes(64))
    with pytest.raises(IntegrityError, match="does not verify"):
        cosignature_timestamp(add_cosignatures(logged, [forged]), w1.witness_key())


def test_wrong_length_line_is_integrity_error(w1: WitnessSigner, logged: bytes) -> None:
    key = w1.witness_key()
    short = NoteSignature(key.name, key.key_hash, bytes(64))  # a note signature: no timestamp
    with pytest.raises(IntegrityError, match="bytes"):
        cosignature_timestamp(add_cosignatures(logged, [short]), key)


def test_timestamp_beyond_range_is_integrity_error(w1: WitnessSigner, logged: bytes) -> None:
    key = w1.witness_key()
    line = NoteSignature(key.name, key.key_hash, (2**63).to_bytes(8, "big") + bytes(64))
    with pytest.raises(IntegrityError, match="2\\^63"):
        cosignature_timestamp(add_cosignatures(logged, [line]), key)


def test_two_lines_by_one_witness_are_ambiguous(w1: WitnessSigner, logged: bytes) -> None:
    text = SignedNote.parse(logged).text
    note = SignedNote.parse(logged)
    both = SignedNote(
        note.text, (*note.signatures, w1.cosign(text, TS), w1.cosign(text, TS + 1))
    ).to_bytes()
    with pytest.raises(IntegrityError, match="2 cosignatures"):
        cosignature_timestamp(both, w1.witness_key())


def test_tampered_checkpoint_fails(w1: WitnessSigner, logged: bytes) -> None:
    note = cosigned(logged, w1).replace(b"\n7\n", b"\n8\n")
    with pytest.raises(IntegrityError):
        cosignature_timestamp(note, w1.witness_key())


# -- witness policies -------------------------------------------------------------


def test_threshold_met(w1: WitnessSigner, w2: WitnessSigner, logged: bytes) -> None:
    keys = [w1.witness_key(), w2.witness_key()]
    assert check_witnesses(cosigned(logged, w1, w2), keys, 2) == {w1.name: TS, w2.name: TS}
    assert check_witnesses(cosigned(logged, w2), keys, 1) == {w2.name: TS}


def test_threshold_missed_names_the_missing(
    w1: WitnessSigner, w2: WitnessSigner, logged: bytes
) -> None:
    keys = [w1.witness_key(), w2.witness_key()]
    with pytest.raises(IntegrityError, match="1 of the 2") as missing:
        check_witnesses(cosigned(logged, w2), keys, 2)
    assert w1.name in missing.value.message and w2.name not in missing.value.message
    with pytest.raises(IntegrityError, match="0 of the 1"):
        check_witnesses(logged, keys, 1)


def test_forged_line_fails_even_above_threshold(
    w1: WitnessSigner, w2: WitnessSigner, logged: bytes
) -> None:
    key = w2.witness_key()
    forged = NoteSignature(key.name, key.key_hash, TS.to_bytes(8, "big") + bytes(64))
    note = add_cosignatures(cosigned(logged, w1), [forged])
    with pytest.raises(IntegrityError, match="does not verify"):
        check_witnesses(note, [w1.witness_key(), key], 1)


@pytest.mark.parametrize("threshold", [0, -1, 3, True])
def test_impossible_thresholds_fail_closed(
    w1: WitnessSigner, w2: WitnessSigner, logged: bytes, threshold: int
) -> None:
    with pytest.raises(ConfigError):
        check_witnesses(cosigned(logged, w1, w2), [w1.witness_key(), w2.witness_key()], threshold)


def test_no_keys_fails_closed(logged: bytes) -> None:
    with pytest.raises(ConfigError, match="no witness keys"):
        check_witnesses(logged, [], 1)


def test_one_key_under_two_names_is_refused(w1: WitnessSigner, logged: bytes) -> None:
    """The Ed25519 message omits the name: one line relabelled would count twice."""
    key = w1.witness_key()
    alias = WitnessKey("witness.test/alias", key.public_key)
    line = w1.cosign(SignedNote.parse(logged).text, TS)
    relabelled = NoteSignature(alias.name, alias.key_hash, line.signature)
    note = add_cosignatures(logged, [line, relabelled])
    assert cosignature_timestamp(note, alias) == TS  # why the policy must refuse the pair
    with pytest.raises(ConfigError, match="one public key"):
        check_witnesses(note, [key, alias], 2)
    with pytest.raises(ConfigError, match="share a name"):
        check_witnesses(note, [key, key], 1)


# -- assembling notes ---------------------------------------------------------------


def test_add_cosignatures_appends_and_deduplicates(
    w1: WitnessSigner, w2: WitnessSigner, logged: bytes
) -> None:
    text = SignedNote.parse(logged).text
    a, b = w1.cosign(text, TS), w2.cosign(text, TS)
    once = add_cosignatures(logged, [a, b, a])
    assert SignedNote.parse(once).signatures[1:] == (a, b)
    assert add_cosignatures(once, [w1.cosign(text, TS + 5)]) == once  # w1 already signed
    assert once.startswith(logged)


def test_add_cosignatures_bounds(w1: WitnessSigner, logged: bytes) -> None:
    many = [WitnessSigner.generate(f"w{i}").cosign(BODY, TS) for i in range(MAX_SIGNATURES)]
    with pytest.raises(InputError, match="at most"):
        add_cosignatures(logged, many)
    with pytest.raises(InputError):
        add_cosignatures(logged, [NoteSignature("bad name", bytes(4), bytes(72))])
    with pytest.raises(InputError):
        add_cosignatures(b"not a note", [])


# -- the key file ---------------------------------------------------------------------


def _key_file(tmp_path: Path, signer: WitnessSigner, mode: int = 0o600) -> Path:
    path = tmp_path / "witness.key"
    path.write_text(signer.key_string() + "\n")
    path.chmod(mode)
    return path


def test_key_file_round_trip(tmp_path: Path, w1: WitnessSigner) -> None:
    loaded = WitnessSigner.from_file(_key_file(tmp_path, w1))
    assert loaded.witness_key() == w1.witness_key()
    assert w1.key_string() not in repr(loaded)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(
    tmp_path: Path, w1: WitnessSigner, mode: int
) -> None:
    with pytest.raises(ConfigError, match="group or others") as refused:
        WitnessSigner.from_file(_key_file(tmp_path, w1, mode))
    assert refused.value.fix is not None and "chmod 600" in refused.value.fix


def test_key_file_symlink_missing_dir(tmp_path: Path, w1: WitnessSigner) -> None:
    target = _key_file(tmp_path, w1)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symlinks"):
        WitnessSigner.from_file(link)
    with pytest.raises(ConfigError, match="does not exist"):
        WitnessSigner.from_file(tmp_path / "missing.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        WitnessSigner.from_file(tmp_path / "dir.key")


def test_malformed_key_file_never_echoes_the_key(tmp_path: Path, w1: WitnessSigner) -> None:
    secret = w1.key_string()
    _, _, name, _, material = secret.split("+", 4)
    broken = f"PRIVATE+KEY+{name}+{'0' * 8}+{material}"  # wrong hash, real key material
    path = tmp_path / "bad.key"
    path.write_text(broken)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="malformed") as refused:
        WitnessSigner.from_file(path)
    assert material not in refused.value.diagnostics()
    assert material not in str(refused.value.__cause__)
