"""Each audit stream's shipping state: what the shipper records and ``status`` reads.

Why: a shipper that refuses every stream (say its checkpoint key changed after
an HSM restore) used to look "up" while the audit files grew. Now the shipper
writes, from its loop, one document per stream in its cursor directory,
``<cursor_dir>/<stream>.status.json`` (temporary file, fsync, rename; 0600; at
most once a second unless the state or the last error changes)::

    {"v": 1, "stream": "n1", "pid": 4242, "updated_at": 1767225600.5,
     "interval_seconds": 10.0, "state": "stalled",
     "tree_size": 120, "published_size": 118,
     "lag_entries": 57, "pending_entries": 2, "unread_lines": 55, "unread_exact": true,
     "lag_seconds": 31.5, "waiting_since": 1767225569.0,
     "reading_behind": false, "error_active": true,
     "last_error": {"kind": "integrity", "message": "...", "at": 1767225598.2},
     "last_checkpoint_at": 1767225500.0, "last_progress_at": 1767225500.0}

Times are Unix seconds. ``tree_size``/``published_size`` are null until the
stream's log could be read from the store. ``pending_entries`` were appended
but are in no stored checkpoint; ``unread_lines`` are complete lines in the
live audit file after the tailer's position (counted within a byte budget per
loop: ``unread_exact`` is false when the count is a lower bound, e.g. after a
rotation). ``lag_seconds`` is the age of the oldest line not yet in a stored
checkpoint, counted from when this shipper process first saw it.
``last_error.message`` is an error's ``diagnostics()``: never a secret.

States (``classify``), worst first; *I* is the checkpoint interval:

- ``stalled``: a line has waited more than 1.5 *I* and nothing was published
  for 1.5 *I*; or the loop has not run for 1.5 *I*. A healthy stream never
  waits much more than one interval; the other half leaves Prometheus time to
  scrape and evaluate, so the alert fires within two intervals.
- ``failing``: the last attempt to read or publish the stream failed and has
  not succeeded since.
- ``catching_up``: no error, but reading is behind (the stream is not resumed
  yet, back-pressure, a per-poll bound hit) or a line has waited over 1.25 *I*.
- ``ok``.

Readers (``observe``, used by ``clawql-secrets status``) also call a stream
stalled when its document is older than two intervals or the shipper process
is gone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.audit.tail import Cursor
from clawql_secrets.errors import BackendError, InputError

VERSION = 1
STALLED_AFTER = 1.5  # intervals
CATCHING_UP_AFTER = 1.25  # intervals
STALE_DOCUMENT_AFTER = 2.0  # intervals
SUFFIX = ".status.json"


class State(enum.StrEnum):
    OK = "ok"
    CATCHING_UP = "catching_up"
    FAILING = "failing"
    STALLED = "stalled"


BAD_STATES = frozenset({State.STALLED, State.FAILING})


def status_file(cursor_dir: Path, stream: str) -> Path:
    return cursor_dir / f"{stream}{SUFFIX}"


@dataclass(frozen=True)
class LastError:
    kind: str
    message: str
    at: float


def classify(
    *,
    lag_seconds: float,
    interval: float,
    progress_age: float | None,
    loop_age: float,
    error_active: bool,
    reading_behind: bool,
) -> State:
    """The state of one stream (see the module docstring). Pure.

    ``progress_age``: seconds since the stream last published something new or
    moved its committed cursor (None: never, in this process); ``loop_age``:
    seconds since the shipper's loop last looked at the stream.
    """
    stall = STALLED_AFTER * interval
    if loop_age > stall:
        return State.STALLED
    if lag_seconds > stall:
        progressing = progress_age is not None and progress_age <= stall
        return State.CATCHING_UP if progressing and not error_active else State.STALLED
    if error_active:
        return State.FAILING
    if reading_behind or lag_seconds > CATCHING_UP_AFTER * interval:
        return State.CATCHING_UP
    return State.OK


@dataclass(frozen=True)
class StreamStatus:
    """One stream's status as of ``updated_at`` (the document, decoded)."""

    stream: str
    pid: int
    updated_at: float
    interval_seconds: float
    state: State
    tree_size: int | None
    published_size: int | None
    pending_entries: int
    unread_lines: int
    unread_exact: bool
    lag_seconds: float
    waiting_since: float | None
    reading_behind: bool
    error_active: bool
    last_error: LastError | None
    last_checkpoint_at: float | None
    last_progress_at: float | None

    @property
    def lag_entries(self) -> int:
        return self.pending_entries + self.unread_lines

    @classmethod
    def measured(
        cls,
        *,
        stream: str,
        pid: int,
        now: float,
        interval_seconds: float,
        tree_size: int | None,
        published_size: int | None,
        pending_entries: int,
        unread_lines: int,
        unread_exact: bool,
        waiting_since: float | None,
        reading_behind: bool,
        error_active: bool,
        last_error: LastError | None,
        last_checkpoint_at: float | None,
        last_progress_at: float | None,
    ) -> StreamStatus:
        """A status measured by the loop at ``now``: lag and state derived from the inputs."""
        status = cls(
            stream=stream,
            pid=pid,
            updated_at=now,
            interval_seconds=interval_seconds,
            state=State.OK,
            tree_size=tree_size,
            published_size=published_size,
            pending_entries=pending_entries,
            unread_lines=unread_lines,
            unread_exact=unread_exact,
            lag_seconds=0.0,
            waiting_since=waiting_since,
            reading_behind=reading_behind,
            error_active=error_active,
            last_error=last_error,
            last_checkpoint_at=last_checkpoint_at,
            last_progress_at=last_progress_at,
        )
        return status.at(now)

    def at(self, now: float) -> StreamStatus:
        """This status seen at ``now``: the lag grows and the state follows, even when
        the loop that measured it has stopped (a scrape of a hung shipper shows it)."""
        lag = 0.0 if self.waiting_since is None else max(0.0, now - self.waiting_since)
        progress_age = None if self.last_progress_at is None else now - self.last_progress_at
        state = classify(
            lag_seconds=lag,
            interval=self.interval_seconds,
            progress_age=progress_age,
            loop_age=max(0.0, now - self.updated_at),
            error_active=self.error_active,
            reading_behind=self.reading_behind,
        )
        return dataclasses.replace(self, lag_seconds=round(lag, 3), state=state)

    # -- the document ------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": VERSION}
        for f in dataclasses.fields(self):
            doc[f.name] = getattr(self, f.name)
        doc["state"] = str(self.state)
        doc["lag_entries"] = self.lag_entries
        doc["last_error"] = None if self.last_error is None else vars(self.last_error)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> StreamStatus:
        """Decode a document; ``InputError`` if it is not one this version wrote."""
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise InputError("not a version-1 audit stream status document")
        try:
            err = doc.get("last_error")
            last_error = None if err is None else LastError(**err)
            values = {f.name: doc[f.name] for f in dataclasses.fields(cls)}
            values["state"] = State(values["state"])
            values["last_error"] = last_error
            status = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("malformed audit stream status document") from exc
        ints = (status.pid, status.pending_entries, status.unread_lines)
        if not isinstance(status.stream, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints
        ):
            raise InputError("malformed audit stream status document")
        if not isinstance(status.updated_at, int | float) or not (
            isinstance(status.interval_seconds, int | float) and status.interval_seconds > 0
        ):
            raise InputError("malformed audit stream status document")
        return status


