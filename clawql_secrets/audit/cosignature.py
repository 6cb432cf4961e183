"""C2SP tlog-cosignature v1 (Ed25519): what a witness signs, and how a verifier checks it.

A witness cosigns a checkpoint to state that, at the time it gives, this is
the largest tree it has seen for the log and that every tree it saw before is
a prefix of it. Holding a quorum of such statements is what lets a verifier
trust a checkpoint without trusting the log: a log that shows one history to
the witnesses and another to a victim (a fork), or rolls back to a smaller
tree, cannot collect the cosignatures for both.

Format (c2sp.org/tlog-cosignature, Ed25519 type):

- the key hash is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``: type
  ``0x04`` rather than the ``0x01`` of a plain note signature, so a
  cosignature can never be taken for the log's own signature and vice versa;
- the signature line is ``— <name> base64(key hash || u64 timestamp || sig)``,
  the timestamp big-endian POSIX seconds, at most 2^63 - 1;
- the signed message is ``cosignature/v1\\ntime <timestamp>\\n`` followed by the
  whole checkpoint body (the note text, extension lines included).

The message does not contain the cosigner's name, so one Ed25519 key must
never serve two witness names: a line by witness A could be relabelled as
witness B (its key hash recomputed) and counted twice. ``check_witnesses``
refuses a witness list that reuses a key for that reason.

Everything here is pure; ``WitnessSigner.from_file`` is the one edge, reading
the witness's private key.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clawql_secrets.audit.checkpoint import (
    ALG_ED25519,
    MAX_SIGNATURES,
    Checkpoint,
    NoteSignature,
    SignedNote,
    b64,
    parse_private_key_string,
    private_key_string,
    unb64,
)
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import ConfigError, InputError

ALG_COSIGNATURE_V1 = 0x04
"""The signed-note signature type of timestamped Ed25519 cosignatures."""

MAX_TIMESTAMP = 2**63 - 1
COSIGNATURE_HEADER = b"cosignature/v1\n"
_ED25519_SIGNATURE = 64
_TIMESTAMP = 8
_HEX8 = re.compile(r"[0-9a-f]{8}")
_MAX_KEY_FILE_BYTES = 4096


def cosignature_key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key hash of an Ed25519 cosigner key (signature type 0x04)."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key
    ).digest()[:4]


def cosigned_message(checkpoint_body: bytes, timestamp: int) -> bytes:
    """The exact bytes an Ed25519 cosignature signs."""
    _check_timestamp(timestamp)
    return COSIGNATURE_HEADER + f"time {timestamp}\n".encode("ascii") + checkpoint_body


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise InputError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")


def check_key_name(name: str) -> None:
    """``InputError`` unless ``name`` is a signed-note key name.

    Non-empty, no Unicode space, no '+' (it ends the name in a vkey), no
    control codes.
    """
    if not name or "+" in name or any(c.isspace() or unicodedata.category(c) == "Cc" for c in name):
        raise InputError(f"{name!r} is not a valid key name (non-empty, no spaces, no '+')")


@dataclass(frozen=True)
class WitnessKey:
    """A witness's public key, as verifiers are configured with it.

    ``str()`` is the C2SP vkey ``<name>+<hex key hash>+<base64(0x04 || key)>``.
    A plain note key (type 0x01) is refused by ``parse``: configuring a log key
    where a witness key belongs must not silently "work".
    """

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != 32:
            raise InputError("an Ed25519 witness public key is 32 bytes")

    @property
    def key_hash(self) -> bytes:
        return cosignature_key_hash(self.name, self.public_key)

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise InputError("witness key must read <name>+<8 hex digits>+<base64 key>")
        material = unb64(parts[2], "witness key")
        if len(material) == 33 and material[0] == ALG_ED25519:
            raise InputError(
                "this is a note signing key (type 0x01), not a witness cosignature key (type 0x04)",
                fix="use the vkey the witness prints (`clawql-secrets audit witness init`)",
            )
        if len(material) != 33 or material[0] != ALG_COSIGNATURE_V1:
            raise InputError("witness key is not an Ed25519 cosignature (type 0x04) key")
        key = cls(parts[0], material[1:])
        if key.key_hash.hex() != parts[1]:
            raise InputError("witness key hash does not match its name and key")
        return key

    def __str__(self) -> str:
        material = bytes([ALG_COSIGNATURE_V1]) + self.public_key
        return f"{self.name}+{self.key_hash.hex()}+{b64(material)}"

    def matches(self, signature: NoteSignature) -> bool:
        """True if the line claims to be by this key (name and key hash, as signed-note says)."""
        return signature.key_name == self.name and signature.key_hash == self.key_hash

    def verify(self, checkpoint_body: bytes, signature: NoteSignature) -> int:
        """The timestamp of ``signature`` if it is this key's cosignature of the body; else raise.

        Raises ``SignatureError`` (an ``IntegrityError``): a line that names
        this key but does not verify is a forgery or a corruption.
        """
        if not self.matches(signature):
            raise SignatureError(f"signature line is not by witness key {self.name!r}")
        blob = signature.signature
        if len(blob) != _TIMESTAMP + _ED25519_SIGNATURE:
            raise SignatureError(
                f"cosignature by {self.name!r} is {len(blob)} bytes, "
                f"not {_TIMESTAMP + _ED25519_SIGNATURE} (timestamp + Ed25519 signature)"
            )
        timestamp = int.from_bytes(blob[:_TIMESTAMP], "big")
        if timestamp > MAX_TIMESTAMP:
            raise SignatureError(f"cosignature by {self.name!r} has a timestamp above 2^63-1")
        message = cosigned_message(checkpoint_body, timestamp)
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(blob[_TIMESTAMP:], message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"cosignature by witness {self.name!r} does not verify") from exc
        return timestamp


class WitnessSigner:
    """The witness's Ed25519 private key.

    Its key string (and key file) is the Go ``note`` signer format,
    ``PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>``, as
    ``golang.org/x/mod/sumdb/note.GenerateKey`` writes it and
    transparency-dev's ``NewSignerForCosignatureV1`` reads it for a witness; the
    hash in the string is the type-0x01 hash of that format, while the
    cosignatures carry the type-0x04 hash (``witness_key().key_hash``). The
    same file format as ``Ed25519Signer``'s, but never use one key for both a
    log and a witness: a witness key signs only cosignatures.
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self._name = name
        self._key = private_key

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def generate(cls, name: str) -> WitnessSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key_string(cls, text: str) -> WitnessSigner:
        """Parse the key string; errors describe the format, never the key material."""
        return cls(*parse_private_key_string(text, "witness key"))

    @classmethod
    def from_file(cls, path: Path) -> WitnessSigner:
        """Load the key file; refuse a symlink, a non-file, or one group/others can read.

        The mode is checked on the opened descriptor, so the file checked is
        the file read.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"witness key file {path} does not exist",
                fix="create it with `clawql-secrets audit witness init --config FILE`",
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"cannot open witness key file {path} ({exc.strerror}; symlinks are refused)"
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"witness key file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"witness key file {path} is accessible to group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})",
                    fix=f"chmod 600 {path}",
                )
            raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read witness key file {path}") from exc
        finally:
            os.close(fd)
        if len(raw) > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"witness key file {path} is too large to be a key")
        try:
            return cls.from_key_string(raw.decode("ascii"))
        except (InputError, UnicodeDecodeError) as exc:
            detail = exc.message if isinstance(exc, InputError) else "not ASCII"
            raise ConfigError(f"witness key file {path} is malformed: {detail}") from exc

    def key_string(self) -> str:
        """The private key in Go ``note`` form. Secret: write it only to a 0600 file."""
        return private_key_string(self._name, self._key)

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def witness_key(self) -> WitnessKey:
        return WitnessKey(self._name, self.public_key_bytes())

    def cosign(self, checkpoint_body: bytes, timestamp: int) -> NoteSignature:
        """The cosignature line of ``checkpoint_body`` at ``timestamp`` (POSIX seconds).

        The body must parse as a checkpoint: a witness key signs nothing else,
        so it cannot be made to sign arbitrary text that some other protocol
        might accept.
        """
        Checkpoint.parse(checkpoint_body)
        signature = self._key.sign(cosigned_message(checkpoint_body, timestamp))
        return NoteSignature(
            self._name,
            cosignature_key_hash(self._name, self.public_key_bytes()),
            timestamp.to_bytes(_TIMESTAMP, "big") + signature,
        )

    def __repr__(self) -> str:
        return f"WitnessSigner({self._name!r})"


def _as_note(note: bytes | SignedNote) -> SignedNote:
    return note if isinstance(note, SignedNote) else SignedNote.parse(note)


def cosignature_timestamp(note: bytes | SignedNote, key: WitnessKey) -> int | None:
    """The timestamp of ``key``'s valid cosignature on the note's checkpoint.

    ``None`` if no signature line carries the key's name and key hash (lines of
    other keys are ignored, as signed-note requires); ``IntegrityError`` if
    such a line is there but does not verify, or if there are two of them
    (ambiguous: a witness cosigns a checkpoint once per note).
    """
    parsed = _as_note(note)
    mine = [s for s in parsed.signatures if key.matches(s)]
    if not mine:
        return None
    if len(mine) > 1:
        raise SignatureError(f"note carries {len(mine)} cosignatures by witness {key.name!r}")
    return key.verify(parsed.text, mine[0])


def check_witnesses(note: bytes, keys: Sequence[WitnessKey], threshold: int) -> dict[str, int]:
    """The witnesses (name -> timestamp) that validly cosigned, if at least ``threshold`` did.

    Fails closed: no keys, a threshold below 1 or above the number of keys, two
    keys with one name or one public key (which would let one cosignature
    count twice) are a ``ConfigError``; too few valid cosignatures is an
    ``IntegrityError`` naming the missing witnesses; a line that names a
    configured witness and does not verify is an ``IntegrityError`` too.
    """
    # 1. The policy itself can be met and cannot be gamed.
    if not keys:
        raise ConfigError("no witness keys configured: a checkpoint cannot be checked")
    if isinstance(threshold, bool) or not 1 <= threshold <= len(keys):
        raise ConfigError(
            f"witness threshold {threshold} must be between 1 and the {len(keys)} configured keys"
        )
    if len({k.name for k in keys}) != len(keys):
        raise ConfigError("two witness keys share a name")
    if len({k.public_key for k in keys}) != len(keys):
        raise ConfigError(
            "one public key is configured for two witnesses: one cosignature would count twice"
        )
    # 2. Each configured witness's line, if any, verifies over the note text.
    parsed = SignedNote.parse(note)
    cosigned: dict[str, int] = {}
    for key in keys:
        timestamp = cosignature_timestamp(parsed, key)
        if timestamp is not None:
            cosigned[key.name] = timestamp
    # 3. Enough of them did.
    if len(cosigned) < threshold:
        missing = sorted(k.name for k in keys if k.name not in cosigned)
        raise SignatureError(
            f"checkpoint has {len(cosigned)} of the {threshold} witness cosignatures required; "
            f"missing: {', '.join(missing)}"
        )
    return cosigned


def add_cosignatures(note: bytes, lines: Sequence[NoteSignature]) -> bytes:
    """``note`` with ``lines`` appended after its signatures, re-serialised.

    A line whose key (name and key hash, the identity signed-note gives a
    key) already signed the note is dropped, so adding a witness's answer
    twice changes nothing. Lines are not verified here: verify with
    ``cosignature_timestamp`` or ``check_witnesses``.
    """
    parsed = SignedNote.parse(note)
    signatures = list(parsed.signatures)
    seen = {(s.key_name, s.key_hash) for s in signatures}
    for line in lines:
        if (line.key_name, line.key_hash) not in seen:
            seen.add((line.key_name, line.key_hash))
            signatures.append(line)
    if len(signatures) > MAX_SIGNATURES:
        raise InputError(f"a signed note holds at most {MAX_SIGNATURES} signatures")
    out = SignedNote(parsed.text, tuple(signatures)).to_bytes()
    SignedNote.parse(out)  # every added line must be one a verifier can read back
    return out
