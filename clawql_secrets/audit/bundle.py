"""Offline proof bundles: one audit entry, its inclusion proof and the signed checkpoint.

A bundle is a C2SP tlog-proof (https://c2sp.org/tlog-proof, ``.tlog-proof``)
whose ``extra`` line carries the entry:

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry: its canonical JSON leaf bytes, as stored>
    index <0-based leaf index, canonical decimal>
    <base64 SHA-256 proof hash, from the leaf's sibling up to the root's child>
    ...
    <empty line>
    <the checkpoint's signed note, verbatim: body, blank line, log signature and
     witness cosignature lines>

Why the ``extra`` line and not an envelope around a plain tlog-proof: the spec
defines it as "optional opaque extra data, with application-specific meaning",
unauthenticated, for "additional data necessary to reconstruct the record
hash". The entry is exactly that: its record hash is SHA-256(0x00 || entry)
(RFC 9162 leaf hash), so it is trusted only once that hash is proven, never
implicitly. The file stays a standard tlog-proof that any conforming tool can
parse, there is one artifact per entry and no second format to document, and
the stream needs no unauthenticated envelope field: it is the suffix of the
checkpoint's signed origin line (``layout.origin``). The entry is already
redacted when stored, so the bundle reveals nothing the log does not hold.

Parsing is strict, as for checkpoints: bounded size, canonical base64 and
decimals, one meaning per byte, and a parsed bundle must re-serialise to the
same bytes. What a bundle is held to is a ``TrustPolicy``: the trusted log
keys (single keys, or the log's key set with its validity ranges), the origin
prefix, and optionally witness keys with a threshold. ``check_bundle``
returns ``None`` or raises; ``report`` runs the same checks and never raises,
for display (which witnesses cosigned, and when). Cosignatures are C2SP
tlog-cosignature/v1, checked by ``audit.cosignature``. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clawql_secrets.audit import layout, merkle
from clawql_secrets.audit.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    SignedNote,
    VerifierKey,
    b64,
    unb64,
)
from clawql_secrets.audit.cosignature import WitnessKey, check_witnesses
from clawql_secrets.audit.errors import ProofError, SignatureError
from clawql_secrets.audit.keyset import KeySet, as_keyset
from clawql_secrets.audit.layout import DEFAULT_LIMITS, AuditLimits
from clawql_secrets.audit.verify import InclusionProof
from clawql_secrets.errors import ClawQLError, ConfigError, InputError

HEADER = "c2sp.org/tlog-proof@v1"
EXTENSION = ".tlog-proof"
MAX_PROOF_HASHES = 63  # a tree of at most 2**63 - 1 leaves is at most 63 levels deep
_INDEX = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_INDEX = 2**63 - 2
_HASH_LINE = 45  # 44 base64 characters and a newline


def max_bundle_bytes(limits: AuditLimits = DEFAULT_LIMITS) -> int:
    """The largest bundle an entry within ``limits`` can make: checked before parsing."""
    entry_b64 = 4 * -(-limits.max_entry_bytes // 3)
    head = len(HEADER) + 1 + len("extra ") + entry_b64 + 1 + len("index ") + 19 + 1
    return head + MAX_PROOF_HASHES * _HASH_LINE + 1 + MAX_NOTE_BYTES


@dataclass(frozen=True)
class Bundle:
    """The parts of a bundle; ``checkpoint`` is the signed note's bytes, verbatim."""

    index: int
    entry: bytes
    path: tuple[bytes, ...]
    checkpoint: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.index <= _MAX_INDEX:
            raise InputError(f"bundle index {self.index} is out of range")
        if not self.entry or b"\n" in self.entry:
            raise InputError("a bundle's entry is one non-empty line, as the log stores it")
        if len(self.path) > MAX_PROOF_HASHES:
            raise InputError(f"inclusion proof has more than {MAX_PROOF_HASHES} hashes")
        if any(len(h) != merkle.HASH_SIZE for h in self.path):
            raise InputError("every inclusion proof hash is a 32-byte SHA-256 hash")

    @classmethod
    def from_proof(cls, proof: InclusionProof) -> Bundle:
        """The bundle form of a proof ``verify.prove`` or ``query`` made."""
        return cls(proof.index, proof.entry, proof.path, proof.checkpoint)

    def to_bytes(self) -> bytes:
        lines = [
            HEADER,
            f"extra {b64(self.entry)}",
            f"index {self.index}",
            *(b64(h) for h in self.path),
        ]
        return "".join(f"{line}\n" for line in lines).encode("ascii") + b"\n" + self.checkpoint

    @classmethod
    def parse(cls, data: bytes, *, limits: AuditLimits = DEFAULT_LIMITS) -> Bundle:
        """Split and check a bundle without judging its signatures or proof."""
        limit = max_bundle_bytes(limits)
        if len(data) > limit:
            raise InputError(f"bundle of {len(data)} bytes exceeds the {limit}-byte limit")
        # The proof lines are never empty, so the first blank line ends them.
        split = data.find(b"\n\n")
        if split < 0:
            raise InputError("bundle has no empty line before its checkpoint")
        head, note = data[:split], data[split + 2 :]
        if not head.isascii():
            raise InputError("bundle proof lines are not ASCII")
        lines = head.decode("ascii").split("\n")
        if lines[0] != HEADER:
            raise InputError(f"bundle does not start with the line {HEADER!r}")
        if len(lines) < 2 or not lines[1].startswith("extra "):
            raise InputError("bundle carries no entry: its second line must be 'extra <base64>'")
        entry = _unb64(lines[1][len("extra ") :], "the entry ('extra' line)")
        if len(entry) > limits.max_entry_bytes:
            raise InputError(f"entry of {len(entry)} bytes exceeds {limits.max_entry_bytes}")
        if len(lines) < 3 or not lines[2].startswith("index "):
            raise InputError("bundle has no 'index <n>' line after its entry")
        index = lines[2][len("index ") :]
        if not _INDEX.fullmatch(index) or int(index) > _MAX_INDEX:
            raise InputError(f"bundle index {index!r} is not a canonical decimal in range")
        hashes = lines[3:]
        if len(hashes) > MAX_PROOF_HASHES:
            raise InputError(f"inclusion proof has more than {MAX_PROOF_HASHES} hashes")
        path = []
        for number, line in enumerate(hashes, 1):
            value = _unb64(line, f"proof hash {number}")
            if len(value) != merkle.HASH_SIZE:
                raise InputError(f"proof hash {number} is not a 32-byte SHA-256 hash")
            path.append(value)
        try:
            Checkpoint.parse(SignedNote.parse(note).text)
        except InputError as exc:
            raise InputError(f"bundle checkpoint: {exc.message}") from exc
        bundle = cls(int(index), entry, tuple(path), note)
        if bundle.to_bytes() != data:  # unreachable if the checks above are complete
            raise InputError("bundle is not in canonical form")
        return bundle


