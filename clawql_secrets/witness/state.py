"""The witness's memory of each log, and the decision procedure of ``add-checkpoint``.

Pure: bytes and values in, a cosignature and the new state out, or a refusal
raised. What to do with the state (persist it atomically, under a lock per
origin, before answering) is ``store``'s and ``server``'s job; everything that
decides whether a checkpoint is cosigned is here, in the order
c2sp.org/tlog-witness prescribes, so it can be read against the spec and
tested without a socket.

Request body (tlog-witness, "add-checkpoint")::

    old <size>\\n                 decimal, no leading zeroes
    <base64 hash>\\n              0..63 consistency proof lines (RFC 9162 §2.1.4)
    \\n
    <signed checkpoint note>     c2sp.org/tlog-checkpoint in c2sp.org/signed-note

Each refusal carries the HTTP status the spec assigns to it (``http_status``).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clawql_secrets.audit import merkle
from clawql_secrets.audit.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteSignature,
    SignedNote,
    VerifierKey,
)
from clawql_secrets.audit.cosignature import WitnessSigner
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import ConfigError, InputError, IntegrityError

MAX_PROOF_LINES = 63
"""tlog-witness: a client MUST NOT send more (a 2^63-leaf tree needs no more)."""

MAX_REQUEST_BYTES = MAX_NOTE_BYTES + 8 * 1024
"""A note of the largest size we accept plus the old size line and 63 proof lines."""

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_SIZE = 2**63 - 1


# -- refusals, each with the status tlog-witness gives it -----------------------


class MalformedRequest(InputError):
    """400: the body is not an add-checkpoint request, or old size > checkpoint size."""

    http_status: ClassVar[int] = 400


class UnknownLog(InputError):
    """404: the witness is not configured for the checkpoint's origin."""

    http_status: ClassVar[int] = 404


class UntrustedCheckpoint(SignatureError):
    """403: no signature by a key trusted for the origin verifies (or one of them fails)."""

    http_status: ClassVar[int] = 403


class WitnessConflict(InputError):
    """409: the old size is not the size the witness last cosigned (or a same-size fork).

    ``known_size`` is the size the witness holds: a log that is merely behind
    retries with it and the matching consistency proof. ``fork`` marks the
    case where the log signed another root for the size the witness holds:
    evidence of misbehaviour, not a stale client.
    """

    http_status: ClassVar[int] = 409

    def __init__(self, known_size: int, message: str | None = None, *, fork: bool = False) -> None:
        super().__init__(
            message or f"the witness last cosigned tree size {known_size}",
            fix=f"resend with 'old {known_size}' and a consistency proof from that size",
        )
        self.known_size = known_size
        self.fork = fork


class InconsistentCheckpoint(IntegrityError):
    """422: the consistency proof does not show the cosigned tree is a prefix of the new one.

    Either the proof is bad or the log forked or rewrote its history; the
    witness cannot tell which and cosigns neither.
    """

    http_status: ClassVar[int] = 422


# -- values ----------------------------------------------------------------------


@dataclass(frozen=True)
class LogPolicy:
    """A log the witness serves: its origin line and the keys that may sign for it.

    Any of the keys may sign, so a log key transition is configured by listing
    the old and the new key for a while.
    """

    origin: str
    keys: tuple[VerifierKey, ...]

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if not self.keys:
            raise ConfigError(f"log {self.origin!r} has no verifier key: nothing could be trusted")


@dataclass(frozen=True)
class LogState:
    """The tree head the witness last cosigned for one origin."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if isinstance(self.size, bool) or not 0 <= self.size <= _MAX_SIZE:
            raise InputError(f"tree size {self.size} is out of range")
        if len(self.root) != merkle.HASH_SIZE:
            raise InputError("a tree root is a 32-byte SHA-256 hash")
        if self.size == 0 and self.root != merkle.EMPTY_ROOT:
            raise InputError("the empty tree's root is SHA-256 of nothing (RFC 9162)")


@dataclass(frozen=True)
class AddCheckpointRequest:
    """One add-checkpoint request: old size, consistency proof, signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes

    def __post_init__(self) -> None:
        if isinstance(self.old_size, bool) or not 0 <= self.old_size <= _MAX_SIZE:
            raise InputError(f"old size {self.old_size} is out of range")
        if len(self.proof) > MAX_PROOF_LINES:
            raise InputError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
        if any(len(h) != merkle.HASH_SIZE for h in self.proof):
            raise InputError("consistency proof hashes are 32-byte SHA-256 digests")
        if not self.note.endswith(b"\n"):
            raise InputError("the checkpoint note must end with a newline")

    @classmethod
    def build(cls, old_size: int, proof: Sequence[bytes], note: bytes) -> AddCheckpointRequest:
        return cls(old_size, tuple(proof), note)

    def to_bytes(self) -> bytes:
        head = f"old {self.old_size}\n" + "".join(
            base64.b64encode(h).decode("ascii") + "\n" for h in self.proof
        )
        return head.encode("ascii") + b"\n" + self.note

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Parse strictly; every way to be malformed is a ``MalformedRequest`` (400)."""
        if len(body) > MAX_REQUEST_BYTES:
            raise MalformedRequest(f"request body exceeds {MAX_REQUEST_BYTES} bytes")
        head, sep, note = body.partition(b"\n\n")
        if not sep:
            raise MalformedRequest("no empty line between the proof and the checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError as exc:
            raise MalformedRequest("old size and proof lines must be ASCII") from exc
        size = lines[0].removeprefix("old ")
        if not lines[0].startswith("old ") or not _SIZE.fullmatch(size) or int(size) > _MAX_SIZE:
            raise MalformedRequest("the first line must be 'old <size>', a canonical decimal")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise MalformedRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
        proof = []
        for number, line in enumerate(lines[1:], 1):
            try:
                digest = base64.b64decode(line.encode("ascii"), validate=True)
            except binascii.Error as exc:
                raise MalformedRequest(f"proof line {number} is not base64") from exc
            if len(digest) != merkle.HASH_SIZE or base64.b64encode(digest).decode() != line:
                raise MalformedRequest(f"proof line {number} is not a canonical base64 hash")
            proof.append(digest)
        if not note.endswith(b"\n"):
            raise MalformedRequest("the checkpoint note must end with a newline")
        return cls(int(size), tuple(proof), note)


@dataclass(frozen=True)
class Cosigned:
    """An accepted checkpoint: the line to answer with and the state to persist first."""

    checkpoint: Checkpoint
    signature: NoteSignature
    state: LogState

    def response_body(self) -> bytes:
        """The 200 body: one note signature line (tlog-witness)."""
        return self.signature.line().encode("utf-8")


def origin_of(request: AddCheckpointRequest) -> str:
    """The note's first line, which names the log; it selects the keys to check it with."""
    return request.note.split(b"\n", 1)[0].decode("utf-8", errors="replace")


