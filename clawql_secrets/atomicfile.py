"""Write a file so that a reader or a crash sees the old contents or the new, never half.

The data goes to a fresh temporary file in the target's directory, created
with ``O_EXCL|O_NOFOLLOW`` (``mkstemp``) and the final mode from the start,
written in full and fsynced; it is then renamed over the target and the
directory is fsynced, so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from clawql_secrets.errors import ConfigError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; ``ConfigError`` naming the file on failure."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(name, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