@dataclass(frozen=True)
class BundleReport:
    """What ``report`` found, for display; ``ok`` only when every check held."""

    problem: str | None = None
    stream: str | None = None
    index: int | None = None
    tree_size: int | None = None
    root: bytes | None = None
    log_key: str | None = None
    entry_kind: str | None = None
    request_id: str | None = None
    time: str | None = None
    witnesses: Mapping[str, int] = field(default_factory=dict)
    threshold: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.stream is not None

    def lines(self) -> list[str]:
        """Human-readable lines; the last is the verdict."""
        if not self.ok:
            return [f"FAIL: {self.problem or 'nothing was checked'}", "NOT verified"]
        root = b64(self.root) if self.root is not None else "?"
        out = [
            f"entry {self.index} of stream {self.stream!r} is in the log at tree size "
            f"{self.tree_size} (root {root})",
            f"checkpoint signed by log key {self.log_key!r}",
            f"entry: kind {_shown(self.entry_kind)}, request id {_shown(self.request_id)}, "
            f"time {_shown(self.time)}",
        ]
        if self.threshold is None:
            out.append("witnesses: none checked (no witness keys given)")
        else:
            out.append(f"witnesses: {len(self.witnesses)} cosigned, {self.threshold} required")
            for name, when in sorted(self.witnesses.items()):
                out.append(f"  {name} cosigned at {_utc(when)} ({when})")
        out.append("verified")
        return out


@dataclass(frozen=True)
class TrustPolicy:
    """What a bundle is checked against: the spec's "fixed set of data".

    ``log_keys`` are trust roots, any of which may have signed the checkpoint:
    single keys (a log that changed keys: old and new), or the log's key set
    (``keyset``), whose validity ranges then hold. ``stream`` pins the log;
    otherwise any stream under ``origin_prefix`` is accepted and named.
    Witnesses are checked when keys are given; ``witness_threshold`` defaults
    to all of them.
    """

    log_keys: tuple[VerifierKey | KeySet, ...]
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
    stream: str | None = None
    witness_keys: tuple[WitnessKey, ...] = ()
    witness_threshold: int | None = None
    limits: AuditLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not self.log_keys:
            raise ConfigError("no log verifier key given: a bundle proves nothing without one")
        if self.stream is not None:
            layout.check_stream(self.stream)
        if self.witness_threshold is not None and not self.witness_keys:
            raise ConfigError("a witness threshold needs the witness keys to count")
        if self.witness_threshold is not None and not (
            1 <= self.witness_threshold <= len(self.witness_keys)
        ):
            raise ConfigError(
                f"witness threshold {self.witness_threshold} must be between 1 and the "
                f"{len(self.witness_keys)} witness keys given"
            )

    @property
    def threshold(self) -> int | None:
        """How many witnesses must cosign; None when no witness is checked."""
        if not self.witness_keys:
            return None
        return len(self.witness_keys) if self.witness_threshold is None else self.witness_threshold


