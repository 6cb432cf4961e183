"""The registry's Redis client, as a user OpenBao issues to this replica (ADR 0011).

The gateway reaches its session registry as a Redis ACL user that OpenBao's
registry mount creates for it: confined to the registry's keys and commands,
one per replica, minutes-lived. ``RegistryConnection`` keeps one current:

1. Issue: log in with the gateway's own identity and read ``creds_path`` with
   that token. The token is the lease's parent and is kept by accessor only,
   never itself: revoking it takes the Redis user with it, and if this replica
   dies both end at their TTL.
2. Connect over TLS (the configured CA; certificate and host name verified),
   with no retries of redis-py's own (``RedisRegistry`` decides), and check the
   user with a PING before anything uses it.
3. Re-issue at ``reissue_at`` of the lease, in a background thread, and swap.
   The previous client stays usable for ``GRACE`` seconds so that calls in
   flight on it finish; then it is closed and its token revoked by accessor
   (OpenBao deletes the user).
4. When Redis refuses the current user (lease revoked or expired: Redis deletes
   it and kills its connections), ``replace`` issues a new one at once — once,
   however many threads saw the failure — and the caller retries its operation
   under it (``RedisRegistry._call``).

OpenBao down: the current user keeps working (OpenBao enforces its expiry
when it is back); re-issue is retried with backoff. With no usable user the
registry is unavailable (``BackendUnavailable``), at most one issuance attempt
per ``RETRY_FLOOR`` seconds however many calls arrive, and no call waits more
than ``ISSUE_WAIT`` seconds for another's attempt (a restarting Redis can make
OpenBao's plugin hang for seconds).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ClawQLError, ConfigError, OpenBaoError
from clawql_secrets.gateway import identity
from clawql_secrets.gateway.config import GatewayIdentity, RegistrySettings
from clawql_secrets.gateway.errors import BackendUnavailable

log = logging.getLogger("clawql_secrets.gateway.registry")

GRACE = 5.0  # seconds a replaced client stays usable (> 2 socket timeouts)
RETRY_FLOOR = 1.0
ISSUE_WAIT = 5.0  # at most this long a call waits for another thread's issuance
RETRY_MAX = 30.0
TICK = 0.25
SOCKET_TIMEOUT = 2.0


@dataclass(frozen=True)
class Credential:
    """A Redis user OpenBao issued; ``accessor`` is its parent token's."""

    username: str
    password: str = field(repr=False)
    lease_id: str
    lease_duration: int
    accessor: str


class Issuer(Protocol):
    def issue(self) -> Credential: ...
    def retire(self, cred: Credential) -> None: ...


class OpenBaoIssuer:
    """Reads ``creds_path`` as the gateway; retires by revoking the parent token."""

    def __init__(self, bao: OpenBaoClient, ident: GatewayIdentity, creds_path: str) -> None:
        self._bao = bao
        self._ident = ident
        self._path = creds_path

    def issue(self) -> Credential:
        login = identity.login(self._bao, self._ident)
        try:
            resp = self._bao.read(self._path, token=login.token)
        except ClawQLError:
            self._revoke_self(login.token)  # it anchors nothing
            raise
        data = resp.pop("data", None) or {}
        cred = Credential(
            str(data.pop("username", "") or ""),
            str(data.pop("password", "") or ""),
            str(resp.get("lease_id") or ""),
            int(resp.get("lease_duration") or 0),
            login.accessor,
        )
        data.clear()
        if not (cred.username and cred.password and cred.lease_id and cred.accessor):
            self._revoke_self(login.token)
            raise BackendUnavailable(
                "registry_unavailable", f"OpenBao returned no usable credential at {self._path}"
            )
        return cred

    def retire(self, cred: Credential) -> None:
        login = identity.login(self._bao, self._ident)
        try:
            self._bao.write(
                "auth/token/revoke-accessor", {"accessor": cred.accessor}, token=login.token
            )
        except OpenBaoError as exc:
            if exc.status != 400:  # 400: already gone (expired, or revoked elsewhere)
                raise
        finally:
            self._revoke_self(login.token)

    def _revoke_self(self, token: str) -> None:
        with contextlib.suppress(ClawQLError):
            self._bao.request("POST", "auth/token/revoke-self", token=token, retry_for=1)


@dataclass(frozen=True)
class _Current:
    client: redis.Redis
    cred: Credential
    due: float  # when to re-issue (``clock`` time)


