"""The audit shipper: tail each node's audit file, redact, append, checkpoint to WORM.

One *stream* per OpenBao node. For each stream, in one loop:

1. **Tail** the file audit device (``tail.AuditTailer``: rotation-safe,
   at-least-once, a stable ``entry_id`` per line).
2. **Drop re-reads** by entry id (see *De-duplication* below).
3. **Redact and canonicalise** (``leaf.make_leaf``): nothing unredacted is
   ever appended; what cannot be redacted is stored as a notice (kind, size).
4. **Append** the leaf to the stream's Merkle tree (``log.StreamLog``).
5. Every ``interval_seconds`` and at shutdown, **publish**: the new segment
   and a signed checkpoint go to the WORM store (``log.AuditLog.checkpoint``
   checks the store's newest checkpoint is consistent with the new one first).
6. Only then **commit** the tail cursor, and record the tree size it
   corresponds to (``<stream>.published``).
7. **Witness**: each configured witness is asked to cosign the newest
   checkpoint (``witnessing.WitnessSubmitter``); its cosignature is stored next
   to the checkpoint. A witness outage never holds shipping back.

Crash safety. The cursor moves only after the store holds everything read
before it, so a crash anywhere replays lines instead of losing them. During
a store outage nothing is committed: the node's audit files (the file device
is the source of truth) are the durable buffer, and the tailer keeps its
place in them; once ``max_pending_entries`` are waiting, reading pauses until
the store is back, so memory stays bounded (by that plus one poll) however
long the outage lasts.
A stream whose store cannot even be read at start is retried the same way.

De-duplication. Replayed lines are recognised by entry id. On resume the ids
of the entries stored after the last committed cursor (from the
``.published`` tree size to the store's end: one publication, normally) are
loaded; ids seen since are kept in a bounded recent set; and when the tailer
reports a ``gap`` or ``file_truncated`` (it re-reads files from the start),
every id of the stream is loaded from the store. A missing ``.published``
file means every id is loaded.

Being loud. A shipper that cannot ship must not look healthy: at every loop
iteration each stream's state (ok, catching up, failing, stalled), its lag in
entries and seconds and its last error are measured (``stream_status``:
bounded work per stream, a byte budget for counting unread lines) and written
to ``<cursor_dir>/<stream>.status.json`` for ``clawql-secrets status``, and
exported as metrics for the alert rules.

The loop is single-threaded (the tailer, the tree and PKCS#11 signing are
not thread-safe); only metrics scrapes run on another thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import Checkpoint, Signer
from clawql_secrets.audit.keyset import KeySet
from clawql_secrets.audit.layout import DEFAULT_LIMITS, AuditLimits
from clawql_secrets.audit.leaf import leaf_id, make_leaf
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.metrics import ShipperMetrics
from clawql_secrets.audit.redact import Redactor
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.stream_status import (
    Backlog,
    LastError,
    StreamStatus,
    read_status,
    status_file,
    write_status,
)
from clawql_secrets.audit.tail import AuditTailer, Cursor, CursorFile, EntryKind, TailConfig
from clawql_secrets.audit.witnessing import WitnessSubmitter
from clawql_secrets.errors import BackendError, ClawQLError, ConfigError, IntegrityError

log = logging.getLogger(__name__)

_RELOAD_KINDS = frozenset({EntryKind.GAP, EntryKind.FILE_TRUNCATED})
STATUS_PERIOD = 1.0  # seconds between status documents when nothing changes


@dataclass(frozen=True)
class StreamSource:
    """One node's audit file and where its cursor lives."""

    name: str
    audit_file: Path
    cursor_dir: Path

    @property
    def cursor_file(self) -> Path:
        return self.cursor_dir / f"{self.name}.cursor"

    @property
    def published_file(self) -> Path:
        return self.cursor_dir / f"{self.name}.published"

    @property
    def status_file(self) -> Path:
        return status_file(self.cursor_dir, self.name)


@dataclass(frozen=True)
class ShipperSettings:
    """Timing and limits; defaults are the production ones."""

    interval_seconds: float = 60.0
    poll_seconds: float = 0.5
    retry_seconds: float = 5.0
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX
    max_pending_entries: int = 200_000
    recent_ids: int = 200_000
    limits: AuditLimits = DEFAULT_LIMITS
    tail: TailConfig = field(default_factory=TailConfig)

    def __post_init__(self) -> None:
        if not (self.interval_seconds > 0 and self.poll_seconds > 0 and self.retry_seconds > 0):
            raise ConfigError("shipper intervals must be positive")
        if self.max_pending_entries < 1 or self.recent_ids < 1:
            raise ConfigError("shipper limits must be positive")