def write_status(path: Path, status: StreamStatus) -> None:
    """Replace the document atomically (0600: it names files, never a secret, but is ours)."""
    data = json.dumps(status.to_json(), sort_keys=True).encode() + b"\n"
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise BackendError(f"cannot write the stream status {path}") from exc


def read_status(path: Path) -> StreamStatus | None:
    """The document at ``path``; None if there is none; ``InputError`` if unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read the stream status {path}") from exc
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InputError(f"the stream status {path} is not JSON") from exc
    return StreamStatus.from_json(doc)


def observe(
    path: Path, *, stream: str, interval: float, shipper_alive: bool, now: float
) -> dict[str, Any]:
    """What ``status`` shows for one stream: the document seen at ``now``, made stalled
    when it is older than two intervals or no shipper process is running."""
    try:
        status = read_status(path)
    except InputError as exc:
        return {"stream": stream, "state": str(State.STALLED), "note": exc.message}
    if status is None:
        if shipper_alive:
            return {"stream": stream, "state": str(State.CATCHING_UP), "note": "starting"}
        return {"stream": stream, "state": str(State.STALLED), "note": "the shipper is not running"}
    age = max(0.0, now - status.updated_at)
    seen = status.at(now)
    doc = seen.to_json()
    doc["document_age_seconds"] = round(age, 3)
    doc["note"] = None
    if not shipper_alive:
        doc["state"], doc["note"] = str(State.STALLED), "the shipper is not running"
    elif age > STALE_DOCUMENT_AFTER * status.interval_seconds:
        doc["state"] = str(State.STALLED)
        doc["note"] = f"status not updated for {age:.0f} s (the shipper's loop is stuck)"
    return doc


# -- what waits in the audit file --------------------------------------------------------


@dataclass
class _Mark:
    """At ``at``, the file (device, inode) held complete lines up to byte ``end``."""

    at: float
    device: int
    inode: int
    end: int


class Backlog:
    """What waits in one stream's live audit file, measured incrementally within a budget.

    ``measure`` counts the complete lines after the read position (the
    tailer's), rescanning only what is new since the last call and at most
    ``budget_bytes`` per call; and it remembers when each stretch of lines was
    first seen, so ``waiting_since(committed)`` can answer how long the oldest
    line after the last published position has waited. Bounded memory
    (``max_marks``); never raises (an unreadable file counts as nothing known).
    """

    def __init__(self, path: Path, *, budget_bytes: int = 1 << 20, max_marks: int = 256) -> None:
        self.path = path
        self._budget = budget_bytes
        self._max_marks = max_marks
        self._scan: tuple[int, int, int] | None = None  # (device, inode, start)
        self._scanned = 0
        self._lines = 0
        self._line_end = 0
        self._marks: list[_Mark] = []

    def measure(self, read: Cursor | None, now: float) -> tuple[int, bool]:
        """(complete lines after ``read`` in the live file, whether that count is exact)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return 0, False
        try:
            st = os.fstat(fd)
            here = read is not None and (read.device, read.inode) == (st.st_dev, st.st_ino)
            start = read.offset if here and read is not None else 0
            key = (st.st_dev, st.st_ino, start)
            if key != self._scan or st.st_size < self._scanned:
                self._scan, self._scanned, self._lines, self._line_end = key, start, 0, start
            end = min(st.st_size, self._scanned + self._budget)
            pos = self._scanned
            while pos < end:
                chunk = os.pread(fd, min(1 << 16, end - pos), pos)
                if not chunk:
                    break
                n = chunk.count(b"\n")
                if n:
                    self._lines += n
                    self._line_end = pos + chunk.rindex(b"\n") + 1
                pos += len(chunk)
            self._scanned = pos
        except OSError:
            return 0, False
        finally:
            os.close(fd)
        self._mark(now, st.st_dev, st.st_ino)
        # Lines left in a rotated file the tailer is still reading are not counted.
        exact = (read is None or here) and self._scanned >= st.st_size
        return self._lines, exact

    def _mark(self, now: float, device: int, inode: int) -> None:
        last = self._marks[-1] if self._marks else None
        same = last is not None and (last.device, last.inode) == (device, inode)
        if same and last is not None and self._line_end <= last.end:
            return
        if self._line_end <= 0:
            return
        if len(self._marks) >= self._max_marks and same and last is not None:
            last.end = self._line_end  # full: the newest lines inherit an older time
            return
        self._marks.append(_Mark(now, device, inode, self._line_end))

    def waiting_since(self, committed: Cursor | None) -> float | None:
        """When the oldest line after ``committed`` (None: nothing published) was first
        seen; None if every line seen is published."""
        if committed is not None:
            live = self._marks[-1] if self._marks else None
            kept = []
            for m in self._marks:
                in_committed = (m.device, m.inode) == (committed.device, committed.inode)
                if in_committed and m.end <= committed.offset:
                    continue  # published
                if (
                    not in_committed
                    and live is not None
                    and (m.device, m.inode)
                    != (
                        live.device,
                        live.inode,
                    )
                ):
                    continue  # an older file the committed cursor has moved past
                kept.append(m)
            self._marks = kept
        return self._marks[0].at if self._marks else None
