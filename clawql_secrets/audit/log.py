"""The append-only audit log: entries in, segments and signed checkpoints out.

``StreamLog`` is the pure part: it canonicalises entries, grows one stream's
Merkle tree and, when asked, prepares the ``Step``s that publish it: each new
segment with a signed checkpoint ending exactly at it. ``AuditLog`` is the I/O
edge: it writes each step to the WORM store, segment before checkpoint so a
checkpoint never names entries that are not stored, and resumes a stream by
recomputing it from the store. Not thread-safe: one writer per stream.

Before a checkpoint is written, the newest checkpoint *in the store* is read
back and must be consistent with the new tree (an RFC 9162 consistency proof),
so the log never signs a history that forks from what it already published,
whatever happened to this process's memory or to the store in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clawql_secrets.audit import layout, merkle
from clawql_secrets.audit.checkpoint import Checkpoint, Signer, VerifierKey, sign_checkpoint
from clawql_secrets.audit.errors import ConsistencyError
from clawql_secrets.audit.keyset import KeySet
from clawql_secrets.audit.layout import DEFAULT_LIMITS, AuditLimits
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.audit.verify import replay_stream
from clawql_secrets.errors import ConfigError, InputError


@dataclass(frozen=True)
class Step:
    """One publication: a segment (None for a tail already stored), then its checkpoint.

    Every segment ends exactly at a checkpoint, so ``verify`` can tell a
    deleted checkpoint from a batch boundary.
    """

    segment: layout.SegmentName | None
    data: bytes
    checkpoint: Checkpoint
    checkpoint_name: str
    note: bytes


class StreamLog:
    """One stream's tree and the entries not yet in a stored segment. No I/O."""

    def __init__(
        self,
        stream: str,
        origin: str,
        *,
        tree: MerkleTree | None = None,
        published: Checkpoint | None = None,
        limits: AuditLimits = DEFAULT_LIMITS,
    ) -> None:
        self.stream = layout.check_stream(stream)
        self.origin = origin
        self.tree = tree if tree is not None else MerkleTree()
        self.published = published
        self.limits = limits
        self._pending: list[bytes] = []
        self._segment_start = self.tree.size

    @property
    def size(self) -> int:
        return self.tree.size

    def append(self, entry: Mapping[str, object]) -> int:
        """Add one audit entry (a JSON object); returns its index in the stream."""
        return self.append_canonical(layout.canonical_entry(entry, self.limits))

    def append_canonical(self, data: bytes) -> int:
        """Add an entry already in RFC 8785 form (the shipper canonicalises once)."""
        if not data or b"\n" in data or len(data) > self.limits.max_entry_bytes:
            raise InputError("a canonical entry is one non-empty line within the size limit")
        self._pending.append(data)
        return self.tree.append(merkle.leaf_hash(data))

    def prepare(self, signers: Sequence[Signer], previous: Checkpoint | None) -> list[Step]:
        """The steps publishing every entry so far; empty if nothing is new.

        ``previous`` is the newest checkpoint already published, read back from
        the store by the caller: each new checkpoint must extend it.
        """
        published = previous.size if previous else 0
        if published > self._segment_start:
            raise ConsistencyError(
                f"the store has a checkpoint of size {published} beyond this log's "
                f"{self._segment_start} stored entries: another writer, or a forged checkpoint"
            )
        ends: list[tuple[layout.SegmentName | None, bytes, int]] = []
        if self._segment_start > published:
            ends.append((None, b"", self._segment_start))
        step = self.limits.max_segment_entries
        for lo in range(0, len(self._pending), step):
            chunk = self._pending[lo : lo + step]
            first = self._segment_start + lo
            name = layout.SegmentName(first, first + len(chunk) - 1, self.stream)
            ends.append((name, layout.encode_segment(chunk), name.last + 1))
        steps = []
        for segment, data, size in ends:
            new = Checkpoint(self.origin, size, self.tree.root(size))
            if previous is not None:
                if previous.origin != self.origin:
                    raise ConsistencyError(
                        f"latest checkpoint is for {previous.origin!r}, not {self.origin!r}"
                    )
                if self.tree.root(previous.size) != previous.root:
                    raise ConsistencyError(
                        f"the published checkpoint of size {previous.size} is not a prefix of "
                        "this log's tree: another writer forked the stream, refusing to sign"
                    )
                proof = self.tree.consistency_proof(previous.size, size)
                merkle.verify_consistency(previous.size, size, proof, previous.root, new.root)
            note = sign_checkpoint(new, signers)
            steps.append(Step(segment, data, new, layout.checkpoint_name(self.stream, size), note))
            previous = new
        return steps

    def segment_stored(self, segment: layout.SegmentName) -> None:
        """Record that ``segment`` is durably stored, so a retry never writes it again.

        Segments are acknowledged one by one: after a store failure half-way
        through, the next attempt starts after the last stored segment instead
        of writing one that overlaps it.
        """
        if segment.first != self._segment_start:
            raise InputError(f"segment {segment.name} is not the next one to store")
        del self._pending[: segment.count]
        self._segment_start = segment.last + 1

    def checkpoint_stored(self, checkpoint: Checkpoint) -> None:
        self.published = checkpoint


