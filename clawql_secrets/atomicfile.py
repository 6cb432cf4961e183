"""Write a file so that a reader or a crash sees the old contents or the new, never half.

The data goes to a fresh temporary file in the target's directory, created
with ``O_EXCL|O_NOFOLLOW`` (``mkstemp``) and the final mode from the start,
written in full and fsynced. It is then renamed over the target, or, with
``replace=False``, hard-linked to it, which fails if the target exists, even
one created meanwhile. Last, the directory is fsynced, so the new name itself
survives a power loss. A crash leaves at most a ``.<name>.*.tmp`` file,
which ``is_leftover`` recognises.

Errors are ``OSError`` (``FileExistsError`` when not replacing): each caller
translates them into its own error, naming what it was writing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_leftover(name: str) -> bool:
    """True for a temporary file ``write_atomic`` left behind in a crash."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> None:
    """Put ``data`` at ``path`` atomically (see the module docstring); raises ``OSError``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(name, path)
        else:
            os.link(name, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