def decide(
    request: AddCheckpointRequest,
    policies: Mapping[str, LogPolicy],
    recorded: LogState | None,
    signer: WitnessSigner,
    timestamp: int,
) -> Cosigned:
    """Cosign ``request``'s checkpoint, or raise the refusal tlog-witness prescribes.

    ``recorded`` is the state held for the request's origin (None: never
    cosigned, which tlog-witness treats as size 0). The caller must hold that
    origin's lock from reading ``recorded`` until the returned state is
    persisted, or two requests could both pass step 5 and roll the state back.
    """
    origin = origin_of(request)
    if recorded is not None and recorded.origin != origin:
        raise InputError("the recorded state passed in is for another origin")
    # 1. The origin is one this witness serves (404).
    policy = policies.get(origin)
    if policy is None:
        raise UnknownLog(f"this witness does not serve log {origin[:200]!r}")
    # 2. The note is signed by a key trusted for the origin (403). Lines by
    #    other keys (other witnesses' cosignatures) are ignored; a line by a
    #    trusted key that does not verify rejects the note (signed-note).
    try:
        note = SignedNote.parse(request.note)
    except InputError as exc:
        raise MalformedRequest(f"the checkpoint is not a signed note: {exc.message}") from exc
    _check_log_signature(note, policy)
    # 3. The signed text is a checkpoint (400); an empty tree has the empty root (422).
    try:
        checkpoint = Checkpoint.parse(note.text)
    except InputError as exc:
        raise MalformedRequest(f"the signed note is not a checkpoint: {exc.message}") from exc
    if checkpoint.size == 0 and checkpoint.root != merkle.EMPTY_ROOT:
        raise InconsistentCheckpoint("a checkpoint of size 0 must carry the empty tree's root")
    # 4. The old size is not beyond the checkpoint (400).
    if request.old_size > checkpoint.size:
        raise MalformedRequest(
            f"old size {request.old_size} is larger than the checkpoint's size {checkpoint.size}"
        )
    # 5. The old size is the size this witness last cosigned (409, body: that size).
    known = recorded if recorded is not None else LogState(origin, 0, merkle.EMPTY_ROOT)
    if request.old_size != known.size:
        raise WitnessConflict(
            known.size,
            f"old size {request.old_size} is not the size the witness last cosigned "
            f"({known.size}) for {origin!r}",
        )
    # 6. Same size: same root, or the log signed two trees of one size (409).
    if checkpoint.size == known.size and checkpoint.root != known.root:
        raise WitnessConflict(
            known.size,
            f"the log signed a different root for size {known.size} than the one cosigned: a fork",
            fork=True,
        )
    # 7. The proof shows the cosigned tree is a prefix of the new one (422).
    #    From size 0 (nothing cosigned) the proof must be empty (tlog-witness).
    try:
        merkle.verify_consistency(
            known.size, checkpoint.size, request.proof, known.root, checkpoint.root
        )
    except IntegrityError as exc:
        raise InconsistentCheckpoint(f"for {origin!r}: {exc.message}") from exc
    # 8. Cosign; the caller persists ``state`` before it answers.
    return Cosigned(
        checkpoint,
        signer.cosign(note.text, timestamp),
        LogState(origin, checkpoint.size, checkpoint.root),
    )


def _check_log_signature(note: SignedNote, policy: LogPolicy) -> None:
    verified = 0
    for key in policy.keys:
        for line in note.signatures:
            if line.key_name != key.name or line.key_hash != key.key_hash:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(key.public_key).verify(line.signature, note.text)
            except (InvalidSignature, ValueError) as exc:
                raise UntrustedCheckpoint(
                    f"the signature by log key {key.name!r} does not verify"
                ) from exc
            verified += 1
    if verified == 0:
        raise UntrustedCheckpoint(
            f"the checkpoint carries no signature by a key trusted for {policy.origin!r}"
        )


def _check_origin(origin: str) -> None:
    if not origin or any(unicodedata.category(c) == "Cc" for c in origin):
        raise InputError(f"{origin[:200]!r} is not a checkpoint origin line")
