"""Tailing one OpenBao node's file audit device: complete lines, rotation-safe, resumable.

The file device is the source of truth (the socket device drops entries), so
the tailer must never lose a line and may repeat some: it is at-least-once,
and every entry carries a stable identity (``entry_id``) for de-duplication
downstream.

How it reads:

- Only complete lines (ending in ``\\n``) are returned; a partial last line
  waits for the rest. A line longer than ``max_line_bytes`` is never held in
  memory: it is hashed while skipped and returned as an ``OVERSIZED`` error
  entry, so its absence is recorded rather than silent.
- Rotation is what OpenBao supports: ``mv audit.log audit.log.1`` then
  SIGHUP, after which OpenBao creates a new file at the same path. Until the
  path names a new inode the tailer keeps reading the old one (OpenBao still
  writes to it); once it does, the tailer reads the old inode to its end one
  last time, then moves on. Several rotations between polls are followed in
  order (rotated files in the same directory, oldest write first).
- copytruncate is detected (the file shrinks under the read offset) and read
  again from 0, with a ``FILE_TRUNCATED`` notice: lines written between the
  last poll and the copy are only in the copy, which the tailer cannot know.
- With no cursor (first start) every audit file present is read, rotated
  ones first, oldest first: nothing already on disk is skipped.
- ``poll()`` returns entries with the cursor just after each; the caller
  ``commit()``s a cursor once everything before it is stored durably. A crash
  between the two replays entries, never loses them. The cursor names the
  file by device and inode and holds a hash of the last consumed line, so a
  restart finds the file even if it was rotated meanwhile, and notices when
  the bytes under the cursor are not the ones it consumed (truncation, inode
  reuse): it then re-reads from 0 and says so with a ``GAP`` notice.

Pure pieces (line assembly, identities, cursor encoding, parsing) are
separate from the file I/O in ``AuditTailer`` and ``CursorFile``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from clawql_secrets.errors import BackendError, ConfigError, InputError

if TYPE_CHECKING:
    from hashlib import _Hash

_ID_DOMAIN: Final = b"clawql-secrets/audit-line/v1\x00"
_CURSOR_VERSION: Final = 1
_COMPRESSED_SUFFIXES: Final = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


class EntryKind(enum.StrEnum):
    """What a ``RawEntry`` is: an audit line, or a notice about the file."""

    ENTRY = "entry"
    """A complete line, in ``RawEntry.line``."""
    OVERSIZED = "oversized"
    """A complete line longer than the limit; skipped, its hash and size kept."""
    TRUNCATED_LINE = "truncated_line"
    """A last line without newline in a file OpenBao has left (crash mid-write)."""
    FILE_TRUNCATED = "file_truncated"
    """The file shrank under the read offset (copytruncate): lines may be missing."""
    GAP = "gap"
    """The cursor's bytes could not be found or verified: lines may be missing."""


@dataclass(frozen=True)
class TailConfig:
    """Limits enforced where audit data comes in."""

    max_line_bytes: int = 1 << 20
    read_chunk_bytes: int = 1 << 16
    max_entries_per_poll: int = 10_000
    max_bytes_per_poll: int = 32 << 20

    def __post_init__(self) -> None:
        for name in (
            "max_line_bytes",
            "read_chunk_bytes",
            "max_entries_per_poll",
            "max_bytes_per_poll",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"tail config {name} must be positive")


