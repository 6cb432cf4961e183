"""Verify a shipped audit log from its WORM store, and prove entries in it.

``verify`` trusts nothing in the store: it recomputes every stream's Merkle
tree from the stored segments and holds each signed checkpoint against it, so
any change, deletion, reordering or truncation of stored data (invariant 6)
fails, with the first bad segment, entry range or checkpoint named. It returns
``None`` or raises; ``report`` runs the same checks per stream for display and
never raises. A store with no stream, or a stream with no signed checkpoint,
proves nothing and fails.

What the store alone cannot reveal is a history rewritten *and* re-signed
with the log key, or the newest segments deleted together with their
checkpoints. Both are caught by ``known`` tree heads kept outside the store
(a previous run, a witness, the Prometheus record): each must still describe a
prefix of the recomputed log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from clawql_secrets.audit import layout, merkle
from clawql_secrets.audit.checkpoint import Checkpoint, SignedNote, VerifierKey
from clawql_secrets.audit.errors import TamperError
from clawql_secrets.audit.keyset import KeySet, as_keyset
from clawql_secrets.audit.layout import DEFAULT_LIMITS, AuditLimits, SegmentName
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.audit.witnessing import Witnessed, WitnessPolicy, check_policy, cosigned_note
from clawql_secrets.errors import ClawQLError, InputError, IntegrityError

PROOF_FORMAT = "clawql-audit-inclusion-proof/1"


@dataclass(frozen=True)
class StreamState:
    """One stream as recomputed from the store, every checkpoint checked against it."""

    stream: str
    tree: MerkleTree
    segments: tuple[SegmentName, ...]
    checkpoints: tuple[Checkpoint, ...]
    notes: tuple[bytes, ...]

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None


def streams(store: WormStore) -> list[str]:
    """Every stream with at least one segment or checkpoint in the store."""
    names = store.list(f"{layout.SEGMENTS}/") + store.list(f"{layout.CHECKPOINTS}/")
    return sorted({s for s in map(layout.stream_of, names) if s is not None})


def replay_stream(
    store: WormStore,
    stream: str,
    verifier: VerifierKey | KeySet | None,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
    limits: AuditLimits = DEFAULT_LIMITS,
    require_covered: bool = True,
) -> StreamState:
    """Recompute ``stream`` and check it; raise ``TamperError`` naming the first fault.

    Faults are reported in log order, so the one named is the earliest.
    ``verifier=None`` skips signatures (only to produce proofs that a third
    party checks with the key); ``require_covered=False`` accepts entries after
    the last checkpoint (a shipper resuming after a crash between its writes).
    A ``KeySet`` accepts each checkpoint from the key whose range covers its
    size, and requires every retired key's last checkpoint (``keyset``).
    """
    origin = layout.origin(origin_prefix, stream)
    keys = None if verifier is None else as_keyset(verifier)
    signed_by: dict[int, int] = {}

    def fail(location: str, message: str) -> TamperError:
        return TamperError(message, stream=stream, location=location)

    # 1. Every object under the stream's prefixes has a well-formed name.
    segments: list[SegmentName] = []
    for name in store.list(f"{layout.SEGMENTS}/{stream}/"):
        try:
            segments.append(layout.parse_segment_name(name))
        except InputError as exc:
            raise fail(name, "unexpected object among the segments") from exc
    pending: list[tuple[int, str]] = []
    for name in store.list(f"{layout.CHECKPOINTS}/{stream}/"):
        try:
            _, size = layout.parse_checkpoint_name(name)
        except InputError as exc:
            raise fail(name, "unexpected object among the checkpoints") from exc
        pending.append((size, name))
    segments.sort()
    pending.sort()
    tree = MerkleTree()
    done: list[SegmentName] = []
    checked: list[Checkpoint] = []
    notes: list[bytes] = []

    def covering(lo: int, hi: int) -> str:
        hit = [s.name for s in done if s.first < hi and s.last >= lo]
        return ", ".join(hit) if hit else "no stored segment"

    def check_checkpoint(size: int, name: str) -> None:
        data = store.get(name)
        # 2. The checkpoint is signed by the log key whose range covers it, for this origin.
        try:
            if keys is None:
                cp = Checkpoint.parse(SignedNote.parse(data).text)
            else:
                cp, signed_by[size] = keys.open(data, stream=stream, origin=origin)
        except (InputError, IntegrityError) as exc:
            raise fail(name, f"checkpoint is not valid: {exc.message}") from exc
        # 3. Its body is for the size its name says (catches swapped or renamed checkpoints).
        if cp.size != size:
            raise fail(name, f"checkpoint body is for tree size {cp.size}: swapped or renamed")
        # 4. It ends where a segment ends: the log checkpoints each segment and nothing else.
        if size == 0 or size < tree.size:
            raise fail(name, f"checkpoint size {size} is not the end of a stored segment")
        # 5. The entries it covers are all stored (catches a truncated tail).
        if size > tree.size:
            raise fail(
                name,
                f"checkpoint covers {size} entries but the store holds {tree.size}: entries "
                f"{tree.size}..{size - 1} were deleted (truncated tail or missing segment)",
            )
        # 6. Its root equals the root recomputed from the entries at its size.
        lo = checked[-1].size if checked else 0
        if cp.root != tree.root(size):
            resigned = f", or entries before {lo} were altered and re-signed with the key"
            raise fail(
                name,
                f"signed root differs from the root recomputed from the entries: entries "
                f"{lo}..{size - 1} ({covering(lo, size)}) were changed, reordered or replaced"
                + (resigned if lo else ""),
            )
        # 7. It is consistent with the previous checkpoint (RFC 9162 proof from the tree).
        if checked:
            prev = checked[-1]
            try:
                proof = tree.consistency_proof(prev.size, size)
                merkle.verify_consistency(prev.size, size, proof, prev.root, cp.root)
            except IntegrityError as exc:
                raise fail(name, f"inconsistent with the previous checkpoint: {exc}") from exc
        checked.append(cp)
        notes.append(data)

    for seg in segments:
        # 8. Segments are contiguous from entry 0: no gap, no overlap.
        if seg.first > tree.size:
            raise fail(
                f"entries {tree.size}..{seg.first - 1}",
                f"missing: no segment holds them (deleted?); the next one is {seg.name}",
            )
        if seg.first < tree.size:
            raise fail(seg.name, f"overlaps entries already in {covering(seg.first, tree.size)}")
        if seg.count > limits.max_segment_entries:
            raise fail(seg.name, f"declares {seg.count} entries, over the limit")
        # 9. Each segment holds exactly the entries its name declares, within limits.
        try:
            entries = layout.decode_segment(store.get(seg.name))
        except InputError as exc:
            raise fail(seg.name, exc.message) from exc
        if len(entries) != seg.count:
            raise fail(
                seg.name,
                f"holds {len(entries)} entries where its name declares {seg.count}: "
                "entries were deleted or inserted",
            )
        for offset, entry in enumerate(entries):
            if len(entry) > limits.max_entry_bytes:
                raise fail(f"{seg.name} entry {seg.first + offset}", "entry exceeds the size limit")
        # 10. Recompute the tree in log order, checking each checkpoint once reached.
        tree.extend(merkle.hash_leaves(entries))
        done.append(seg)
        while pending and pending[0][0] <= tree.size:
            check_checkpoint(*pending.pop(0))
        # 11. A checkpoint ends every segment but the newest (a deleted one shows here).
        covered = checked[-1].size if checked else 0
        if covered != tree.size and seg is not segments[-1]:
            raise fail(seg.name, "no checkpoint ends at this segment: checkpoint deleted")

    # 12. Checkpoints beyond the stored entries mean a truncated tail (step 5 names it).
    for size, name in pending:
        check_checkpoint(size, name)
    # 13. Each retired key's range ends at a checkpoint it signed: the first checkpoint
    #     of its successor extends that one (one recomputed tree), none replaces it.
    for size, index in [] if keys is None else keys.handovers(stream):
        if signed_by.get(size) != index:
            raise fail(
                layout.checkpoint_name(stream, size),
                f"key #{index + 2} of the key set took over after size "
                f"{size}, but no checkpoint of that size signed by its predecessor is stored",
            )
    # 14. An unsigned log proves nothing: fail closed (a resuming writer may adopt it).
    if not checked and require_covered:
        raise fail(f"{layout.CHECKPOINTS}/{stream}/", "no signed checkpoint: nothing is proven")
    # 15. The latest checkpoint covers every stored entry.
    latest = checked[-1].size if checked else 0
    if require_covered and tree.size > latest:
        raise fail(
            f"entries {latest}..{tree.size - 1}",
            f"not covered by any signed checkpoint ({covering(latest, tree.size)}): "
            "its checkpoint was deleted, or a writer stopped between segment and checkpoint",
        )
    return StreamState(stream, tree, tuple(done), tuple(checked), tuple(notes))


def check_known(state: StreamState, known: Checkpoint) -> None:
    """A tree head recorded outside the store must still describe a prefix of the log."""
    where = f"known tree head of size {known.size}"
    if known.size > state.tree.size:
        raise TamperError(
            f"the store holds only {state.tree.size} entries: the log was truncated or rolled back",
            stream=state.stream,
            location=where,
        )
    if known.root != state.tree.root(known.size):
        raise TamperError(
            "its root differs from the recomputed log: history was rewritten (and re-signed)",
            stream=state.stream,
            location=where,
        )


def verify(
    store: WormStore,
    verifier: VerifierKey | KeySet,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
    known: Sequence[Checkpoint] = (),
    limits: AuditLimits = DEFAULT_LIMITS,
    witnesses: WitnessPolicy | None = None,
) -> None:
    """Return if every stream in ``store`` verifies; raise at the first fault otherwise."""
    for stream in _streams_to_check(store, origin_prefix, known):
        _verify_stream(store, stream, verifier, origin_prefix, known, limits, witnesses)


def _streams_to_check(
    store: WormStore, origin_prefix: str, known: Sequence[Checkpoint]
) -> list[str]:
    names = streams(store)
    if not names:
        raise IntegrityError("the store holds no audit log: nothing is proven")
    origins = {layout.origin(origin_prefix, s) for s in names}
    for head in known:
        if head.origin not in origins:
            raise IntegrityError(
                f"known tree head of log {head.origin!r}: that log is missing from the store"
            )
    return names


def _verify_stream(
    store: WormStore,
    stream: str,
    verifier: VerifierKey | KeySet,
    origin_prefix: str,
    known: Sequence[Checkpoint],
    limits: AuditLimits,
    witnesses: WitnessPolicy | None = None,
) -> tuple[StreamState, Witnessed | None]:
    state = replay_stream(store, stream, verifier, origin_prefix=origin_prefix, limits=limits)
    origin = layout.origin(origin_prefix, stream)
    # 16. Tree heads recorded outside the store describe prefixes of the recomputed log.
    for head in known:
        if head.origin == origin:
            check_known(state, head)
    # 17. Witnesses vouch for the newest tree head, and every cosignature they gave holds.
    witnessed = None
    if witnesses is not None:
        witnessed = check_policy(store, stream, state.checkpoints, witnesses)
    return state, witnessed


@dataclass(frozen=True)
class StreamReport:
    stream: str
    entries: int | None = None
    checkpoints: int | None = None
    latest_size: int | None = None
    latest_root: str | None = None
    problem: str | None = None
    # witness name -> cosignature time of the newest checkpoint (with a witness policy)
    cosigned_by: dict[str, int] | None = None


@dataclass(frozen=True)
class VerificationResult:
    """What ``report`` found; ``ok`` only when there is a log and every stream holds."""

    streams: tuple[StreamReport, ...]
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.problem is None and bool(self.streams) and not any(s.problem for s in self.streams)
        )

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "problem": self.problem, "streams": [vars(s) for s in self.streams]}


def report(
    store: WormStore,
    verifier: VerifierKey | KeySet,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
    known: Sequence[Checkpoint] = (),
    limits: AuditLimits = DEFAULT_LIMITS,
    witnesses: WitnessPolicy | None = None,
) -> VerificationResult:
    """The checks of ``verify``, stream by stream, collected for display; never raises."""
    try:
        names = _streams_to_check(store, origin_prefix, known)
    except ClawQLError as exc:
        return VerificationResult((), exc.diagnostics())
    reports = []
    for stream in names:
        try:
            state, witnessed = _verify_stream(
                store, stream, verifier, origin_prefix, known, limits, witnesses
            )
        except ClawQLError as exc:
            reports.append(StreamReport(stream, problem=exc.diagnostics()))
            continue
        latest = state.checkpoints[-1]
        reports.append(
            StreamReport(
                stream,
                state.tree.size,
                len(state.checkpoints),
                latest.size,
                latest.root.hex(),
                cosigned_by=None if witnessed is None else witnessed.cosigners,
            )
        )
    return VerificationResult(tuple(reports))


@dataclass(frozen=True)
class InclusionProof:
    """An entry, its RFC 9162 inclusion path and the signed checkpoint it leads to.

    Self-contained: a third party needs the verifier key and RFC 9162
    §2.1.3.2, nothing from this project. The JSON form is documented at
    ``to_json``.
    """

    stream: str
    index: int
    entry: bytes
    path: tuple[bytes, ...]
    checkpoint: bytes

    def to_json(self) -> dict[str, object]:
        """The documented JSON form.

        ``format``: ``clawql-audit-inclusion-proof/1``; ``stream``; ``index``
        (0-based leaf index); ``tree_size`` and ``root`` (base64) copied from the
        checkpoint; ``entry``: the canonical JSON text of the entry, whose
        ``leaf_hash`` (base64) is SHA-256(0x00 || UTF-8 entry); ``path``: base64
        hashes from the leaf upwards; ``checkpoint``: the C2SP signed note.
        """
        body = Checkpoint.parse(SignedNote.parse(self.checkpoint).text)
        return {
            "format": PROOF_FORMAT,
            "stream": self.stream,
            "index": self.index,
            "tree_size": body.size,
            "root": _b64(body.root),
            "entry": self.entry.decode("utf-8"),
            "leaf_hash": _b64(merkle.leaf_hash(self.entry)),
            "path": [_b64(h) for h in self.path],
            "checkpoint": self.checkpoint.decode("utf-8"),
        }

    @classmethod
    def from_json(cls, obj: object) -> InclusionProof:
        """Parse ``to_json`` output strictly; the copied fields must agree with their sources."""
        fields = {
            "format", "stream", "index", "tree_size", "root", "entry", "leaf_hash", "path",
            "checkpoint",
        }  # fmt: skip
        if not isinstance(obj, dict) or set(obj) != fields or obj["format"] != PROOF_FORMAT:
            raise InputError(f"not a {PROOF_FORMAT} document")
        try:
            if not isinstance(obj["path"], list):
                raise InputError("path must be a list")
            proof = cls(
                layout.check_stream(obj["stream"]),
                _int(obj["index"]),
                obj["entry"].encode("utf-8"),
                tuple(_unb64(h) for h in obj["path"]),
                obj["checkpoint"].encode("utf-8"),
            )
            if proof.to_json() != obj:
                raise InputError("tree_size, root or leaf_hash disagree with the entry or note")
        except (AttributeError, TypeError, UnicodeError) as exc:
            raise InputError(f"malformed {PROOF_FORMAT} document") from exc
        return proof


def check_inclusion(
    proof: InclusionProof,
    verifier: VerifierKey | KeySet,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
) -> Checkpoint:
    """The checkpoint, if ``proof`` puts its entry in the log ``verifier`` signed; else raise."""
    # 1. The checkpoint is signed by the key (of the set, within its range), for the stream.
    origin = layout.origin(origin_prefix, proof.stream)
    cp, _ = as_keyset(verifier).open(proof.checkpoint, stream=proof.stream, origin=origin)
    # 2. The path leads the entry's leaf hash to that signed root (RFC 9162 §2.1.3.2).
    merkle.verify_inclusion(
        merkle.leaf_hash(proof.entry), proof.index, cp.size, proof.path, cp.root
    )
    return cp


def prove(
    store: WormStore,
    stream: str,
    index: int,
    verifier: VerifierKey | KeySet | None = None,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
) -> InclusionProof:
    """An inclusion proof of entry ``index`` against the stream's latest checkpoint.

    The stream is recomputed and checked first (signatures too, given a key),
    so no proof is issued from a store that contradicts its own checkpoints.
    """
    state = replay_stream(
        store,
        layout.check_stream(stream),
        verifier,
        origin_prefix=origin_prefix,
        require_covered=False,
    )
    latest = state.latest
    if latest is None or not 0 <= index < latest.size:
        raise InputError(
            f"entry {index} is not covered by a checkpoint of {stream!r} "
            f"(latest size {latest.size if latest else 0})"
        )
    seg = next(s for s in state.segments if s.first <= index <= s.last)
    entry = layout.decode_segment(store.get(seg.name))[index - seg.first]
    if merkle.leaf_hash(entry) != state.tree.leaf(index):
        raise TamperError("entry changed while being proved", stream=stream, location=seg.name)
    path = tuple(state.tree.inclusion_proof(index, latest.size))
    # The checkpoint travels with the witnesses' cosignatures stored for it.
    note = cosigned_note(store, stream, latest.size, state.notes[-1])
    return InclusionProof(stream, index, entry, path, note)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise InputError("expected a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InputError("invalid base64 in proof") from exc


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError("expected an integer")
    return value


CONSISTENCY_FORMAT = "clawql-audit-consistency-proof/1"


@dataclass(frozen=True)
class ConsistencyProof:
    """Two signed checkpoints of one stream and the RFC 9162 proof that the first is
    a prefix of the second. Self-contained like ``InclusionProof``: a third party
    needs the verifier key and RFC 9162 §2.1.4.2 only.
    """

    stream: str
    old_checkpoint: bytes
    new_checkpoint: bytes
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, object]:
        """The documented JSON form.

        ``format``: ``clawql-audit-consistency-proof/1``; ``stream``;
        ``old_size``/``old_root`` and ``new_size``/``new_root`` (base64) copied
        from the two checkpoints; ``path``: the base64 consistency-proof hashes;
        ``old_checkpoint`` and ``new_checkpoint``: the C2SP signed notes.
        """
        old = Checkpoint.parse(SignedNote.parse(self.old_checkpoint).text)
        new = Checkpoint.parse(SignedNote.parse(self.new_checkpoint).text)
        return {
            "format": CONSISTENCY_FORMAT,
            "stream": self.stream,
            "old_size": old.size,
            "old_root": _b64(old.root),
            "new_size": new.size,
            "new_root": _b64(new.root),
            "path": [_b64(h) for h in self.path],
            "old_checkpoint": self.old_checkpoint.decode("utf-8"),
            "new_checkpoint": self.new_checkpoint.decode("utf-8"),
        }

    @classmethod
    def from_json(cls, obj: object) -> ConsistencyProof:
        """Parse ``to_json`` output strictly; copied fields must agree with the notes."""
        fields = {
            "format", "stream", "old_size", "old_root", "new_size", "new_root", "path",
            "old_checkpoint", "new_checkpoint",
        }  # fmt: skip
        if not isinstance(obj, dict) or set(obj) != fields or obj["format"] != CONSISTENCY_FORMAT:
            raise InputError(f"not a {CONSISTENCY_FORMAT} document")
        if not isinstance(obj["path"], list):
            raise InputError("path must be a list")
        if not isinstance(obj["old_checkpoint"], str) or not isinstance(obj["new_checkpoint"], str):
            raise InputError("checkpoints must be signed-note text")
        proof = cls(
            layout.check_stream(obj["stream"]),
            obj["old_checkpoint"].encode("utf-8"),
            obj["new_checkpoint"].encode("utf-8"),
            tuple(_unb64(h) for h in obj["path"]),
        )
        if proof.to_json() != obj:
            raise InputError("the copied sizes/roots disagree with the checkpoints")
        return proof


def consistency(
    store: WormStore,
    stream: str,
    old_size: int,
    new_size: int,
    verifier: VerifierKey | KeySet | None = None,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
) -> ConsistencyProof:
    """A consistency proof between two checkpointed sizes of ``stream``.

    Both sizes must be sizes the log signed, so both roots come with a
    signature; the stream is recomputed and checked first, as for ``prove``.
    """
    state = replay_stream(
        store, layout.check_stream(stream), verifier, origin_prefix=origin_prefix,
        require_covered=False,
    )  # fmt: skip
    notes = {cp.size: note for cp, note in zip(state.checkpoints, state.notes, strict=True)}
    if not 0 < old_size <= new_size or old_size not in notes or new_size not in notes:
        raise InputError(
            f"{stream!r} has no signed checkpoints at sizes {old_size} and {new_size} "
            f"(signed sizes: {', '.join(map(str, sorted(notes))) or 'none'})"
        )
    path = tuple(state.tree.consistency_proof(old_size, new_size))
    return ConsistencyProof(stream, notes[old_size], notes[new_size], path)


def check_consistency(
    proof: ConsistencyProof,
    verifier: VerifierKey | KeySet,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
) -> tuple[Checkpoint, Checkpoint]:
    """Both checkpoints, if signed by ``verifier`` and the old one is a prefix; else raise."""
    # 1. Both checkpoints are signed by the log's keys, in range, for the stream's log.
    origin = layout.origin(origin_prefix, proof.stream)
    keys = as_keyset(verifier)
    old, _ = keys.open(proof.old_checkpoint, stream=proof.stream, origin=origin)
    new, _ = keys.open(proof.new_checkpoint, stream=proof.stream, origin=origin)
    # 2. The proof shows the old tree is a prefix of the new one (RFC 9162 §2.1.4.2).
    merkle.verify_consistency(old.size, new.size, proof.path, old.root, new.root)
    return old, new