class RegistryConnection:
    """The registry's current Redis client under a credential kept fresh (module doc)."""

    def __init__(
        self,
        settings: RegistrySettings,
        issuer: Issuer,
        *,
        clock: Callable[[], float] = time.monotonic,
        grace: float = GRACE,
    ) -> None:
        try:
            ssl.create_default_context(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the CA certificate {settings.ca_file} that verifies the "
                "session registry's Redis",
                fix="check registry.ca_file; for the local stack run `clawql-secrets up` first",
            ) from exc
        self._settings = settings
        self._issuer = issuer
        self._clock = clock
        self._grace = grace
        self._lock = threading.Lock()  # _current, _retiring
        self._issue_lock = threading.Lock()  # one issuance at a time
        self._current: _Current | None = None
        self._retiring: list[tuple[float, _Current]] = []
        self._failed_until = 0.0
        self._next_try = 0.0
        self._delay = RETRY_FLOOR
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def username(self) -> str | None:
        """The current Redis user's name (not a secret), if any."""
        cur = self._current
        return cur.cred.username if cur else None

    @property
    def lease_id(self) -> str | None:
        cur = self._current
        return cur.cred.lease_id if cur else None

    def client(self) -> redis.Redis:
        cur = self._current
        if cur is not None:
            return cur.client
        return self._renew(None).client

    def replace(self, stale: redis.Redis) -> redis.Redis:
        """A client under a new user, after Redis refused ``stale``'s; issued once
        whatever the number of threads that saw the refusal."""
        return self._renew(stale).client

    def rotate(self) -> None:
        """Re-issue now (what the background thread does at ``reissue_at``)."""
        cur = self._current
        self._renew(cur.client if cur else None, force=cur is not None)

    def close(self) -> None:
        """Stop re-issuing; close every client and revoke every user this replica holds."""
        with self._issue_lock:
            self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._lock:
            held = [c for _, c in self._retiring]
            if self._current is not None:
                held.append(self._current)
            self._current, self._retiring = None, []
        for cur in held:
            self._retire(cur)

    # -- internals ---------------------------------------------------------------------
    def _renew(self, stale: redis.Redis | None, *, force: bool = False) -> _Current:
        if not self._issue_lock.acquire(timeout=ISSUE_WAIT):
            raise BackendUnavailable(
                "registry_unavailable", "the session registry is waiting for a credential"
            )
        try:
            cur = self._current
            if cur is not None and cur.client is not stale:
                return cur  # there already, or replaced meanwhile by another thread
            if self._closed:
                raise BackendUnavailable("registry_unavailable", "the session registry is closed")
            if not force and self._clock() < self._failed_until:
                raise BackendUnavailable(
                    "registry_unavailable",
                    "the session registry has no credential (OpenBao failed to issue one)",
                )
            try:
                new = self._issue()
            except ClawQLError as exc:
                self._failed_until = self._clock() + RETRY_FLOOR
                log.warning("registry credential issue failed (%s)", type(exc).__name__)
                if isinstance(exc, BackendUnavailable):
                    raise
                raise BackendUnavailable(
                    "registry_unavailable",
                    "the session registry's credential could not be issued",
                ) from exc
            with self._lock:
                old, self._current = self._current, new
                if old is not None:
                    self._retiring.append((self._clock() + self._grace, old))
            self._start_thread()
            log.info(
                "registry credential issued user=%s lease_ttl=%ds%s",
                new.cred.username,
                new.cred.lease_duration,
                f" (replacing {old.cred.username})" if old is not None else "",
            )
            return new
        finally:
            self._issue_lock.release()

    def _issue(self) -> _Current:
        cred = self._issuer.issue()
        client = self._connect(cred)
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            with contextlib.suppress(ClawQLError):
                self._issuer.retire(cred)
            raise BackendUnavailable(
                "registry_unavailable",
                f"the session registry refused a new credential ({type(exc).__name__})",
            ) from exc
        life = max(cred.lease_duration, 1) * self._settings.reissue_at
        return _Current(client, cred, self._clock() + life)

    def _connect(self, cred: Credential) -> redis.Redis:
        s = self._settings
        return redis.Redis(
            host=s.host,
            port=s.port,
            username=cred.username,
            password=cred.password,
            ssl=True,
            ssl_ca_certs=str(s.ca_file),
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_min_version=ssl.TLSVersion.TLSv1_2,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            driver_info=None,  # no CLIENT SETINFO: not a command the user may run
        )

    def _retire(self, cur: _Current) -> None:
        with contextlib.suppress(redis.RedisError):
            cur.client.close()
        try:
            self._issuer.retire(cur.cred)
        except ClawQLError as exc:
            # It dies at its TTL instead.
            log.warning(
                "registry credential retire failed user=%s (%s)",
                cur.cred.username,
                type(exc).__name__,
            )

    def _start_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name="registry-credentials", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            now = self._clock()
            with self._lock:
                due = [c for t, c in self._retiring if t <= now]
                self._retiring = [(t, c) for t, c in self._retiring if t > now]
            for old in due:
                self._retire(old)
            cur = self._current
            if cur is None or now < cur.due or now < self._next_try:
                continue
            try:
                self._renew(cur.client, force=True)
                self._delay = RETRY_FLOOR
            except BackendUnavailable:
                self._next_try = self._clock() + self._delay
                self._delay = min(self._delay * 2, RETRY_MAX)


def connect(
    settings: RegistrySettings, bao: OpenBaoClient, ident: GatewayIdentity
) -> RegistryConnection:
    """The production wiring: the gateway's identity, ``settings.creds_path``."""
    return RegistryConnection(settings, OpenBaoIssuer(bao, ident, settings.creds_path))