class RecentIds:
    """A bounded set of entry ids, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: deque[str] = deque()
        self._set: set[str] = set()
        self._pinned: set[str] = set()

    def __contains__(self, item: str) -> bool:
        return item in self._set or item in self._pinned

    def add(self, item: str) -> None:
        if item in self._set:
            return
        self._set.add(item)
        self._order.append(item)
        if len(self._order) > self._capacity:
            self._set.discard(self._order.popleft())

    def pin(self, items: set[str]) -> None:
        """Ids loaded from the store: kept whatever the capacity (replaced on next load)."""
        self._pinned = items


class _Stream:
    def __init__(self, source: StreamSource, tailer: AuditTailer, recent: int) -> None:
        self.source = source
        self.tailer = tailer
        self.seen = RecentIds(recent)
        self.ready = False
        self.pending = 0
        self.committed: Cursor | None = None
        self.retry_at = 0.0
        # For the status document and its metrics (see ``Shipper.record_status``).
        self.backlog = Backlog(source.audit_file)
        self.resumed_at: Cursor | None = None  # the committed cursor found at start
        self.published_size: int | None = None
        self.behind = False
        self.errors: dict[str, LastError] = {}  # unresolved, by phase: "read", "publish"
        self.last_error: LastError | None = None
        self.last_checkpoint_at: float | None = None
        self.last_progress_at: float | None = None
        self.written: tuple[float, object] = (float("-inf"), None)
        self.write_failed = False


class Shipper:
    """Ships every configured stream into one ``AuditLog`` (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[StreamSource],
        store: WormStore,
        signer: Signer,
        settings: ShipperSettings | None = None,
        *,
        redactor: Redactor | None = None,
        keys: KeySet | None = None,
        witnesses: WitnessSubmitter | None = None,
        metrics: ShipperMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not sources:
            raise ConfigError("the shipper needs at least one stream")
        names = [layout.check_stream(s.name) for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError("stream names must be unique")
        self.settings = settings or ShipperSettings()
        self.log = AuditLog(
            store,
            signer,
            keys=keys,
            origin_prefix=self.settings.origin_prefix,
            limits=self.settings.limits,
        )
        self.store = store
        self.witnesses = witnesses
        self.redactor = redactor or Redactor()
        self.metrics = metrics or ShipperMetrics(clock)
        if witnesses is not None:
            witnesses.on_outcome = lambda witness, stream, outcome: self.metrics.witnessed(
                witness, stream, outcome, witnesses.stats[witness].cosigned.get(stream)
            )
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        for source in sources:
            try:
                source.cursor_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise ConfigError(f"cannot create cursor directory {source.cursor_dir}") from exc
            tailer = AuditTailer(
                source.audit_file, source.name, CursorFile(source.cursor_file), self.settings.tail
            )
            st = self._streams[source.name] = _Stream(source, tailer, self.settings.recent_ids)
            _load_status_inputs(st)
        self._pid = os.getpid()

    @property
    def streams(self) -> list[str]:
        return sorted(self._streams)

    # -- reading ------------------------------------------------------------

    def pump(self) -> int:
        """One poll of every stream; returns the number of leaves appended."""
        total = 0
        for name in self.streams:
            try:
                total += self.pump_stream(name)
            except ClawQLError as exc:
                self._failed(name, exc, "tail", phase="read")
        return total

    def pump_stream(self, name: str) -> int:
        st = self._streams[name]
        if not self._ensure_ready(st):
            return 0
        if st.pending >= self.settings.max_pending_entries:
            st.behind = True
            return 0  # the store is behind: leave the rest in the audit file
        stream_log = self.log.stream(name)
        appended = 0
        polled = st.tailer.poll()
        # A full poll means more is waiting in the file.
        st.behind = len(polled) >= self.settings.tail.max_entries_per_poll
        st.errors.pop("read", None)
        for raw in polled:
            if raw.entry_id in st.seen:
                self.metrics.duplicate(name)
                continue
            if raw.kind in _RELOAD_KINDS:
                # The tailer re-reads from the start: anything stored may come again.
                st.seen.pin(stored_ids(self.store, name, 0))
            leaf = make_leaf(raw, self.redactor, self.settings.limits)
            stream_log.append_canonical(leaf.data)
            st.seen.add(raw.entry_id)
            st.pending += 1
            appended += 1
            self.metrics.appended(
                name, stream_log.size, kind=leaf.kind, redactions=(f.type for f in leaf.findings)
            )
        return appended

    def drain(self, max_rounds: int = 1000) -> int:
        """Pump until no stream has anything new (bounded), e.g. before shutdown."""
        total = 0
        for _ in range(max_rounds):
            n = self.pump()
            total += n
            if n == 0:
                break
        return total

    # -- publishing ---------------------------------------------------------

    def publish(self) -> dict[str, Checkpoint | None]:
        """Publish every stream; failures are counted and logged, and retried later."""
        done: dict[str, Checkpoint | None] = {}
        now = self._clock()
        for name in self.streams:
            st = self._streams[name]
            try:
                done[name] = self.publish_stream(name)
                st.retry_at = 0.0
            except ClawQLError as exc:
                kind = "integrity" if isinstance(exc, IntegrityError) else "store"
                self._failed(name, exc, kind, phase="publish")
                st.retry_at = now + self.settings.retry_seconds
        return done

    def publish_stream(self, name: str) -> Checkpoint | None:
        """Write the stream's new entries and checkpoint, then commit its cursor."""
        st = self._streams[name]
        if not self._ensure_ready(st, raise_errors=True):
            return None
        checkpoint = self.log.checkpoint(name)
        size = self.log.stream(name).size
        position = st.tailer.position
        now = self._clock()
        if position is not None and position != st.committed:
            # 6. Everything read up to ``position`` is now in the store.
            st.tailer.commit(position)
            st.committed = position
            _write_published(st.source, size)
            st.last_progress_at = now
        if checkpoint is not None:
            st.last_checkpoint_at = st.last_progress_at = now
        st.pending = 0
        st.published_size = size
        st.errors.pop("publish", None)
        self.metrics.published(name, checkpoint or self.log.stream(name).published, size)
        if checkpoint is not None:
            log.info(
                "audit stream %s: checkpoint %d %s", name, checkpoint.size, checkpoint.root.hex()
            )
        self._witness(name)
        return checkpoint

    def _witness(self, name: str) -> None:
        """7. Ask the witnesses to cosign the newest checkpoint (again, if one was down).

        Stored data is never at stake here: a witness that is down or refuses is
        counted and logged (``witnessing``), and the next publication retries.
        """
        stream_log = self.log.stream(name)
        latest = stream_log.published
        note = self.log.published_note(name)
        if self.witnesses is None or latest is None or note is None:
            return
        self.witnesses.submit(name, stream_log.tree, latest, note)

    # -- the loop -----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Ship until ``stop`` is set, then drain and publish a last time."""
        next_publish = self._clock() + self.settings.interval_seconds
        self.record_status(force=True)
        while not stop.is_set():
            appended = self.pump()
            now = self._clock()
            retry = [st for st in self._streams.values() if 0 < st.retry_at <= now]
            if now >= next_publish or retry:
                self.publish()
                next_publish = now + self.settings.interval_seconds
            self.record_status()
            if appended == 0:
                stop.wait(self.settings.poll_seconds)
        self.drain()
        self.publish()
        self.record_status(force=True)

    # -- status ---------------------------------------------------------------

    def record_status(self, *, force: bool = False) -> list[StreamStatus]:
        """Measure every stream, export it, and write its status document.

        A document is rewritten when the state or the last error changed, or
        ``STATUS_PERIOD`` after the previous one (``force``: now). A failed
        write is logged once and retried; it never stops shipping.
        """
        now = self._clock()
        out = []
        for name in self.streams:
            st = self._streams[name]
            status = self._measure(st, now)
            self.metrics.stream_status(status)
            out.append(status)
            key = (status.state, status.last_error)
            last_at, last_key = st.written
            if not (force or key != last_key or now - last_at >= STATUS_PERIOD):
                continue
            try:
                write_status(st.source.status_file, status)
            except BackendError as exc:
                if not st.write_failed:
                    log.warning("audit stream %s: %s", name, exc.diagnostics())
                st.write_failed = True
                continue
            st.written, st.write_failed = (now, key), False
        return out

    def _measure(self, st: _Stream, now: float) -> StreamStatus:
        read = st.tailer.position or st.resumed_at
        unread, exact = st.backlog.measure(read, now)
        waiting_since = st.backlog.waiting_since(st.committed or st.resumed_at)
        if st.pending and waiting_since is None:
            waiting_since = now  # appended entries whose lines were never measured
        tree_size = published = None
        if st.ready:
            stream_log = self.log.stream(st.source.name)  # resumed: no I/O
            tree_size = stream_log.size
            published = stream_log.published.size if stream_log.published else 0
        return StreamStatus.measured(
            stream=st.source.name,
            pid=self._pid,
            now=now,
            interval_seconds=self.settings.interval_seconds,
            tree_size=tree_size,
            published_size=published if st.ready else st.published_size,
            pending_entries=st.pending,
            unread_lines=unread,
            unread_exact=exact,
            waiting_since=waiting_since,
            reading_behind=st.behind or not st.ready,
            error_active=bool(st.errors),
            last_error=st.last_error,
            last_checkpoint_at=st.last_checkpoint_at,
            last_progress_at=st.last_progress_at,
        )

    def close(self) -> None:
        for st in self._streams.values():
            st.tailer.close()

    def __enter__(self) -> Shipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _ensure_ready(self, st: _Stream, *, raise_errors: bool = False) -> bool:
        """Resume the stream from the store once (verified), loading the ids to de-duplicate.

        Until the store can be read the stream is not tailed at all: its lines
        wait in the audit file.
        """
        if st.ready:
            return True
        name = st.source.name
        if not raise_errors and st.retry_at > self._clock():
            return False
        try:
            stream_log = self.log.stream(name)
            lo = _read_published(st.source)
            st.seen.pin(stored_ids(self.store, name, 0 if lo is None else lo))
        except ClawQLError as exc:
            if raise_errors:
                raise
            kind = "integrity" if isinstance(exc, IntegrityError) else "store"
            self._failed(name, exc, kind, phase="read")
            st.retry_at = self._clock() + self.settings.retry_seconds
            return False
        st.ready = True
        st.retry_at = 0.0
        self.metrics.resumed(name, stream_log.size, stream_log.published)
        return True

    def _failed(self, name: str, exc: ClawQLError, kind: str, *, phase: str) -> None:
        self.metrics.error(name, kind)
        # Our errors never carry secrets (see clawql_secrets.errors).
        message = exc.diagnostics()
        st = self._streams[name]
        st.last_error = st.errors[phase] = LastError(kind, message, self._clock())
        log.warning("audit stream %s: %s failed: %s", name, kind, message)


def stored_ids(store: WormStore, name: str, lo: int) -> set[str]:
    """Entry ids of the stream's stored entries from index ``lo`` on (shipper and ingest)."""
    ids: set[str] = set()
    for obj in store.list(f"{layout.SEGMENTS}/{name}/"):
        seg = layout.parse_segment_name(obj)
        if seg.last < lo:
            continue
        entries = layout.decode_segment(store.get(obj))
        for offset, data in enumerate(entries):
            if seg.first + offset >= lo:
                ids.add(leaf_id(data))
    return ids


def _load_status_inputs(st: _Stream) -> None:
    """What a restarted shipper can know at once: the committed cursor, the published
    size and when the previous process last stored a checkpoint."""
    try:
        st.resumed_at = CursorFile(st.source.cursor_file).load()
    except ClawQLError:
        st.resumed_at = None  # the tailer reports a damaged cursor when it starts
    st.published_size = _read_published(st.source)
    try:
        previous = read_status(st.source.status_file)
    except ClawQLError:
        previous = None
    if previous is not None and previous.stream == st.source.name:
        st.last_checkpoint_at = previous.last_checkpoint_at


def _read_published(source: StreamSource) -> int | None:
    """The tree size recorded with the last committed cursor, or None."""
    try:
        doc = json.loads(source.published_file.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning(
            "audit stream %s: unreadable %s: loading every id", source.name, type(exc).__name__
        )
        return None
    size = doc.get("size") if isinstance(doc, dict) else None
    if doc.get("stream") != source.name or not isinstance(size, int) or size < 0:
        return None
    return size


def _write_published(source: StreamSource, size: int) -> None:
    path = source.published_file
    data = json.dumps({"v": 1, "stream": source.name, "size": size}).encode()
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise BackendError(f"cannot record the published size in {path}") from exc