def check_bundle(data: bytes, policy: TrustPolicy) -> None:
    """Return if ``data`` proves its entry is in a log ``policy`` trusts; else raise."""
    _check(data, policy)


def report(data: bytes, policy: TrustPolicy) -> BundleReport:
    """The checks of ``check_bundle``, collected for display; never raises."""
    try:
        return _check(data, policy)
    except ClawQLError as exc:
        return BundleReport(problem=exc.diagnostics())


def _check(data: bytes, policy: TrustPolicy) -> BundleReport:
    # 1. Parse strictly: size, lines, canonical base64 and decimals, the note's form.
    bundle = Bundle.parse(data, limits=policy.limits)
    # 2. The checkpoint is for the expected log (its origin names a stream under our
    #    prefix) and a trusted log key signed it, within that key's range if it retired.
    checkpoint, stream, signer = _open(bundle.checkpoint, policy)
    # 3. The entry's leaf hash reaches the signed root at that index (RFC 9162 §2.1.3.2).
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(bundle.entry), bundle.index, checkpoint.size, bundle.path,
            checkpoint.root,
        )  # fmt: skip
    except ProofError as exc:
        raise ProofError(
            f"the entry is not proven at index {bundle.index} of {checkpoint.origin!r} "
            f"(tree size {checkpoint.size}): {exc.message}"
        ) from exc
    # 4. Enough trusted witnesses cosigned this very note (C2SP tlog-cosignature/v1).
    witnesses: dict[str, int] = {}
    threshold = policy.threshold
    if threshold is not None:
        witnesses = check_witnesses(bundle.checkpoint, policy.witness_keys, threshold)
    kind, request_id, time = _summary(bundle.entry)
    return BundleReport(
        stream=stream,
        index=bundle.index,
        tree_size=checkpoint.size,
        root=checkpoint.root,
        log_key=signer,
        entry_kind=kind,
        request_id=request_id,
        time=time,
        witnesses=witnesses,
        threshold=threshold,
    )


def _open(note: bytes, policy: TrustPolicy) -> tuple[Checkpoint, str, str]:
    """The checkpoint a trusted log key signed for the expected log, its stream and signer.

    The origin is read first only to name the stream; each trust root's
    ``KeySet.open`` then checks it under the signature. A key set's ranges
    hold: a retired key cannot vouch for sizes past its range. Lines by keys
    we do not know (witnesses) are ignored, as C2SP signed-note says.
    """
    claimed = Checkpoint.parse(SignedNote.parse(note).text).origin
    name = _stream_of(claimed, policy.origin_prefix, policy.stream)
    origin = layout.origin(policy.origin_prefix, name)
    refused: list[str] = []
    for root in policy.log_keys:
        keys = as_keyset(root)
        try:
            checkpoint, index = keys.open(note, stream=name, origin=origin)
        except SignatureError as exc:
            refused.append(exc.message)
            continue
        return checkpoint, name, keys.epochs[index].key.name
    raise SignatureError(
        "the checkpoint is not signed by a trusted log key (signed by another key, the "
        "signature removed or altered, or outside the key's range): " + "; ".join(refused)
    )


def _stream_of(origin: str, prefix: str, stream: str | None) -> str:
    """The stream a checkpoint's origin names; checked against the signature by ``_open``."""
    if stream is not None:
        expected = layout.origin(prefix, stream)
        if origin != expected:
            raise SignatureError(f"checkpoint is for log {origin!r}, not {expected!r}")
        return stream
    name = origin.removeprefix(f"{prefix}/")
    try:
        if name == origin:
            raise InputError("no stream under the prefix")
        return layout.check_stream(name)
    except InputError as exc:
        raise SignatureError(
            f"checkpoint is for log {origin!r}, not a stream of {prefix!r}: it comes from elsewhere"
        ) from exc


def _summary(entry: bytes) -> tuple[str | None, str | None, str | None]:
    """Kind, request id and time of a proven entry, for display only."""
    try:
        doc: Any = json.loads(entry)
    except (ValueError, RecursionError):
        return None, None, None
    if not isinstance(doc, dict):
        return None, None, None
    kind = doc.get("kind")
    inner = doc.get("entry") if kind == "entry" else doc
    inner = inner if isinstance(inner, dict) else {}
    request = inner.get("request")
    rid = request.get("id") if isinstance(request, dict) else None
    time = inner.get("time")
    return (
        kind if isinstance(kind, str) else None,
        rid if isinstance(rid, str) else None,
        time if isinstance(time, str) else None,
    )


def _shown(text: str | None, limit: int = 120) -> str:
    """Entry text made safe for a terminal: no control or escape codes, bounded."""
    if not text:
        return "-"
    safe = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


def _utc(timestamp: int) -> str:
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "(out of range)"


def _unb64(text: str, what: str) -> bytes:
    """Strict canonical base64 (``checkpoint.unb64``) of something that is never empty."""
    data = unb64(text, what)
    if not data:
        raise InputError(f"{what} is empty")
    return data
