"""Write-once (WORM) object stores for segments and checkpoints.

The log's promise is that shipped data never changes, so the store interface
has no overwrite and no delete: ``put_once``, ``get``, ``list``. A retry that
writes the same bytes again is accepted as a no-op (a shipper that crashed
after writing but before recording it must be able to resume); any other
write to an existing name is a ``WriteOnceError``.

``LocalWormStore`` is the default: a directory where each object is written to
a temporary file, fsync'd, made read-only (0444) and linked into place with
``link(2)``, which, unlike ``rename(2)``, fails instead of replacing an object
that a concurrent writer created first; the directory is then fsync'd so the
name survives a crash. Root can still delete or edit these files; that is why
``verify`` exists, and why production uses S3 Object Lock in compliance mode.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from clawql_secrets.audit.errors import MissingObjectError, StoreError, WriteOnceError
from clawql_secrets.errors import InputError

MAX_NAME_LENGTH = 512
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class WormStore(Protocol):
    """A store whose objects, once written, are never replaced or removed by us."""

    def put_once(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes: ...

    def list(self, prefix: str) -> list[str]:
        """Names starting with ``prefix``, sorted."""
        ...


def check_name(name: str) -> list[str]:
    """Split an object name into safe path components or raise ``InputError``.

    Components start with a letter or digit, so ``..``, hidden files and our
    own temporary files can never be named.
    """
    parts = name.split("/")
    if len(name) > MAX_NAME_LENGTH or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise InputError(
            f"invalid object name {name!r}: use '/'-separated [A-Za-z0-9._-] components"
        )
    return parts


class LocalWormStore:
    """A write-once directory tree (see the module docstring for the guarantees)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalWormStore({str(self.root)!r})"

    def put_once(self, name: str, data: bytes) -> None:
        path = self.root.joinpath(*check_name(name))
        try:
            if self._same_or_refuse(name, path, data):
                return
            self._make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o444)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    if not self._same_or_refuse(name, path, data):
                        raise
            finally:
                os.unlink(tmp)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {name!r} to the audit store at {self.root}") from exc

    def _same_or_refuse(self, name: str, path: Path, data: bytes) -> bool:
        """True if ``path`` already holds ``data``; raise if it holds anything else."""
        try:
            existing = path.read_bytes()
        except FileNotFoundError:
            return False
        if existing != data:
            raise WriteOnceError(
                f"refusing to overwrite {name!r} in the write-once store at {self.root}"
            )
        return True

    def _make_dirs(self, directory: Path) -> None:
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    def get(self, name: str) -> bytes:
        path = self.root.joinpath(*check_name(name))
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise MissingObjectError(f"the audit store at {self.root} has no {name!r}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {name!r} from the audit store at {self.root}") from exc

    def list(self, prefix: str) -> list[str]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root.joinpath(*check_name(base)) if base else self.root
        names = []
        try:
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = [d for d in dirnames if _COMPONENT.fullmatch(d)]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for f in filenames:
                    name = f if rel == "." else f"{rel}/{f}"
                    if _COMPONENT.fullmatch(f) and name.startswith(prefix):
                        names.append(name)
        except OSError as exc:
            raise StoreError(f"cannot list the audit store at {self.root}") from exc
        return sorted(names)


class MemoryWormStore:
    """The same contract in memory: for dry runs, benchmarks and unit tests."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_once(self, name: str, data: bytes) -> None:
        check_name(name)
        existing = self.objects.setdefault(name, bytes(data))
        if existing != data:
            raise WriteOnceError(f"refusing to overwrite {name!r} in the write-once store")

    def get(self, name: str) -> bytes:
        check_name(name)
        try:
            return self.objects[name]
        except KeyError as exc:
            raise MissingObjectError(f"the audit store has no {name!r}") from exc

    def list(self, prefix: str) -> list[str]:
        return sorted(n for n in self.objects if n.startswith(prefix))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
