"""C2SP tlog-checkpoints carried in C2SP signed notes, signed with Ed25519.

A checkpoint commits to one tree head: ``<origin>\\n<size>\\n<base64 root>\\n``
(C2SP tlog-checkpoint). It travels as a signed note (C2SP signed-note): the
text, a blank line, then one ``— <key name> <base64(key hash || signature)>``
line per signer, where the 4-byte key hash is the first bytes of
SHA-256(key name || 0x0A || 0x01 || Ed25519 public key). Using the standard
forms lets any third-party checkpoint tool or witness check our log.

Parsing is strict and total: every byte has one meaning, numbers and base64
are canonical, and anything else is an ``InputError`` naming what is wrong, so
a flipped bit can never yield a different but still accepted checkpoint.
Signing goes through the small ``Signer`` protocol so the Ed25519 file key
used in tests and a PKCS#11 EdDSA key in the HSM are interchangeable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clawql_secrets.audit import merkle
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import BackendError, ConfigError, InputError

ALG_ED25519 = 0x01
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "  # em dash, space
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_MAX_SIZE = 2**63 - 1


class Signer(Protocol):
    """What signing a note needs; the HSM signer implements the same three members."""

    @property
    def key_name(self) -> str: ...

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message``."""
        ...


def key_hash(name: str, public_key: bytes) -> bytes:
    """The C2SP signed-note key hash of an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Strict standard base64: padded, no stray characters, canonical trailing bits."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InputError(f"{what} is not valid base64") from exc
    if b64(data) != text:
        raise InputError(f"{what} is not canonical base64")
    return data


def _check_key_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() or _is_control(c) for c in name):
        raise InputError(f"{name!r} is not a valid key name (non-empty, no spaces, no '+')")


def _is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc"


def _check_text(text: str) -> None:
    """Note text: non-empty lines, each ended by a newline, no other control codes."""
    if not text.endswith("\n") or text.startswith("\n") or "\n\n" in text:
        raise InputError("note text must be non-empty lines, each ending with a newline")
    if any(_is_control(c) and c != "\n" for c in text):
        raise InputError("note text contains control characters")


@dataclass(frozen=True)
class Checkpoint:
    """One tree head of one log, as C2SP tlog-checkpoint defines its body."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in (self.origin, *self.extensions):
            if not line or "\n" in line or any(_is_control(c) for c in line):
                raise InputError("checkpoint lines must be non-empty text without control codes")
        if not 0 <= self.size <= _MAX_SIZE:
            raise InputError(f"checkpoint tree size {self.size} is out of range")
        if len(self.root) != merkle.HASH_SIZE:
            raise InputError("checkpoint root must be a 32-byte SHA-256 hash")

    def body(self) -> bytes:
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(f"{line}\n" for line in lines).encode()

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        """Parse a checkpoint body (the note text) strictly."""
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("checkpoint is not UTF-8") from exc
        if not decoded.endswith("\n"):
            raise InputError("checkpoint must end with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3:
            raise InputError("checkpoint needs origin, tree size and root lines")
        origin, size, root, *extensions = lines
        if not _SIZE.fullmatch(size):
            raise InputError(f"checkpoint tree size {size!r} is not a canonical decimal")
        return cls(origin, int(size), unb64(root, "checkpoint root"), tuple(extensions))


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note."""

    key_name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.key_name} {b64(self.key_hash + self.signature)}\n"


@dataclass(frozen=True)
class SignedNote:
    """A C2SP signed note: UTF-8 text plus at least one signature line."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.signatures).encode()

    @classmethod
    def parse(cls, data: bytes) -> SignedNote:
        """Split and check a note without judging its signatures."""
        if len(data) > MAX_NOTE_BYTES:
            raise InputError(f"signed note exceeds {MAX_NOTE_BYTES} bytes")
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("signed note is not UTF-8") from exc
        split = decoded.rfind("\n\n")
        if split < 0:
            raise InputError("signed note has no signature block")
        text, block = decoded[: split + 1], decoded[split + 2 :]
        _check_text(text)
        if any(_is_control(c) and c != "\n" for c in block) or not block.endswith("\n"):
            raise InputError("signature block must be lines of text ending with a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise InputError(f"signed note has more than {MAX_SIGNATURES} signatures")
        signatures = []
        for number, line in enumerate(lines, 1):
            fields = line[len(_SIG_PREFIX) :].split(" ")
            if not line.startswith(_SIG_PREFIX) or len(fields) != 2:
                raise InputError(f"signature line {number} is not '— <name> <base64>'")
            _check_key_name(fields[0])
            blob = unb64(fields[1], f"signature line {number}")
            if len(blob) < 5:
                raise InputError(f"signature line {number} is too short")
            signatures.append(NoteSignature(fields[0], blob[:4], blob[4:]))
        return cls(text.encode(), tuple(signatures))


@dataclass(frozen=True)
class VerifierKey:
    """A C2SP verifier key: ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""

    name: str
    key_hash: bytes
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> VerifierKey:
        _check_key_name(name)
        if len(public_key) != 32:
            raise InputError("an Ed25519 public key is 32 bytes")
        return cls(name, key_hash(name, public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise InputError("verifier key must read <name>+<8 hex digits>+<base64 key>")
        key = unb64(parts[2], "verifier key")
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise InputError("verifier key is not an Ed25519 (type 0x01) key")
        verifier = cls.from_public_key(parts[0], key[1:])
        if verifier.key_hash.hex() != parts[1]:
            raise InputError("verifier key hash does not match its name and key")
        return verifier

    def __str__(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{b64(bytes([ALG_ED25519]) + self.public_key)}"

    def open(self, data: bytes) -> bytes:
        """Return the text of a note this key signed, or raise.

        Signatures by other keys are ignored, as C2SP prescribes (witnesses may
        cosign); two signatures by this key are refused as ambiguous.
        """
        note = SignedNote.parse(data)
        mine = [
            s for s in note.signatures if s.key_name == self.name and s.key_hash == self.key_hash
        ]
        if not mine:
            raise SignatureError(f"note carries no signature by key {self.name!r} ({self})")
        if len(mine) > 1:
            raise SignatureError(f"note carries {len(mine)} signatures by key {self.name!r}")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(mine[0].signature, note.text)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"signature by key {self.name!r} does not verify") from exc
        return note.text


def parse_private_key_string(text: str, what: str) -> tuple[str, Ed25519PrivateKey]:
    """Name and key of a Go ``note`` private key string,
    ``PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>`` (log and witness keys alike).

    Errors describe the format as ``what``, never the key material.
    """
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _HEX8.fullmatch(parts[3]):
        raise InputError(f"{what} must read PRIVATE+KEY+<name>+<hash>+<base64 key>")
    try:
        seed = base64.b64decode(parts[4].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InputError(f"{what} material is not valid base64") from exc
    if len(seed) != 33 or seed[0] != ALG_ED25519:
        raise InputError(f"{what} is not an Ed25519 (type 0x01) key")
    key = Ed25519PrivateKey.from_private_bytes(seed[1:])
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if key_hash(parts[2], public).hex() != parts[3]:
        raise InputError(f"{what} hash does not match its name and key")
    return parts[2], key


def private_key_string(name: str, key: Ed25519PrivateKey) -> str:
    """The Go ``note`` form of ``key``. Secret: write it only to a 0600 file."""
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seed = bytes([ALG_ED25519]) + key.private_bytes_raw()
    return f"PRIVATE+KEY+{name}+{key_hash(name, public).hex()}+{b64(seed)}"


class Ed25519Signer:
    """An Ed25519 key held in memory: for tests and development, not production.

    Its key string is the Go ``note`` signer format,
    ``PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>``, so keys move
    between this project and standard checkpoint tools.
    """

    def __init__(self, key_name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(key_name)
        self._name = key_name
        self._key = private_key

    @property
    def key_name(self) -> str:
        return self._name

    @classmethod
    def generate(cls, key_name: str) -> Ed25519Signer:
        return cls(key_name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key_string(cls, text: str) -> Ed25519Signer:
        return cls(*parse_private_key_string(text, "signer key"))

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read signing key file {path}") from exc
        try:
            return cls.from_key_string(text)
        except InputError as exc:
            raise ConfigError(f"signing key file {path} is malformed: {exc.message}") from exc

    def key_string(self) -> str:
        """The private key in Go ``note`` form. Secret: write it only to a 0600 file."""
        return private_key_string(self._name, self._key)

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verifier_key(self) -> VerifierKey:
        return VerifierKey.from_public_key(self._name, self.public_key_bytes())

    def __repr__(self) -> str:
        return f"Ed25519Signer({self._name!r})"


def sign_note(text: bytes, signers: Sequence[Signer]) -> bytes:
    """Sign ``text`` with every signer; each signature is checked before it is used.

    The self-check catches a signer (an HSM, say) that signs with a key other
    than the one it advertises, before a checkpoint nobody can verify reaches
    write-once storage.
    """
    if not signers:
        raise InputError("a signed note needs at least one signer")
    try:
        _check_text(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError("note text is not UTF-8") from exc
    signatures = []
    for signer in signers:
        public = signer.public_key_bytes()
        verifier = VerifierKey.from_public_key(signer.key_name, public)
        signature = signer.sign(text)
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, text)
        except (InvalidSignature, ValueError) as exc:
            raise BackendError(
                f"signer {signer.key_name!r} produced a signature its own public key rejects",
                fix="check the signing key (HSM object, key file) matches the published verifier",
            ) from exc
        signatures.append(NoteSignature(verifier.name, verifier.key_hash, signature))
    return SignedNote(text, tuple(signatures)).to_bytes()


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> bytes:
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(data: bytes, verifier: VerifierKey, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in ``data`` if ``verifier`` signed it (and it is for ``origin``)."""
    checkpoint = Checkpoint.parse(verifier.open(data))
    if origin is not None and checkpoint.origin != origin:
        raise SignatureError(
            f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}: it comes from elsewhere"
        )
    return checkpoint