@dataclass(frozen=True)
class Cursor:
    """A durable read position in one stream: which file, where, and what was there.

    ``offset`` is the first byte not yet consumed. ``line_offset``/
    ``line_length``/``line_id`` describe the last consumed line so that a
    restart can check the file still holds it (``line_length == 0``: nothing
    to check).
    """

    stream: str
    device: int
    inode: int
    offset: int
    line_offset: int = 0
    line_length: int = 0
    line_id: str = ""

    def to_json(self) -> bytes:
        doc = {"v": _CURSOR_VERSION, **dataclasses.asdict(self)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Cursor:
        """Decode a cursor; ``ConfigError`` (with the fix) if it is damaged."""
        fix = "delete the cursor file: the audit file is then re-read and duplicates dropped"
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.pop("v", None) != _CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            cursor = cls(**doc)
        except (ValueError, TypeError) as exc:
            raise ConfigError("audit tail cursor is unreadable", fix=fix) from exc
        ints = (cursor.device, cursor.inode, cursor.offset, cursor.line_offset, cursor.line_length)
        if not isinstance(cursor.stream, str) or not isinstance(cursor.line_id, str):
            raise ConfigError("audit tail cursor has fields of the wrong type", fix=fix)
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in ints):
            raise ConfigError("audit tail cursor has invalid positions", fix=fix)
        return cursor


@dataclass(frozen=True)
class RawEntry:
    """One line (or notice) from a stream, before parsing and redaction.

    ``entry_id`` is stable: the same line of the same stream always gets the
    same id, whichever file or offset it is read from, so replays after a
    crash de-duplicate downstream. ``cursor`` is the position just after
    this entry: commit it once the entry is stored.
    """

    stream: str
    kind: EntryKind
    entry_id: str
    line: bytes
    size: int
    cursor: Cursor
    detail: str = ""


def line_hasher(stream: str) -> _Hash:
    """A SHA-256 already fed with the domain and stream: ``entry_id`` = its digest + line."""
    h = hashlib.sha256(_ID_DOMAIN)
    h.update(stream.encode())
    h.update(b"\x00")
    return h


def entry_id(stream: str, line: bytes) -> str:
    """Stable identity of a line in a stream (without its newline)."""
    h = line_hasher(stream)
    h.update(line)
    return str(h.hexdigest())


def parse_line(line: bytes) -> dict[str, Any]:
    """Decode one audit line into a JSON object.

    Raises ``BackendError`` (OpenBao wrote something that is not an audit
    entry); the message gives the decoder's position, never the content.
    """
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"audit line is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(doc, dict):
        raise BackendError("audit line is JSON but not an object")
    return doc


def request_key(entry: dict[str, Any]) -> tuple[str, str] | None:
    """OpenBao's own identity of an entry: (``request.id``, request|response).

    A secondary key: useful to pair a request with its response, and to
    spot the same request logged twice with different bytes.
    """
    request = entry.get("request")
    kind = entry.get("type")
    if isinstance(request, dict) and isinstance(request.get("id"), str) and isinstance(kind, str):
        return request["id"], kind
    return None


@dataclass(frozen=True)
class Line:
    """A line found by ``LineAssembler``: its byte range (newline excluded) and id."""

    offset: int
    length: int
    data: bytes | None
    line_id: str

    @property
    def end(self) -> int:
        """Offset just after the newline."""
        return self.offset + self.length + 1


class LineAssembler:
    """Splits a byte stream into lines incrementally, within a memory bound.

    Pure (no I/O): fed chunks in file order, it returns complete lines and
    keeps the partial tail. A line over ``max_line_bytes`` stops being
    buffered; it is still hashed, and comes out with ``data=None``.
    """

    def __init__(self, stream: str, max_line_bytes: int, offset: int = 0) -> None:
        self._stream = stream
        self._max = max_line_bytes
        self._base = line_hasher(stream)
        self.reset(offset)

    def reset(self, offset: int) -> None:
        """Forget any partial line; the next byte fed is at ``offset``."""
        self.offset = offset
        self._line_offset = offset
        self._buf = bytearray()
        self._size = 0
        self._hasher = self._base.copy()
        self._oversized = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of the partial line waiting for its newline."""
        return self._size

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in memory for the partial line: never above the limit."""
        return len(self._buf)

    @property
    def line_offset(self) -> int:
        """Where the partial (or next) line starts."""
        return self._line_offset

    def feed(self, data: bytes) -> list[Line]:
        lines: list[Line] = []
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            stop = len(data) if nl < 0 else nl
            self._take(view[pos:stop])
            if nl < 0:
                self.offset += stop - pos
                break
            self.offset += stop - pos + 1
            if self._size:
                lines.append(self._finish())
            self._start(self.offset)
            pos = nl + 1
        return lines

    def take_partial(self) -> Line | None:
        """Return the partial line as complete (its writer is gone) and reset."""
        if not self._size:
            return None
        line = self._finish()
        self._start(self.offset)
        return line

    def _take(self, piece: memoryview) -> None:
        if not piece:
            return
        self._hasher.update(piece)
        self._size += len(piece)
        if self._oversized:
            return
        if self._size > self._max:
            self._oversized = True
            self._buf = bytearray()
        else:
            self._buf += piece

    def _finish(self) -> Line:
        data = None if self._oversized else bytes(self._buf)
        return Line(self._line_offset, self._size, data, str(self._hasher.hexdigest()))

    def _start(self, offset: int) -> None:
        self._line_offset = offset
        self._buf = bytearray()
        self._size = 0
        self._hasher = self._base.copy()
        self._oversized = False


