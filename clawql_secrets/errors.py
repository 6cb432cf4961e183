"""The project's exception tree, grouped by who is at fault.

Every boundary (OpenBao HTTP, PKCS#11, file system, processes) translates the
errors of the library it wraps into one of these, ``raise ... from exc``, so no
raw ``httpx``/``pkcs11``/``OSError`` reaches a user or an HTTP response. Each
error carries a human message naming the cause and, where there is one, the
fix. The CLI catches ``ClawQLError`` once in ``main()``.

    ClawQLError
    ├── InputError             the caller sent something bad (CLI args, request bodies, shares)
    ├── ConfigError            an operator misconfiguration (paths, ports, PINs, config files)
    ├── BackendError           a remote we depend on misbehaved or is down
    │   ├── OpenBaoError           OpenBao answered with an error or not at all
    │   │   └── NotLeaderError         a write reached a standby / no leader: retry elsewhere
    │   ├── HSMError               the PKCS#11 token failed (wrong PIN, token/key/library missing)
    │   └── ProcessError           a supervised process failed to start or stay up
    └── SecurityError          a security property does not hold (auth refused, tampering)
        ├── AuthenticationError    the caller could not be authenticated
        └── IntegrityError         data was altered, forged or is from elsewhere

Messages never contain a secret: callers pass descriptions, never values.
"""

from __future__ import annotations


class ClawQLError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def diagnostics(self) -> str:
        """A human explanation: what went wrong and what to do about it."""
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class InputError(ClawQLError):
    """The caller sent bad input; nothing was changed."""


class ConfigError(ClawQLError):
    """The operator's configuration is wrong or incomplete."""


class BackendError(ClawQLError):
    """A remote component failed or is unreachable."""


class OpenBaoError(BackendError):
    """OpenBao returned an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.status = status


class NotLeaderError(OpenBaoError):
    """The node cannot serve a write now (standby, no quorum): retry on another node."""


class HSMError(BackendError):
    """The PKCS#11 token failed: wrong PIN, token, key or library missing, crypto failure."""


class ProcessError(BackendError):
    """A supervised process could not be started or kept running."""


class SecurityError(ClawQLError):
    """A security property does not hold."""


class AuthenticationError(SecurityError):
    """The caller could not be authenticated."""


class IntegrityError(SecurityError):
    """Data was tampered with, forged, or comes from somewhere else."""
