"""Cosignatures and witness requests against vectors from the spec and other implementations.

Where each vector comes from:

- C2SP: ``C2SP/C2SP`` ``tlog-cosignature.md`` (commit 01194db1): the example
  signed message and the example cosignature line (no public key is
  published for it, so only its layout and timestamp are checked).
- project-oak: ``project-oak/oak`` ``tr/c2sp/testdata/test.tlog-proof``
  (commit cd7873f1) with ``TEST_MAIN_VKEY``/``TEST_WITNESS_VKEY`` from
  ``tr/c2sp/lib.rs`` (commit 9dd1927d): a real checkpoint, signed by a log
  (type 0x01) and cosigned by a witness (type 0x04) with another
  implementation (Rust, ed25519-dalek).
- transparency-dev: ``transparency-dev/formats`` ``note/note_cosigv1_test.go``
  (commit 091ce416): a native 0x04 vkey, a 0x01 vkey, malformed vkeys, and a
  cosignature whose timestamp decodes to 1727964367.
- litetlog: ``FiloSottile/litetlog`` ``internal/witness/witness_test.go``
  (commit 3195373f, ``TestRace``): a sigsum log key and three real
  add-checkpoint request bodies (sizes 1, 3 and 5, with consistency proofs),
  plus the 3 -> 5 proof of ``cmd/litewitness/testdata/litewitness.txt``
  (commit 006b6470).
- Signing: no published vector pairs a known witness private key with its
  cosignature, so ``test_signing_matches_an_independent_computation`` builds the
  expected line in the test from the spec text with ``hashlib`` and
  ``cryptography`` directly, using the public test key of
  ``golang.org/x/mod/sumdb/note`` (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import Checkpoint, SignedNote, VerifierKey
from clawql_secrets.audit.cosignature import (
    WitnessKey,
    WitnessSigner,
    add_cosignatures,
    check_witnesses,
    cosignature_timestamp,
    cosigned_message,
)
from clawql_secrets.errors import InputError, IntegrityError
from clawql_secrets.witness.server import Witness
from clawql_secrets.witness.state import AddCheckpointRequest, LogPolicy, WitnessConflict
from clawql_secrets.witness.store import StateStore

DASH = "\u2014"

# -- C2SP tlog-cosignature.md ----------------------------------------------------

SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_MESSAGE = b"cosignature/v1\ntime 1679315147\n" + SPEC_BODY
SPEC_NOTE = (
    SPEC_BODY.decode()
    + "\n"
    + f"{DASH} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    + f"{DASH} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
    "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
).encode()


def test_spec_signed_message() -> None:
    assert cosigned_message(SPEC_BODY, 1679315147) == SPEC_MESSAGE


def test_spec_example_line_layout() -> None:
    line = SignedNote.parse(SPEC_NOTE).signatures[1]
    assert line.key_name == "witness.example.com/w1"
    assert len(line.signature) == 8 + 64
    assert int.from_bytes(line.signature[:8], "big") == 1679315147  # the message's timestamp


# -- project-oak/oak tr/c2sp ---------------------------------------------------------

OAK_LOG_VKEY = "fake.log.origin/log+527eabb8+AddT9PtBhhNAsDYZ0V0euiRbXuvrLsw4L6vKARfipnmz"
OAK_WITNESS_VKEY = "test-witness+26349ef0+BIQDFTUlktisMqJzWn8qhteWrRr4dLcQ9R37T+8LQyQF"
OAK_BODY = b"fake.log.origin/log\n4\nCPv9hH0ShT6k/WU9QZeh1bV7bYeUOkrnBuCLCQG9GgE=\n"
OAK_LOG_LINE = (
    f"{DASH} fake.log.origin/log Un6ruNthJe4tf267eyOp8N1FYcK5AoY5b6v53qa6uDg33Xn5PqIaP35NSw87"
    "oCw+krzzJliWc5C7KqPV0oPyNxQ2awA=\n"
)
OAK_WITNESS_LINE = (
    f"{DASH} test-witness JjSe8AAAAABpmI8+HVh4f06FDH/kr4CtoQ63zVC31E8aT7JHzJMkLcOEIAGPiBG/Iatd"
    "HdPk1mKe23SDzKi04+Tmzub1qcwuVG78DQ==\n"
)
OAK_NOTE = OAK_BODY + b"\n" + (OAK_LOG_LINE + OAK_WITNESS_LINE).encode()
OAK_TIMESTAMP = 1771605822


def test_oak_witness_vkey_round_trips() -> None:
    key = WitnessKey.parse(OAK_WITNESS_VKEY)
    assert key.name == "test-witness"
    assert key.key_hash.hex() == "26349ef0"
    assert str(key) == OAK_WITNESS_VKEY


def test_oak_cosignature_verifies() -> None:
    key = WitnessKey.parse(OAK_WITNESS_VKEY)
    assert cosignature_timestamp(OAK_NOTE, key) == OAK_TIMESTAMP
    assert check_witnesses(OAK_NOTE, [key], 1) == {"test-witness": OAK_TIMESTAMP}
    # The log's own signature is a plain type-0x01 note signature over the same body.
    assert VerifierKey.parse(OAK_LOG_VKEY).open(OAK_NOTE) == OAK_BODY


def test_oak_log_key_is_not_a_witness_key() -> None:
    with pytest.raises(InputError, match="type 0x01"):
        WitnessKey.parse(OAK_LOG_VKEY)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda n: n.replace(b"\n4\n", b"\n5\n"), id="other-size"),
        pytest.param(lambda n: n.replace(b"JjSe8AAAAABp", b"JjSe8AAAAABq"), id="other-timestamp"),
        pytest.param(lambda n: n.replace(b"G78DQ==", b"G78DA=="), id="flipped-signature-bit"),
    ],
)
def test_oak_cosignature_tampered(change: object) -> None:
    key = WitnessKey.parse(OAK_WITNESS_VKEY)
    tampered = change(OAK_NOTE)  # type: ignore[operator]
    assert tampered != OAK_NOTE
    with pytest.raises(IntegrityError):
        cosignature_timestamp(tampered, key)


def test_oak_checkpoint_through_our_witness(tmp_path: Path) -> None:
    """Our witness accepts the other implementation's log checkpoint and our line adds on."""
    signer = WitnessSigner.generate("witness.test/w1")
    origin = "fake.log.origin/log"
    policy = LogPolicy(origin, (VerifierKey.parse(OAK_LOG_VKEY),))
    with StateStore.open(tmp_path, [origin]) as store:
        witness = Witness(signer, {origin: policy}, store, clock=lambda: 1_800_000_000)
        cosigned = witness.add_checkpoint(AddCheckpointRequest.build(0, [], OAK_NOTE).to_bytes())
    both = add_cosignatures(OAK_NOTE, [cosigned.signature])
    keys = [WitnessKey.parse(OAK_WITNESS_VKEY), signer.witness_key()]
    assert check_witnesses(both, keys, 2) == {
        "test-witness": OAK_TIMESTAMP,
        "witness.test/w1": 1_800_000_000,
    }


