"""Witnessed checkpoints: the shipper's side of c2sp.org/tlog-witness, and the policy check.

A checkpoint signed only by the log's own key cannot show a fork or a
rollback by whoever holds that key. A witness keeps, per log, the last tree
head it cosigned and cosigns a new one only with a consistency proof from
there; so two different trees of one size, or a tail truncated and re-signed,
never both get its cosignature (``clawql_secrets.witness``).

Where cosignatures live. The checkpoint note is stored before any witness
sees it, and the store is write-once, so each witness's cosignature line is an
object of its own next to it::

    cosignatures/<stream>/<size>/<witness key hash hex>.txt   one signed-note line

``cosigned_note`` puts the note and its stored cosignatures back together
(what ``prove`` and proof bundles hand out).

Submitting. ``WitnessSubmitter.submit`` sends a stream's newest checkpoint to
every witness that has not cosigned it, with a consistency proof from the size
that witness last cosigned. That size is learned from the witness itself: the
first request of a run says ``old 0``; a witness that holds another size
answers 409 with it, and the request is sent again once with a proof from
there. A witness that is down, or refuses, is counted and logged; shipping goes
on (the witness catches up with the next checkpoint, since consistency proofs
span any number of checkpoints), and ``status``, the metrics and the alert
rules make the outage visible.

Checking. ``check_policy`` requires, per stream, that every stored
cosignature by a policy witness verifies over the stored checkpoint it names,
and that the newest checkpoint is cosigned by at least ``threshold`` of them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Checkpoint, NoteSignature, SignedNote
from clawql_secrets.audit.cosignature import WitnessKey, add_cosignatures
from clawql_secrets.audit.errors import SignatureError, TamperError
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.tree import MerkleTree
from clawql_secrets.errors import ClawQLError, ConfigError, InputError, IntegrityError

log = logging.getLogger(__name__)

COSIGNATURES = "cosignatures"
_NAME = re.compile(rf"{COSIGNATURES}/({layout.STREAM_PATTERN})/([0-9]{{20}})/([0-9a-f]{{8}})\.txt")


def cosignature_name(stream: str, size: int, key: WitnessKey) -> str:
    return f"{COSIGNATURES}/{layout.check_stream(stream)}/{size:020d}/{key.key_hash.hex()}.txt"


def parse_cosignature_name(name: str) -> tuple[str, int, bytes]:
    m = _NAME.fullmatch(name)
    if not m:
        raise InputError(f"{name!r} is not a cosignature name")
    return m[1], int(m[2]), bytes.fromhex(m[3])


def _line_of(data: bytes, name: str) -> NoteSignature:
    """The one signature line stored in ``name`` (parsed as the only line of a note)."""
    try:
        note = SignedNote.parse(b"x\n\n" + data)
    except InputError as exc:
        raise InputError(f"{name}: not a signed-note signature line: {exc.message}") from exc
    if len(note.signatures) != 1:
        raise InputError(f"{name}: holds {len(note.signatures)} signature lines, not one")
    return note.signatures[0]


def stored_cosignatures(store: WormStore, stream: str, size: int) -> list[NoteSignature]:
    prefix = f"{COSIGNATURES}/{layout.check_stream(stream)}/{size:020d}/"
    return [_line_of(store.get(name), name) for name in store.list(prefix)]


def cosigned_note(store: WormStore, stream: str, size: int, note: bytes) -> bytes:
    """``note`` (the stored checkpoint of ``size``) with every stored cosignature added."""
    lines = stored_cosignatures(store, stream, size)
    return add_cosignatures(note, lines) if lines else note


@dataclass(frozen=True)
class WitnessPolicy:
    """K of these witnesses must have cosigned each stream's newest checkpoint."""

    keys: tuple[WitnessKey, ...]
    threshold: int

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("a witness policy needs at least one witness key")
        if not 1 <= self.threshold <= len(self.keys):
            raise ConfigError(
                f"witness threshold {self.threshold} must be between 1 and the "
                f"{len(self.keys)} witness keys given"
            )
        if len({k.key_hash for k in self.keys}) != len(self.keys):
            raise ConfigError("a witness key is given twice")


@dataclass(frozen=True)
class Witnessed:
    """Per stream: the newest checkpoint's size and who cosigned it (name -> timestamp)."""

    size: int
    cosigners: dict[str, int]
    cosigned_checkpoints: int


