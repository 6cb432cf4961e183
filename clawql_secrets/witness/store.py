"""The witness's state on disk: one file per log origin, replaced atomically.

A witness is only as good as its memory. If it forgot the tree head it
cosigned last (a crash mid-write, a truncated file, a silent reset), the log
could present a forked or rolled-back history and be cosigned again as if it
were the first. So:

- each write goes to a fresh temporary file (``O_CREAT|O_EXCL|O_NOFOLLOW``,
  mode 0600), is fsynced, renamed over the state file, and the directory is
  fsynced: after a crash the file holds the old state or the new, never a mix,
  and a state the witness answered with survives a power loss;
- requests for one origin are serialised by a lock held from reading the state
  to persisting the new one (tlog-witness: otherwise a slow request for size N
  could overwrite a fast one for N+K and roll K leaves back);
- one process per directory (an exclusive ``flock``), since the locks are in
  memory;
- a state file that does not parse is a ``ConfigError`` when the store opens,
  naming the file. It is never reset: an empty state would accept any history.

State file ``<sha256(origin) hex>.json``:
``{"format": "clawql-witness-state/1", "origin": ..., "size": ..., "root": <hex>}``
(hex, as digests are conventionally written, so secret scanners read it as public).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from clawql_secrets.atomicfile import is_leftover, write_atomic
from clawql_secrets.errors import BackendError, ConfigError, InputError
from clawql_secrets.witness.state import LogState

STATE_FORMAT = "clawql-witness-state/1"
_LOCK_FILE = ".lock"
_STATE_FILE = re.compile(r"[0-9a-f]{64}\.json")
_MAX_STATE_BYTES = 64 * 1024
_FIELDS = {"format", "origin", "size", "root"}
_HEX_ROOT = re.compile(r"[0-9a-f]{64}")

R = TypeVar("R")


def state_file_name(origin: str) -> str:
    """The file of an origin: a hash, so any origin line is a safe file name."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest() + ".json"


def encode_state(state: LogState) -> bytes:
    document = {
        "format": STATE_FORMAT,
        "origin": state.origin,
        "size": state.size,
        "root": state.root.hex(),
    }
    return (json.dumps(document, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def decode_state(data: bytes) -> LogState:
    """Parse a state file strictly; ``InputError`` describing the first fault."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError("not UTF-8 JSON") from exc
    if not isinstance(document, dict) or set(document) != _FIELDS:
        raise InputError(f"not an object with exactly the fields {sorted(_FIELDS)}")
    if document["format"] != STATE_FORMAT:
        raise InputError(f"format is not {STATE_FORMAT!r}")
    origin, size, root = document["origin"], document["size"], document["root"]
    if not isinstance(origin, str) or not isinstance(size, int) or isinstance(size, bool):
        raise InputError("origin must be a string and size an integer")
    if not isinstance(root, str) or not _HEX_ROOT.fullmatch(root):
        raise InputError("root must be 64 lowercase hex digits")
    return LogState(origin, size, bytes.fromhex(root))


class StateStore:
    """The cosigned tree head of each origin, in a directory only this process writes.

    Thread-safe: ``update`` serialises per origin. Only the origins given to
    ``open`` can be updated, so a stream of requests for made-up origins
    cannot grow the lock table.
    """

    def __init__(
        self, directory: Path, states: dict[str, LogState], origins: Iterable[str], lock_fd: int
    ) -> None:
        self.directory = directory
        self._states = states
        self._locks = {origin: threading.Lock() for origin in origins}
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, directory: Path, origins: Iterable[str]) -> StateStore:
        """Lock ``directory`` (created 0700 if missing) and load and check every state file."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(
                directory / _LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot use the witness state directory {directory} ({exc.strerror})"
            ) from exc
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"another witness process uses the state directory {directory}",
                    fix="stop it, or give this witness its own state_dir",
                ) from exc
            states = cls._load_all(directory)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(directory, states, origins, lock_fd)

    @staticmethod
    def _load_all(directory: Path) -> dict[str, LogState]:
        states: dict[str, LogState] = {}
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise ConfigError(f"cannot list the witness state directory {directory}") from exc
        for name in names:
            path = directory / name
            if is_leftover(name):
                # A write cut short by a crash: the state file it was meant to
                # replace is intact, and this was never acknowledged.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if not _STATE_FILE.fullmatch(name):
                continue
            state = _load_file(path)
            if state_file_name(state.origin) != name:
                raise _corrupt(path, "the origin inside does not match the file name")
            states[state.origin] = state
        return states

    def get(self, origin: str) -> LogState | None:
        return self._states.get(origin)

    def states(self) -> dict[str, LogState]:
        return dict(self._states)

    def update(
        self, origin: str, decide: Callable[[LogState | None], tuple[R, LogState | None]]
    ) -> R:
        """Run ``decide`` on the origin's state under its lock; persist what it returns.

        ``decide`` returns its result and the new state (None or the same state:
        nothing to write). The new state is on disk before ``update`` returns,
        so whatever the caller answers with has been persisted; if writing fails,
        ``BackendError`` and the old state stays.
        """
        lock = self._locks.get(origin)
        if lock is None:
            raise InputError(f"the state store does not serve origin {origin[:200]!r}")
        with lock:
            if self._lock_fd is None:
                raise BackendError("the witness state store is closed")
            current = self._states.get(origin)
            result, new = decide(current)
            if new is not None and new != current:
                if new.origin != origin:
                    raise InputError("a decision returned the state of another origin")
                self._write(new)
                self._states[origin] = new
            return result

    def _write(self, state: LogState) -> None:
        final = self.directory / state_file_name(state.origin)
        try:
            write_atomic(final, encode_state(state), mode=0o600)
        except OSError as exc:
            raise BackendError(
                f"cannot persist the witness state in {self.directory} ({exc.strerror})",
                fix="check the disk (space, permissions); the request can be retried",
            ) from exc

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _load_file(path: Path) -> LogState:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = os.read(fd, _MAX_STATE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _corrupt(path, f"cannot be read ({exc.strerror}; symlinks are refused)") from exc
    if len(data) > _MAX_STATE_BYTES:
        raise _corrupt(path, "it is too large")
    try:
        return decode_state(data)
    except InputError as exc:
        raise _corrupt(path, exc.message) from exc


def _corrupt(path: Path, detail: str) -> ConfigError:
    return ConfigError(
        f"witness state file {path} is corrupt: {detail}",
        fix="restore it from a backup; do not delete it: without it the witness would "
        "accept any history of that log as new (trust on first use)",
    )