# -- transparency-dev/formats note/note_cosigv1_test.go -------------------------------

FORMATS_COSIG_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
FORMATS_ED25519_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
FORMATS_SIGNATURE = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEB"
    "YJXORmnFBOBA=="
)


def test_formats_native_cosignature_vkey() -> None:
    key = WitnessKey.parse(FORMATS_COSIG_VKEY)
    assert (key.name, key.key_hash.hex()) == ("remora.n621.de", "da77ade7")
    assert str(key) == FORMATS_COSIG_VKEY


def test_formats_ed25519_vkey_is_refused_as_witness_key() -> None:
    VerifierKey.parse(FORMATS_ED25519_VKEY)  # a valid note key ...
    with pytest.raises(InputError, match="type 0x01"):
        WitnessKey.parse(FORMATS_ED25519_VKEY)  # ... but not a cosignature key


@pytest.mark.parametrize(
    "text",
    [
        "bananas.sigstore.dev+12344556",
        "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
        "rekor.sigstore.dev+12345678+AwEB",
        "remora.n621.de+NOT_A_NUMBER+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
        "remora.n621.de+00000000+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
    ],
)
def test_formats_malformed_vkeys(text: str) -> None:
    with pytest.raises(InputError):
        WitnessKey.parse(text)


def test_formats_timestamp_layout() -> None:
    note = SignedNote.parse(f"x\n\n{DASH} w {FORMATS_SIGNATURE}\n".encode())
    line = note.signatures[0]
    assert line.key_hash.hex() == "646846b9"
    assert int.from_bytes(line.signature[:8], "big") == 1727964367


# -- FiloSottile/litetlog internal/witness TestRace ----------------------------------

SIGSUM_ORIGIN = (
    "sigsum.org/v1/tree/4d6d8825a6bb689d459628312889dfbb0bcd41b5211d9e1ce768b0ff0309e562"
)
SIGSUM_KEY = bytes.fromhex("ffdc2d4d98e4124d3feaf788c0c2f9abfd796083d1f0495437f302ec79cf100f")


def _sigsum_note(size: int, root: str, signature: str) -> str:
    return f"{SIGSUM_ORIGIN}\n{size}\n{root}\n\n{DASH} {SIGSUM_ORIGIN} {signature}\n"


