"""The log's checkpoint keys over time: a key set with validity ranges per stream.

A checkpoint key can be lost (the HSM token that held it destroyed) or
retired. The history it signed must stay verifiable, and nobody holding an old
key may extend the log after its successor took over. The verifier key file
(``verifier.txt``) therefore lists every key the log has used, oldest first,
each after the first with the tree size of every stream at which it took
over::

    clawql.local/audit+1a2b3c4d+AT0x...
    clawql.local/audit+5e6f7a8b+AbCd... after n1=4500 n2=4398 n3=4410

Key *i* may sign a checkpoint of stream *s* of size *n* only when
``after_i[s] < n <= after_{i+1}[s]`` (``after_0`` is 0, the newest key has no
upper bound, and a stream a key's line does not name has ``after`` 0 there,
i.e. the stream had no checkpoint when that key took over). So:

- the old key's range ends exactly at its last checkpoint (``after`` of the
  next key), and ``verify`` requires that checkpoint to exist: the first
  checkpoint under the new key is bound to the last under the old one, and
  both are checked against one recomputed Merkle tree, so the new key cannot
  rewrite what the old one signed without the tree showing it;
- a checkpoint signed by a retired key past its range (someone who kept or
  stole the old key) is refused, as is a newer key signing sizes the old key
  already covered.

The file is the auditor's trust anchor, as the single key was: a new line is a
key the operator vouches for. A witness (``clawql_secrets.witness``) is the
outside check that the history under the new key extends what it cosigned
under the old one. Pure: parsing, formatting, and opening notes; reading and
writing the file and the store is ``key_transition``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Checkpoint, VerifierKey
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import InputError

MAX_KEYS = 64
MAX_FILE_BYTES = 64 * 1024
_AFTER = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})=(0|[1-9][0-9]{0,18})")


@dataclass(frozen=True)
class KeyEpoch:
    """One key and, per stream, the tree size after which it took over."""

    key: VerifierKey
    after: Mapping[str, int] = field(default_factory=dict)

    def line(self) -> str:
        if not self.after:
            return str(self.key)
        ranges = " ".join(f"{s}={n}" for s, n in sorted(self.after.items()))
        return f"{self.key} after {ranges}"


@dataclass(frozen=True)
class KeySet:
    """Every checkpoint key of one log, oldest first (see the module docstring)."""

    epochs: tuple[KeyEpoch, ...]

    def __post_init__(self) -> None:
        if not self.epochs:
            raise InputError("a verifier key set needs at least one key")
        if len(self.epochs) > MAX_KEYS:
            raise InputError(f"a verifier key set holds at most {MAX_KEYS} keys")
        hashes = [(e.key.name, e.key.key_hash) for e in self.epochs]
        if len(set(hashes)) != len(hashes):
            raise InputError("a key appears twice in the verifier key set")
        if self.epochs[0].after:
            raise InputError("the first key of a verifier key set takes over from no other")
        for prev, nxt in zip(self.epochs, self.epochs[1:], strict=False):
            for stream, size in prev.after.items():
                if nxt.after.get(stream, 0) < size:
                    raise InputError(
                        f"key {nxt.key.name!r} takes over stream {stream!r} at "
                        f"{nxt.after.get(stream, 0)}, before its predecessor did ({size})"
                    )
        for epoch in self.epochs:
            for stream in epoch.after:
                layout.check_stream(stream)

    @classmethod
    def single(cls, key: VerifierKey) -> KeySet:
        return cls((KeyEpoch(key),))

    @classmethod
    def parse(cls, text: str) -> KeySet:
        """Strict: one key per line, optional ``after s=n …``; ``#`` comments and blanks."""
        if len(text.encode()) > MAX_FILE_BYTES:
            raise InputError("verifier key file is too large")
        epochs = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            words = line.split()
            try:
                key = VerifierKey.parse(words[0])
            except InputError as exc:
                raise InputError(f"verifier key file line {number}: {exc.message}") from exc
            after: dict[str, int] = {}
            if len(words) > 1:
                if words[1] != "after" or len(words) == 2:
                    raise InputError(
                        f"verifier key file line {number}: expected 'after <stream>=<size> ...'"
                    )
                for word in words[2:]:
                    m = _AFTER.fullmatch(word)
                    if m is None or m[1] in after:
                        raise InputError(
                            f"verifier key file line {number}: bad or repeated range {word!r}"
                        )
                    after[m[1]] = int(m[2])
            epochs.append(KeyEpoch(key, after))
        return cls(tuple(epochs))

    def __str__(self) -> str:
        """The file form; a set of one key is exactly that key's line, as before key sets."""
        return "".join(e.line() + "\n" for e in self.epochs)

    def __iter__(self) -> Iterator[KeyEpoch]:
        return iter(self.epochs)

    @property
    def newest(self) -> VerifierKey:
        return self.epochs[-1].key

    def index_of(self, key: VerifierKey) -> int | None:
        for i, epoch in enumerate(self.epochs):
            if (epoch.key.name, epoch.key.key_hash, epoch.key.public_key) == (
                key.name,
                key.key_hash,
                key.public_key,
            ):
                return i
        return None

    def extended(self, key: VerifierKey, after: Mapping[str, int]) -> KeySet:
        """This set with ``key`` taking over after ``after`` (the streams' signed sizes)."""
        return KeySet((*self.epochs, KeyEpoch(key, dict(after))))

    def range_of(self, index: int, stream: str) -> tuple[int, int | None]:
        """Sizes ``(lo, hi]`` key ``index`` may sign for ``stream``; ``hi`` None = unbounded."""
        lo = self.epochs[index].after.get(stream, 0)
        if index + 1 == len(self.epochs):
            return lo, None
        return lo, self.epochs[index + 1].after.get(stream, 0)

    def handovers(self, stream: str) -> list[tuple[int, int]]:
        """``(size, index of the retiring key)`` for every takeover after a signed size > 0."""
        out = []
        for i in range(1, len(self.epochs)):
            size = self.epochs[i].after.get(stream, 0)
            if size > 0:
                out.append((size, i - 1))
        return out

    def open_any(self, data: bytes) -> Checkpoint:
        """A checkpoint signed by any key of the set, whatever its size (a tree head kept
        outside the store: it is held against the recomputed tree, not against ranges)."""
        refused: list[SignatureError] = []
        for epoch in self.epochs:
            try:
                return Checkpoint.parse(epoch.key.open(data))
            except SignatureError as exc:
                refused.append(exc)
        raise (
            refused[0]
            if len(refused) == 1
            else SignatureError("note carries no valid signature by any log key")
        )

    def open(self, data: bytes, *, stream: str, origin: str) -> tuple[Checkpoint, int]:
        """The checkpoint a key of the set signed within its range, and that key's index.

        1. Some key of the set signed the note (others' signatures, e.g. a
           witness's cosignature, are ignored).
        2. The note is a checkpoint for ``origin``.
        3. Its size lies in the signing key's range for ``stream``.
        """
        opened: list[tuple[int, bytes]] = []
        refused: list[SignatureError] = []
        for i, epoch in enumerate(self.epochs):
            try:
                opened.append((i, epoch.key.open(data)))  # 1.
            except SignatureError as exc:
                refused.append(exc)
        if not opened:
            if len(refused) == 1:
                raise refused[0]
            names = ", ".join(str(e.key) for e in self.epochs)
            raise SignatureError(f"note carries no valid signature by any log key ({names})")
        problems = []
        for i, text in opened:
            cp = Checkpoint.parse(text)
            if cp.origin != origin:  # 2.
                raise SignatureError(
                    f"checkpoint is for log {cp.origin!r}, not {origin!r}: it comes from elsewhere"
                )
            lo, hi = self.range_of(i, stream)
            if cp.size > lo and (hi is None or cp.size <= hi):  # 3.
                return cp, i
            upto = "" if hi is None else f"..{hi}"
            problems.append(
                f"key {self.epochs[i].key.name!r} #{i + 1} signs sizes {lo + 1}{upto} of "
                f"stream {stream!r}, not {cp.size}"
            )
        raise SignatureError(
            "checkpoint signed outside its key's validity range (a retired key extending the "
            "log, or a new key rewriting what the old one signed): " + "; ".join(problems)
        )


def as_keyset(verifier: VerifierKey | KeySet) -> KeySet:
    return verifier if isinstance(verifier, KeySet) else KeySet.single(verifier)