class CursorFile:
    """The durable cursor of one stream: atomic replace, fsync'd file and directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Cursor | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read audit cursor {self.path}: {exc.strerror}") from exc
        return Cursor.from_json(data)

    def save(self, cursor: Cursor) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, cursor.to_json())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise BackendError(f"cannot persist audit cursor {self.path}: {exc.strerror}") from exc


@dataclass
class _Open:
    fd: int
    device: int
    inode: int


class AuditTailer:
    """Reads one node's audit file as a stream of ``RawEntry``.

    Usage: ``entries = tailer.poll()``; store them; ``tailer.commit(entries[-1].cursor)``.
    Not thread-safe: one tailer per stream, driven by one loop.
    """

    def __init__(
        self,
        path: Path,
        stream: str,
        cursor_file: CursorFile,
        config: TailConfig | None = None,
    ) -> None:
        if not stream:
            raise ConfigError("audit stream id must not be empty")
        self._path = path
        self._stream = stream
        self._cursors = cursor_file
        self._config = config or TailConfig()
        self._asm = LineAssembler(stream, self._config.max_line_bytes)
        self._file: _Open | None = None
        self._started = False
        self._draining = False
        self._finished: list[tuple[int, int]] = []
        self._after_mtime_ns = -1
        self._position: Cursor | None = None

    # -- public -----------------------------------------------------------

    @property
    def position(self) -> Cursor | None:
        """Cursor after the last entry returned by ``poll`` (None before any)."""
        return self._position

    def poll(self) -> list[RawEntry]:
        """Return the entries written since the last poll (possibly none).

        Bounded by ``max_entries_per_poll`` and ``max_bytes_per_poll`` (about:
        whole read chunks are processed); call again while it returns entries.
        """
        out: list[RawEntry] = []
        with _fs_errors(self._path):
            if not self._started:
                self._start(out)
            if self._file is None:
                self._open_next()
            elif not self._still_in_place(self._file):
                out.append(
                    self._notice(self._file, EntryKind.FILE_TRUNCATED, 0, "file rewritten in place")
                )
                self._asm.reset(0)
            budget = self._config.max_bytes_per_poll
            while self._file is not None and len(out) < self._config.max_entries_per_poll:
                if budget <= 0:
                    break
                f = self._file
                data = os.pread(f.fd, self._config.read_chunk_bytes, self._asm.offset)
                if data:
                    budget -= len(data)
                    for line in self._asm.feed(data):
                        out.append(self._line_entry(f, line, EntryKind.ENTRY))
                    continue
                if not self._at_eof(f, out):
                    break
        return out

    def commit(self, cursor: Cursor) -> None:
        """Make ``cursor`` the durable restart point (after its entries are stored)."""
        if cursor.stream != self._stream:
            raise InputError("cursor belongs to another audit stream")
        self._cursors.save(cursor)

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file.fd)
            self._file = None

    def __enter__(self) -> AuditTailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------

    def _at_eof(self, f: _Open, out: list[RawEntry]) -> bool:
        """Handle end of data; True to keep reading (a file switch happened)."""
        st = os.fstat(f.fd)
        if st.st_size < self._asm.offset:
            # copytruncate (or any in-place truncation): the bytes we read are gone.
            out.append(
                self._notice(f, EntryKind.FILE_TRUNCATED, 0, "file shrank under the read offset")
            )
            self._asm.reset(0)
            self._draining = False
            return True
        successor = self._successor(f, st.st_mtime_ns)
        if successor is None:
            return False
        if not self._draining:
            # The writer has moved on; read once more so that anything written
            # between our last read and the reopen is not left behind.
            self._draining = True
            return True
        partial = self._asm.take_partial()
        if partial is not None:
            out.append(self._line_entry(f, partial, EntryKind.TRUNCATED_LINE, newline=False))
        self._finish_file(f, st.st_mtime_ns)
        self._open_next()
        return self._file is not None

    def _still_in_place(self, f: _Open) -> bool:
        """Cheap check that the last line returned from ``f`` is still where it was.

        Catches copytruncate when the file has grown back past our offset
        before we noticed it shrink.
        """
        pos = self._position
        if pos is None or (pos.device, pos.inode) != (f.device, f.inode):
            return True
        if pos.line_length > 1 << 16:
            return True
        return _verify(f.fd, pos, self._stream)

    def _line_entry(
        self, f: _Open, line: Line, kind: EntryKind, *, newline: bool = True
    ) -> RawEntry:
        end = line.end if newline else line.offset + line.length
        cursor = Cursor(
            self._stream, f.device, f.inode, end, line.offset, line.length, line.line_id
        )
        self._position = cursor
        if line.data is None:
            kind = EntryKind.OVERSIZED
            detail = (
                f"line of {line.length} bytes exceeds the {self._config.max_line_bytes}-byte limit"
            )
        elif kind is EntryKind.TRUNCATED_LINE:
            detail = "last line of a rotated file has no newline"
        else:
            detail = ""
        data = line.data if kind is EntryKind.ENTRY and line.data is not None else b""
        return RawEntry(self._stream, kind, line.line_id, data, line.length, cursor, detail)

    def _notice(self, f: _Open | None, kind: EntryKind, offset: int, detail: str) -> RawEntry:
        device, inode = (f.device, f.inode) if f else (0, 0)
        cursor = Cursor(self._stream, device, inode, offset)
        nid = entry_id(self._stream, f"{kind}:{device}:{inode}:{offset}".encode())
        if f is not None:
            self._position = cursor
        return RawEntry(self._stream, kind, nid, b"", 0, cursor, detail)

    # -- files ------------------------------------------------------------

    def _start(self, out: list[RawEntry]) -> None:
        """First poll: resume from the durable cursor, or begin the file at 0."""
        self._started = True
        cursor = self._cursors.load()
        if cursor is None:
            return  # _open_next starts at the oldest audit file present
        if cursor.stream != self._stream:
            raise ConfigError(
                f"audit cursor {self._cursors.path} belongs to stream {cursor.stream!r}",
                fix="give each node its own cursor file",
            )
        for path, st in self._candidates():
            if st.st_ino != cursor.inode:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            ok = cursor.offset <= os.fstat(fd).st_size and _verify(fd, cursor, self._stream)
            if st.st_dev != cursor.device and not (ok and cursor.line_length > 0):
                os.close(fd)  # same inode number on another file system
                continue
            self._file = _Open(fd, st.st_dev, st.st_ino)
            if ok:
                self._asm.reset(cursor.offset)
                self._position = cursor
            else:
                # Our inode, not our bytes: truncated, or the inode was reused.
                self._asm.reset(0)
                out.append(
                    self._notice(
                        self._file, EntryKind.GAP, 0, "cursor line not in file; re-read from 0"
                    )
                )
            return
        # The cursor's file is gone (deleted or compressed after rotation):
        # read every remaining file, oldest first; duplicates are dropped downstream.
        out.append(
            self._notice(
                None,
                EntryKind.GAP,
                cursor.offset,
                "cursor file not found; re-reading all audit files",
            )
        )
        self._after_mtime_ns = -1

    def _candidates(self) -> list[tuple[Path, os.stat_result]]:
        """The live file and its rotated siblings (same directory, name prefix)."""
        name = self._path.name
        skip = {self._cursors.path.name, self._cursors.path.name + ".tmp"}
        found: list[tuple[Path, os.stat_result]] = []
        try:
            entries = list(os.scandir(self._path.parent))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name in skip or e.name.endswith(_COMPRESSED_SUFFIXES):
                continue
            if e.name != name and not e.name.startswith((name + ".", name + "-")):
                continue
            try:
                st = os.stat(e.path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((Path(e.path), st))
        return found

    def _successor(self, f: _Open, mtime_ns: int) -> tuple[Path, os.stat_result] | None:
        """The file to read after ``f``, or None while ``f`` may still be written."""
        try:
            live = os.stat(self._path)
        except FileNotFoundError:
            # Between mv and SIGHUP OpenBao still writes to the newest file;
            # f is done only if a strictly newer one exists.
            if not any(st.st_mtime_ns > mtime_ns for _, st in self._candidates()):
                return None
        else:
            if (live.st_dev, live.st_ino) == (f.device, f.inode):
                return None  # the common case: no rotation, no directory scan
        return self._oldest_after(mtime_ns, exclude={(f.device, f.inode)})

    def _oldest_after(
        self, mtime_ns: int, exclude: set[tuple[int, int]]
    ) -> tuple[Path, os.stat_result] | None:
        # Rotated files are ordered by last write; the live file always comes
        # last. ">=" because coarse timestamps tie: a re-read is a duplicate,
        # a skip would be a loss.
        done = exclude | set(self._finished)
        pending = [
            (p, st)
            for p, st in self._candidates()
            if st.st_mtime_ns >= mtime_ns and (st.st_dev, st.st_ino) not in done
        ]
        if not pending:
            return None
        live = self._path.name
        pending.sort(key=lambda c: (c[0].name == live, c[1].st_mtime_ns, c[1].st_ino))
        return pending[0]

    def _finish_file(self, f: _Open, mtime_ns: int) -> None:
        os.close(f.fd)
        self._file = None
        self._draining = False
        self._finished = [*self._finished[-63:], (f.device, f.inode)]
        self._after_mtime_ns = mtime_ns

    def _open_next(self) -> None:
        """Open the next file to read at 0: a pending rotated file, else the live file."""
        nxt = self._oldest_after(self._after_mtime_ns, exclude=set())
        if nxt is None:
            return
        path, _ = nxt
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # renamed away between scan and open: found on the next poll
        st = os.fstat(fd)
        self._file = _Open(fd, st.st_dev, st.st_ino)
        self._asm.reset(0)
        self._draining = False


def _verify(fd: int, cursor: Cursor, stream: str) -> bool:
    """True if the file holds, under the cursor, the line it says it consumed."""
    if cursor.line_length == 0:
        return True
    h = line_hasher(stream)
    pos, end = cursor.line_offset, cursor.line_offset + cursor.line_length
    while pos < end:
        chunk = os.pread(fd, min(1 << 16, end - pos), pos)
        if not chunk:
            return False
        h.update(chunk)
        pos += len(chunk)
    return bool(h.hexdigest() == cursor.line_id)


@contextlib.contextmanager
def _fs_errors(path: Path) -> Iterator[None]:
    """Translate file-system failures into the project's errors."""
    try:
        yield
    except PermissionError as exc:
        raise ConfigError(
            f"no permission to read the audit file {path}",
            fix="run the shipper as a user that can read the audit directory",
        ) from exc
    except OSError as exc:
        raise BackendError(f"reading the audit file {path} failed: {exc.strerror}") from exc
