"""Telling a service that its certificate changed: run a command, or signal a pid file."""

from __future__ import annotations

import logging
import os
import subprocess

from clawql_secrets.certs.config import Service
from clawql_secrets.errors import ConfigError, ProcessError

log = logging.getLogger(__name__)


def reload(service: Service) -> None:
    """Ask ``service`` to reload; raise ``ProcessError`` if it could not be told."""
    r = service.reload
    if r is None:
        return
    if r.command is not None:
        env = {**os.environ, "CLAWQL_CERTS_SERVICE": service.name}
        try:
            done = subprocess.run(
                r.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=r.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProcessError(
                f"reload command for {service.name} failed to run ({type(exc).__name__})"
            ) from exc
        if done.returncode != 0:
            raise ProcessError(
                f"reload command for {service.name} exited with status {done.returncode}"
            )
        return
    signum, pid_file = r.signum, r.pid_file
    if signum is None or pid_file is None:  # pragma: no cover - the config forbids it
        raise ConfigError(f"{service.name}: reload needs a command or a signal and pid_file")
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ProcessError(
            f"cannot read a pid for {service.name} from {pid_file} ({type(exc).__name__})"
        ) from exc
    if pid <= 1:
        raise ProcessError(f"{pid_file} names pid {pid}; refusing to signal it")
    try:
        os.kill(pid, signum)
    except OSError as exc:
        raise ProcessError(
            f"cannot send {signum.name} to {service.name} (pid {pid}): {type(exc).__name__}"
        ) from exc
