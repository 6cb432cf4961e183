"""Rate limiting of HSM PIN attempts, shared by every process on the host.

SoftHSM has no PIN lockout (measured: twelve wrong PINs, then the right one
works), and a network HSM's own counter may *lock the token for good*, so
wrong PINs must be stopped before they reach either. The record lives next to
the PIN file (``pin-failures.json``), is updated under an exclusive ``flock``
held for the whole attempt, and survives restarts: a loop of ``hsm status``
invocations is throttled the same as one process retrying.

Policy (pure, :class:`PinPolicy`): the first ``free_attempts`` consecutive
failures cost nothing; after that every attempt is refused until
``base_delay * 2**(failures - free_attempts)`` seconds (capped) have passed
since the last failure. A success resets the count.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clawql_secrets.errors import ConfigError
from clawql_secrets.tlsca import write_private

RECORD_NAME = "pin-failures.json"


@dataclass(frozen=True)
class PinPolicy:
    """How many failures are free and how the refusal window grows after them."""

    free_attempts: int = 3
    base_delay_seconds: float = 30.0
    max_delay_seconds: float = 3600.0

    def refused_until(self, failures: int, last_failure: float) -> float | None:
        """The epoch time before which attempts are refused, or None if allowed."""
        if failures < self.free_attempts:
            return None
        exponent = min(failures - self.free_attempts, 32)
        delay = min(self.base_delay_seconds * float(2**exponent), self.max_delay_seconds)
        return last_failure + delay


@dataclass(frozen=True)
class PinFailures:
    """The persisted state: consecutive failures and when the last one happened."""

    failures: int = 0
    last_failure: float = 0.0


def _parse(raw: bytes) -> PinFailures:
    if not raw.strip():
        return PinFailures()
    try:
        data = json.loads(raw)
        failures = int(data["failures"])
        last = float(data["last_failure"])
    except (ValueError, KeyError, TypeError) as exc:
        # A corrupted record must not reset the count to zero: fail closed.
        raise ConfigError(
            "the PIN failure record is corrupted",
            fix="inspect it; delete it only if you are sure nobody is guessing the PIN",
        ) from exc
    if failures < 0:
        raise ConfigError("the PIN failure record is corrupted (negative count)")
    return PinFailures(failures=failures, last_failure=last)


def format_retry(until: float, now: float) -> str:
    """A human 'retry after' phrase with both absolute and relative times."""
    when = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"retry after {when} (in {max(1, int(until - now + 0.999))} s)"


class PinGuard:
    """The file-backed record; use :meth:`attempt` around every PIN check."""

    def __init__(self, state_dir: Path, policy: PinPolicy | None = None) -> None:
        self.path = state_dir / RECORD_NAME
        self.policy = policy or PinPolicy()

    @contextlib.contextmanager
    def attempt(self) -> Iterator[PinAttempt]:
        """Hold the record locked for one attempt; refuse early if in a refusal window."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the PIN failure record {self.path} ({exc.strerror})",
                fix="make the directory of the PIN file writable by the bridge's user",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = _parse(os.pread(fd, 4096, 0))
            yield PinAttempt(self, fd, state)
        finally:
            os.close(fd)  # closing releases the flock


class PinAttempt:
    """One locked attempt: check the window, then record the outcome."""

    def __init__(self, guard: PinGuard, fd: int, state: PinFailures) -> None:
        self._guard = guard
        self._fd = fd
        self.state = state

    @property
    def policy(self) -> PinPolicy:
        return self._guard.policy

    def refusal(self, now: float | None = None) -> str | None:
        """A message if attempts are refused now, else None."""
        now = time.time() if now is None else now
        until = self._guard.policy.refused_until(self.state.failures, self.state.last_failure)
        if until is None or now >= until:
            return None
        return (
            f"PIN attempts are refused after {self.state.failures} consecutive failures; "
            f"{format_retry(until, now)}"
        )

    def failed(self, now: float | None = None) -> PinFailures:
        """Record one more failure and return the new state."""
        now = time.time() if now is None else now
        self.state = PinFailures(failures=self.state.failures + 1, last_failure=now)
        self._write()
        return self.state

    def succeeded(self) -> None:
        if self.state.failures:
            self.state = PinFailures()
            self._write()

    def _write(self) -> None:
        data = json.dumps(
            {"failures": self.state.failures, "last_failure": self.state.last_failure}
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)


# -- the PIN file and its verifier ------------------------------------------
#
# SoftHSM writes the token's flags into ``token.object`` on every failed
# C_Login (CKF_USER_PIN_COUNT_LOW, measured), and a network HSM counts the
# failure towards a lockout. A salted scrypt verifier written when the PIN is
# set lets a wrong PIN be refused before the token is touched, so a wrong PIN
# changes no token file. The verifier is not an authority: the token still
# checks the PIN at C_Login. The PIN is 128 random bits, so the verifier gives
# an offline attacker nothing to brute-force in practice.

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def verifier_path(pin_file: Path) -> Path:
    return pin_file.with_name(pin_file.name + ".verifier")


def _scrypt(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)


def write_pin_verifier(pin_file: Path, pin: str) -> None:
    salt = os.urandom(16)
    doc = {
        "scheme": "scrypt",
        "n": _SCRYPT_N,
        "r": _SCRYPT_R,
        "p": _SCRYPT_P,
        "salt": salt.hex(),
        "hash": _scrypt(pin, salt).hex(),
    }
    write_private(verifier_path(pin_file), json.dumps(doc).encode())


def check_pin_verifier(pin_file: Path, pin: str) -> bool | None:
    """True/False if a verifier exists next to the PIN file, None if there is none."""
    path = verifier_path(pin_file)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the PIN verifier {path} cannot be read",
            fix="restore it, or delete it to let the token alone check the PIN",
        ) from exc
    try:
        if doc["scheme"] != "scrypt" or (doc["n"], doc["r"], doc["p"]) != (
            _SCRYPT_N,
            _SCRYPT_R,
            _SCRYPT_P,
        ):
            raise ValueError("unsupported parameters")
        salt, expected = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["hash"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the PIN verifier {path} is malformed") from exc
    return hmac.compare_digest(_scrypt(pin, salt), expected)


def read_pin(pin_file: Path) -> str:
    """The PIN from its file, refusing files other users could read."""
    try:
        st = pin_file.stat()
        raw = pin_file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the PIN file {pin_file} does not exist",
            fix="run `clawql-secrets hsm` set-up (ensure_token) or point pin_file at the PIN",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the PIN file {pin_file} cannot be read") from exc
    if st.st_mode & 0o077:
        raise ConfigError(
            f"the PIN file {pin_file} is readable by other users (mode {st.st_mode & 0o777:o})",
            fix=f"chmod 600 {pin_file}",
        )
    pin = raw.strip("\r\n")
    if not pin:
        raise ConfigError(f"the PIN file {pin_file} is empty")
    return pin