def check_policy(
    store: WormStore,
    stream: str,
    checkpoints: Sequence[Checkpoint],
    policy: WitnessPolicy,
) -> Witnessed:
    """Return who cosigned the newest of ``checkpoints`` (verified ones), or raise.

    1. Every stored cosignature object has a well-formed name and one line.
    2. A cosignature by a policy witness names a stored checkpoint and verifies
       over it: a checkpoint re-signed or removed after a witness saw it shows.
    3. The newest checkpoint is cosigned by at least ``threshold`` of them.
    """
    by_size = {cp.size: cp for cp in checkpoints}
    keys = {k.key_hash: k for k in policy.keys}
    cosigners: dict[int, dict[str, int]] = {}
    for name in store.list(f"{COSIGNATURES}/{layout.check_stream(stream)}/"):
        try:
            _, size, key_hash = parse_cosignature_name(name)  # 1.
            line = _line_of(store.get(name), name)
        except InputError as exc:
            raise TamperError(exc.message, stream=stream, location=name) from exc
        key = keys.get(key_hash)
        if key is None:
            continue  # a witness outside the policy: not counted, not judged
        cp = by_size.get(size)  # 2.
        if cp is None:
            raise TamperError(
                f"witness {key.name!r} cosigned a checkpoint of size {size} that is no longer "
                "stored: the log was truncated or rewritten after the witness saw it",
                stream=stream,
                location=name,
            )
        try:
            stamp = key.verify(cp.body(), line)
        except IntegrityError as exc:
            raise TamperError(
                f"{exc.message}: the stored checkpoint of size {size} is not the one the "
                "witness cosigned (re-signed after the fact)",
                stream=stream,
                location=name,
            ) from exc
        cosigners.setdefault(size, {})[key.name] = stamp
    if not checkpoints:
        raise TamperError("no checkpoint to hold against the witnesses", stream=stream, location="")
    newest = checkpoints[-1]
    got = cosigners.get(newest.size, {})
    if len(got) < policy.threshold:  # 3.
        missing = sorted(k.name for k in policy.keys if k.name not in got)
        raise TamperError(
            f"cosigned by {len(got)} of the {policy.threshold} witnesses required "
            f"(missing: {', '.join(missing)}): no witness vouches that this tree head extends "
            "what it saw before (a forked or truncated log, or witnesses not reached yet)",
            stream=stream,
            location=layout.checkpoint_name(stream, newest.size),
        )
    return Witnessed(newest.size, got, len(cosigners))


# -- the shipper's side -----------------------------------------------------------------


class WitnessLike(Protocol):
    """What the submitter needs of a witness client (``witness.client.WitnessClient``)."""

    @property
    def key(self) -> WitnessKey: ...

    def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: bytes
    ) -> NoteSignature: ...


@dataclass
class SubmitStats:
    """Per witness: outcomes, and the size it last cosigned per stream."""

    cosigned: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None


class WitnessSubmitter:
    """Gets each stream's newest checkpoint cosigned by every configured witness."""

    def __init__(
        self,
        witnesses: Sequence[WitnessLike],
        store: WormStore,
        *,
        clock: Callable[[], float] = time.time,
        on_outcome: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.witnesses = list(witnesses)
        self.store = store
        self._clock = clock
        self.on_outcome = on_outcome
        self.stats = {w.key.name: SubmitStats() for w in self.witnesses}
        # (witness, stream) -> the size it is known to hold, learned from it
        self._known: dict[tuple[str, str], int] = {}

    def submit(self, stream: str, tree: MerkleTree, checkpoint: Checkpoint, note: bytes) -> int:
        """Ask every witness to cosign ``checkpoint``; returns how many hold a cosignature."""
        done = 0
        for witness in self.witnesses:
            name = witness.key.name
            stored = cosignature_name(stream, checkpoint.size, witness.key)
            if self.stats[name].cosigned.get(stream) == checkpoint.size or stored in set(
                self.store.list(stored)
            ):  # cosigned before (by this run, or before a restart)
                self.stats[name].cosigned[stream] = checkpoint.size
                done += 1
                continue
            try:
                line = self._ask(witness, stream, tree, checkpoint, note)
                self.store.put_once(stored, line.line().encode())
            except ClawQLError as exc:
                self._outcome(name, stream, _kind(exc), exc)
                continue
            self._known[(name, stream)] = checkpoint.size
            self.stats[name].cosigned[stream] = checkpoint.size
            self._outcome(name, stream, "cosigned", None)
            done += 1
        return done

    def _ask(
        self,
        witness: WitnessLike,
        stream: str,
        tree: MerkleTree,
        checkpoint: Checkpoint,
        note: bytes,
    ) -> NoteSignature:
        from clawql_secrets.witness.state import WitnessConflict

        old = self._known.get((witness.key.name, stream), 0)
        for attempt in range(2):
            if old > checkpoint.size:
                raise SignatureError(
                    f"witness {witness.key.name!r} holds size {old} of stream {stream!r}, "
                    f"beyond this log's {checkpoint.size}: the log was rolled back"
                )
            proof = tree.consistency_proof(old, checkpoint.size) if old > 0 else []
            try:
                return witness.add_checkpoint(old, proof, note)
            except WitnessConflict as conflict:
                if attempt or conflict.known_size == old:
                    raise
                old = conflict.known_size
                self._known[(witness.key.name, stream)] = old
        raise AssertionError("unreachable")  # pragma: no cover

    def _outcome(self, witness: str, stream: str, kind: str, exc: ClawQLError | None) -> None:
        stats = self.stats[witness]
        stats.outcomes[kind] = stats.outcomes.get(kind, 0) + 1
        if exc is not None:
            stats.last_error = f"{stream}: {exc.diagnostics()}"
            stats.last_error_at = self._clock()
            log.warning("audit stream %s: witness %s: %s", stream, witness, exc.diagnostics())
        if self.on_outcome is not None:
            self.on_outcome(witness, stream, kind)


def _kind(exc: ClawQLError) -> str:
    from clawql_secrets.witness.state import WitnessConflict

    if isinstance(exc, WitnessConflict):
        return "conflict"
    if isinstance(exc, IntegrityError):
        return "refused"  # 422 or a cosignature that does not verify: evidence, page
    if isinstance(exc, ConfigError | InputError):
        return "misconfigured"
    return "unavailable"
