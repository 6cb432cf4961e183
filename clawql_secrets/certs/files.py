"""Putting a verified certificate in place, and reading back what is there.

Every file is written to a temporary name in its own directory (0600 from
creation), fsynced, then renamed over the old one, and the directory is
fsynced: a reader sees the old file or the new one, never half of either, and
a crash leaves one of the two. The files are renamed CA first (peers must
trust a new issuer before they meet it), then the bundle, certificate and key.
Key and certificate are two renames apart, so a service that re-reads them on
every connection should read ``bundle_file`` (both in one file) instead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from clawql_secrets.certs.config import Service
from clawql_secrets.certs.x509check import CertInfo, Issued, load_installed
from clawql_secrets.errors import ClawQLError, ConfigError

MODE = 0o600


def _stage(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(service: Service, issued: Issued) -> None:
    """Write key, certificate, CA (and bundle) for ``service`` atomically, 0600.

    If a rename fails half way, the files already replaced are put back, so
    the service is never left with a key that is not its certificate's.
    """
    items: list[tuple[Path, bytes]] = [(service.ca_file, issued.ca_pem)]
    if service.bundle_file is not None:
        items.append((service.bundle_file, issued.key_pem + issued.cert_pem))
    items += [(service.cert_file, issued.cert_pem), (service.key_file, issued.key_pem)]
    staged: list[tuple[Path, Path]] = []
    replaced: list[tuple[Path, bytes | None]] = []
    current = items[0][0]
    try:
        for path, data in items:
            current = path
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            current = path
            old = path.read_bytes() if path.is_file() else None
            os.replace(tmp, path)
            replaced.append((path, old))
        for directory in {p.parent for _, p in staged}:
            _fsync_dir(directory)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _restore(replaced)
        raise ConfigError(
            f"cannot write {current} for {service.name} ({type(exc).__name__})",
            fix="the renewer needs write access to the service's certificate directory",
        ) from exc


def _restore(replaced: list[tuple[Path, bytes | None]]) -> None:
    for path, old in reversed(replaced):
        with contextlib.suppress(OSError):
            if old is None:
                path.unlink()
            else:
                os.replace(_stage(path, old), path)


def read_installed(service: Service) -> CertInfo:
    """The certificate in place for ``service``; raises if missing, unreadable or mismatched."""
    try:
        cert = service.cert_file.read_bytes()
        key = service.key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{service.name} has no readable certificate and key "
            f"({service.cert_file}, {service.key_file}: {type(exc).__name__})"
        ) from exc
    info, _ = load_installed(cert, key, service)
    return info


def try_read_installed(service: Service) -> CertInfo | None:
    try:
        return read_installed(service)
    except ClawQLError:
        return None


def mode_problem(path: Path) -> str | None:
    """A private file readable by anyone but its owner is a finding."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    return None if mode & 0o077 == 0 else f"{path} has mode {mode:o}, want 600"