def latest_note(store: WormStore, stream: str) -> bytes | None:
    """The stored note of the stream's largest checkpoint, unchecked; None if there is none."""
    names = store.list(f"{layout.CHECKPOINTS}/{stream}/")
    if not names:
        return None
    return store.get(max(names, key=lambda n: layout.parse_checkpoint_name(n)[1]))


class AuditLog:
    """Streams of audit entries published to a WORM store under one signing key.

    ``keys`` is the log's key set (``keyset``) when the log changed keys: what
    is stored is checked against it, and the signer's key must be its newest.
    """

    def __init__(
        self,
        store: WormStore,
        signer: Signer,
        *,
        keys: KeySet | None = None,
        origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
        limits: AuditLimits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin_prefix = origin_prefix
        self.limits = limits
        own = VerifierKey.from_public_key(signer.key_name, signer.public_key_bytes())
        self.keys = keys if keys is not None else KeySet.single(own)
        if self.keys.index_of(own) != len(self.keys.epochs) - 1:
            raise ConfigError(
                f"the signing key {own} is not the newest key of the log's key set",
                fix="adopt it with a key transition (key_transition.adopt), or use the newest key",
            )
        self._streams: dict[str, StreamLog] = {}
        self._notes: dict[str, bytes] = {}  # the newest note this process stored, per stream

    def stream(self, stream: str) -> StreamLog:
        """The stream's log, recomputed and verified from the store on first use.

        A stream whose stored data fails verification is refused: extending a
        tampered log would sign over the tampering.
        """
        if stream not in self._streams:
            self._streams[stream] = self._resume(layout.check_stream(stream))
        return self._streams[stream]

    def _resume(self, stream: str) -> StreamLog:
        origin = layout.origin(self.origin_prefix, stream)
        if not self.store.list(f"{layout.SEGMENTS}/{stream}/") and not self.store.list(
            f"{layout.CHECKPOINTS}/{stream}/"
        ):
            return StreamLog(stream, origin, limits=self.limits)
        state = replay_stream(
            self.store,
            stream,
            self.keys,
            origin_prefix=self.origin_prefix,
            limits=self.limits,
            require_covered=False,
        )
        return StreamLog(
            stream, origin, tree=state.tree, published=state.latest, limits=self.limits
        )

    def append(self, stream: str, entry: Mapping[str, object]) -> int:
        return self.stream(stream).append(entry)

    def checkpoint(self, stream: str) -> Checkpoint | None:
        """Publish the stream's new entries and a signed checkpoint; None if nothing is new."""
        log = self.stream(stream)
        stored = self._latest_stored(stream)
        if log.published is not None and (stored is None or stored.size < log.published.size):
            raise ConsistencyError(
                f"the store's newest checkpoint of stream {stream!r} is older than the one this "
                f"log published (size {log.published.size}): the store was rolled back"
            )
        steps = log.prepare([self.signer], stored)
        for step in steps:
            if step.segment is not None:
                self.store.put_once(step.segment.name, step.data)
                log.segment_stored(step.segment)
            self.store.put_once(step.checkpoint_name, step.note)
            log.checkpoint_stored(step.checkpoint)
            self._notes[stream] = step.note
        return steps[-1].checkpoint if steps else None

    def published_note(self, stream: str) -> bytes | None:
        """The signed note of the stream's newest published checkpoint (what witnesses get)."""
        log = self.stream(stream)
        if log.published is None:
            return None
        note = self._notes.get(stream)
        if note is None:
            note = self.store.get(layout.checkpoint_name(stream, log.published.size))
            self._notes[stream] = note
        return note

    def checkpoint_all(self) -> dict[str, Checkpoint | None]:
        return {stream: self.checkpoint(stream) for stream in sorted(self._streams)}

    def _latest_stored(self, stream: str) -> Checkpoint | None:
        note = latest_note(self.store, stream)
        if note is None:
            return None
        origin = layout.origin(self.origin_prefix, stream)
        return self.keys.open(note, stream=stream, origin=origin)[0]