NOTE_1 = _sigsum_note(
    1,
    "KgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "UgIom7fPZTqpxWWhyjWduBvTvGVqsokMbqTArsQilegKoFBJQjUFAmQ0+YeSPM3wfUQMFSzVnnNuWRTYrajXpNUbIQY=",
)
NOTE_3 = _sigsum_note(
    3,
    "RcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0=",
    "UgIom2VbtIcdFbwFAy1n7s6IkAxIY6J/GQOTuZF2ORV39d75cbAj2aQYwyJre36kezNobZs4SUUdrcawfAB8WVrx6go=",
)
NOTE_5 = _sigsum_note(
    5,
    "QrtXrQZCCvpIgsSmOsah7HdICzMLLyDfxToMql9WTjY=",
    "UgIomw/EOJmWi0i1FQsOj+etB7F8IccFam/jgd6wzRns4QPVmyEZtdvl1U2KEmLOZ/ASRcWJi0tW90dJWAShei7sDww=",
)
BODY_0_1 = f"old 0\n\n{NOTE_1}".encode()
BODY_1_3 = (
    "old 1\nKgEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    f"KgIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n{NOTE_3}"
).encode()
BODY_1_5 = (
    "old 1\nKgEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "+fUDV+k970B4I3uKrqJM4aP1lloPZP8mvr2Z4wRw2LI=\n"
    f"KgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n{NOTE_5}"
).encode()
# cmd/litewitness/testdata/litewitness.txt: the node hashes of the 3 -> 5 request, in base64.
BODY_3_5 = (
    "old 3\nKgIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "KgMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "wgiIFdZfYNv6WU1OllBKsWnLYIS/DBMqt8Uh/S4OukE=\n"
    f"KgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n{NOTE_5}"
).encode()


@pytest.fixture
def sigsum_witness(tmp_path: Path) -> Witness:
    policy = LogPolicy(SIGSUM_ORIGIN, (VerifierKey.from_public_key(SIGSUM_ORIGIN, SIGSUM_KEY),))
    store = StateStore.open(tmp_path, [SIGSUM_ORIGIN])
    signer = WitnessSigner.generate("example.com")
    return Witness(signer, {SIGSUM_ORIGIN: policy}, store, clock=lambda: 1_700_000_000)


def test_litetlog_requests_parse_and_round_trip() -> None:
    for body in (BODY_0_1, BODY_1_3, BODY_1_5, BODY_3_5):
        assert AddCheckpointRequest.parse(body).to_bytes() == body


def test_litetlog_race_sequence(sigsum_witness: Witness) -> None:
    """TestRace's outcome: 1 -> 5 wins, the stale 1 -> 3 gets 409 naming 5, no rollback."""
    key = sigsum_witness.key
    first = sigsum_witness.add_checkpoint(BODY_0_1)
    assert key.verify(NOTE_1.split("\n\n")[0].encode() + b"\n", first.signature) == 1_700_000_000
    sigsum_witness.add_checkpoint(BODY_1_5)
    with pytest.raises(WitnessConflict) as conflict:
        sigsum_witness.add_checkpoint(BODY_1_3)
    assert conflict.value.known_size == 5
    state = sigsum_witness.store.get(SIGSUM_ORIGIN)
    assert state is not None and state.size == 5
    assert state.root.hex() == "42bb57ad06420afa4882c4a63ac6a1ec77480b330b2f20dfc53a0caa5f564e36"


def test_litetlog_step_by_step(sigsum_witness: Witness) -> None:
    for body, size in ((BODY_0_1, 1), (BODY_1_3, 3), (BODY_3_5, 5)):
        cosigned = sigsum_witness.add_checkpoint(body)
        assert cosigned.state.size == size
        note = add_cosignatures(AddCheckpointRequest.parse(body).note, [cosigned.signature])
        assert check_witnesses(note, [sigsum_witness.key], 1) == {"example.com": 1_700_000_000}


# -- signing: an independent computation from the spec text -------------------------

# golang.org/x/mod/sumdb/note's example signer (a published test key).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"


def test_signing_matches_an_independent_computation() -> None:
    signer = WitnessSigner.from_key_string(GO_SIGNER)
    body = Checkpoint("example.com/log", 42, merkle.EMPTY_ROOT, ("ext line",)).body()
    timestamp = 1_700_000_123
    # The spec, by hand: 0x04 key hash, u64 big-endian timestamp, the two header lines.
    seed = base64.b64decode(GO_SIGNER.split("+", 4)[4])[1:]
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    khash = hashlib.sha256(b"PeterNeumann\n\x04" + public).digest()[:4]
    message = b"cosignature/v1\ntime 1700000123\n" + body
    blob = khash + timestamp.to_bytes(8, "big") + private.sign(message)
    expected_line = f"{DASH} PeterNeumann {base64.b64encode(blob).decode()}\n"
    material = base64.b64encode(bytes([0x04]) + public).decode()
    expected_vkey = f"PeterNeumann+{khash.hex()}+{material}"

    assert signer.cosign(body, timestamp).line() == expected_line
    assert str(signer.witness_key()) == expected_vkey
    # The file's own hash stays the Go note (type 0x01) hash: the same key string.
    assert signer.key_string() == GO_SIGNER
    note = body + b"\n" + expected_line.encode()
    assert cosignature_timestamp(note, WitnessKey.parse(expected_vkey)) == timestamp
