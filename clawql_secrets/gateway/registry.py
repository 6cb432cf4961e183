"""The shared session registry: what any replica needs to serve or end a session.

It holds lease ids, state and expiry — never a credential: passwords and
tokens live only in the memory of the replica that uses them. Two
implementations of one interface: Redis (shared between replicas) and an
in-memory one for single-process tests.

Whoever writes the registry decides whether an ended session may call again,
so the Redis one is reached over TLS as a user OpenBao issues to each replica,
confined to the registry's keys and commands (``registry_creds``, ADR 0011).
When Redis refuses that user (its lease revoked or expired: Redis deletes it and
kills its connections), the operation is retried under a new one; every
other Redis failure is ``BackendUnavailable``.

Ordering that makes ending race-free: ``end`` flips the state first and then
reads the leases; ``add_lease`` adds only while the state is ``active``, in
one atomic step. A lease created concurrently with an end is therefore either
seen by ``end`` or refused by ``add_lease`` (and its creator revokes it).

It also keeps the counts the anomaly rules judge, shared by every replica:
``open`` counts the session's calls in a sliding window in the same atomic
step that checks its state, ``count_denied`` its denied calls. Each count is
a sorted set of the call times on the Redis server's clock (one clock for all
replicas), trimmed to the window and to at most ``cap`` entries, expiring
with the window.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from clawql_secrets.gateway.anomaly import Window
from clawql_secrets.gateway.errors import BackendUnavailable
from clawql_secrets.gateway.jwt_check import SessionClaims

ACTIVE, ENDED = "active", "ended"
# Records outlive the session's JWT by this much, so the ended state refuses it.
RETAIN_AFTER_EXP = 3600


@dataclass(frozen=True)
class SessionRecord:
    sid: str
    state: str
    tenant: str
    agent: str
    agent_role: str
    exp: int
    created: float
    ended_reason: str = ""
    leases: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Opened:
    """The session's state and, when counted, its calls in the window (this one included)."""

    state: str
    calls: int = 0


NO_COUNT = Window()


@dataclass(frozen=True)
class EndResult:
    """``transitioned`` is True for the one caller that ended the session."""

    transitioned: bool
    leases: tuple[str, ...]


class Registry(Protocol):
    def open(self, claims: SessionClaims, calls: Window = NO_COUNT) -> Opened: ...
    def count_denied(self, sid: str, window: Window) -> int: ...
    def get(self, sid: str) -> SessionRecord | None: ...
    def add_lease(self, sid: str, lease_id: str) -> bool: ...
    def end(self, sid: str, exp: int, reason: str) -> EndResult: ...
    def lease_revoked(self, sid: str, lease_id: str) -> None: ...
    def expired(self, now: float, limit: int = 100) -> list[str]: ...
    def pending(self, limit: int = 100) -> list[str]: ...
    def count_pending(self) -> int: ...
    def clear_pending(self, sid: str) -> None: ...
    def leases(self, sid: str) -> list[str]: ...
    def count_active(self) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


# -- Redis -----------------------------------------------------------------------
# Count one event in a sliding window: KEYS[n] the sorted set, window ms, cap, a
# unique member. Times come from the Redis server (one clock for every replica).
_WINDOW_ADD = """
local function window_add(key, window_ms, cap, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
  redis.call('PEXPIRE', key, window_ms)
  return redis.call('ZCARD', key)
end
"""
_OPEN = (
    _WINDOW_ADD
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'active', 'tenant', ARGV[2], 'agent', ARGV[3],
             'agent_role', ARGV[4], 'exp', ARGV[5], 'created', ARGV[6])
  redis.call('EXPIREAT', KEYS[1], ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  state = 'active'
end
local n = 0
if state == 'active' and tonumber(ARGV[8]) > 0 then
  n = window_add(KEYS[3], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10])
end
return {state, n}
"""
)
_COUNT = (
    _WINDOW_ADD
    + """
return window_add(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
"""
)
_ADD_LEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], redis.call('EXPIRETIME', KEYS[1]))
return 1
"""
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'ended' then return {0} end
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended_reason', ARGV[2], 'ended_at', ARGV[3])
if not state then redis.call('EXPIREAT', KEYS[1], ARGV[4]) end
redis.call('ZREM', KEYS[3], ARGV[1])
local leases = redis.call('SMEMBERS', KEYS[2])
if #leases > 0 then redis.call('SADD', KEYS[4], ARGV[1]) end
local out = {1}
for i, l in ipairs(leases) do out[i + 1] = l end
return out
"""
_LEASE_REVOKED = """
redis.call('SREM', KEYS[1], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""


class ClientSource(Protocol):
    """Where ``RedisRegistry`` gets its client (``registry_creds.RegistryConnection``)."""

    def client(self) -> redis.Redis: ...
    def replace(self, stale: redis.Redis) -> redis.Redis: ...
    def close(self) -> None: ...


class _Script:
    """A Lua script run by its SHA-1, loaded on a server that does not know it yet (a
    restarted Redis, a new connection's server)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, r: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return r.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            r.script_load(self.text)
            return r.evalsha(self.sha, len(keys), *keys, *args)


_ATTEMPTS = 3


def _unavailable(exc: redis.RedisError) -> BackendUnavailable:
    return BackendUnavailable(
        "registry_unavailable", f"the session registry failed ({type(exc).__name__})"
    )


class RedisRegistry:
    def __init__(self, source: ClientSource, prefix: str) -> None:
        self.source = source
        self._p = prefix
        self._open = _Script(_OPEN)
        self._add = _Script(_ADD_LEASE)
        self._end = _Script(_END)
        self._revoked = _Script(_LEASE_REVOKED)
        self._count = _Script(_COUNT)
        # Members of the windows' sorted sets: unique per process and event.
        self._member_prefix = f"{os.getpid()}.{os.urandom(4).hex()}."
        self._seq = itertools.count()

    def _member(self) -> str:
        return f"{self._member_prefix}{next(self._seq)}"

    def _k(self, sid: str) -> tuple[str, str]:
        return f"{self._p}:s:{sid}", f"{self._p}:s:{sid}:leases"

    @property
    def _active(self) -> str:
        return f"{self._p}:active"

    @property
    def _revoking(self) -> str:
        return f"{self._p}:revoking"

    def _call(self, op: Callable[[redis.Redis], Any]) -> Any:
        """``op`` on the current client; again on a new user while Redis refuses the one
        it ran as (at most ``_ATTEMPTS`` times: users can die back to back). A script
        that ran before its connection died runs twice: each is safe to repeat
        (``open`` may count one call twice; a repeated ``end`` reports no transition,
        and its leases are already in the revoking set for the sweeper)."""
        r, attempt = self.source.client(), 1
        while True:
            try:
                return op(r)
            except redis.ConnectionError as exc:  # includes AuthenticationError (user gone)
                if attempt >= _ATTEMPTS:
                    raise _unavailable(exc) from exc
            except redis.RedisError as exc:
                raise _unavailable(exc) from exc
            r, attempt = self.source.replace(r), attempt + 1

    def open(self, claims: SessionClaims, calls: Window = NO_COUNT) -> Opened:
        h, _ = self._k(claims.sid)
        keys = [h, self._active, f"{h}:calls"]
        args = [
            claims.sid,
            claims.tenant,
            claims.agent,
            claims.agent_role,
            claims.exp,
            time.time(),
            claims.exp + RETAIN_AFTER_EXP,
            calls.ms,
            calls.cap,
            self._member(),
        ]
        state, n = self._call(lambda r: self._open(r, keys, args))
        return Opened(str(state), int(n))

    def count_denied(self, sid: str, window: Window) -> int:
        if window.ms <= 0:
            return 0
        h, _ = self._k(sid)
        args = [window.ms, window.cap, self._member()]
        return int(self._call(lambda r: self._count(r, [f"{h}:denied"], args)))

    def get(self, sid: str) -> SessionRecord | None:
        h, lk = self._k(sid)
        data: dict[str, str] = self._call(lambda r: r.hgetall(h))
        if not data:
            return None
        leases: set[str] = self._call(lambda r: r.smembers(lk))
        return SessionRecord(
            sid=sid,
            state=data.get("state", ""),
            tenant=data.get("tenant", ""),
            agent=data.get("agent", ""),
            agent_role=data.get("agent_role", ""),
            exp=int(data.get("exp", "0") or 0),
            created=float(data.get("created", "0") or 0),
            ended_reason=data.get("ended_reason", ""),
            leases=frozenset(leases),
        )

    def add_lease(self, sid: str, lease_id: str) -> bool:
        keys = list(self._k(sid))
        return bool(self._call(lambda r: self._add(r, keys, [lease_id])))

    def end(self, sid: str, exp: int, reason: str) -> EndResult:
        h, lk = self._k(sid)
        keys = [h, lk, self._active, self._revoking]
        args = [sid, reason, time.time(), exp + RETAIN_AFTER_EXP]
        out = self._call(lambda r: self._end(r, keys, args))
        return EndResult(bool(out[0]), tuple(str(x) for x in out[1:]))

    def lease_revoked(self, sid: str, lease_id: str) -> None:
        _, lk = self._k(sid)
        self._call(lambda r: self._revoked(r, [lk, self._revoking], [sid, lease_id]))

    def expired(self, now: float, limit: int = 100) -> list[str]:
        return [
            str(x) for x in self._call(lambda r: r.zrangebyscore(self._active, 0, now, 0, limit))
        ]

    def pending(self, limit: int = 100) -> list[str]:
        return [str(x) for x in self._call(lambda r: r.srandmember(self._revoking, limit))]

    def count_pending(self) -> int:
        return int(self._call(lambda r: r.scard(self._revoking)))

    def clear_pending(self, sid: str) -> None:
        self._call(lambda r: r.srem(self._revoking, sid))

    def leases(self, sid: str) -> list[str]:
        lk = self._k(sid)[1]
        return sorted(str(x) for x in self._call(lambda r: r.smembers(lk)))

    def count_active(self) -> int:
        return int(self._call(lambda r: r.zcard(self._active)))

    def ping(self) -> bool:
        try:
            return bool(self._call(lambda r: r.ping()))
        except BackendUnavailable:
            return False

    def close(self) -> None:
        self.source.close()


# -- in memory ---------------------------------------------------------------------
@dataclass
class _Mem:
    rec: dict[str, Any]
    leases: set[str] = field(default_factory=set)


class MemoryRegistry:
    """Same semantics as Redis for one process (unit tests); ``clock`` times the windows."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._s: dict[str, _Mem] = {}
        self._revoking: set[str] = set()
        self._clock = clock
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}

    def _window_add(self, key: tuple[str, str], window: Window) -> int:
        now = self._clock()
        q = self._windows.setdefault(key, collections.deque())
        while q and q[0] <= now - window.seconds:
            q.popleft()
        q.append(now)
        while len(q) > window.cap:
            q.popleft()
        return len(q)

    def open(self, claims: SessionClaims, calls: Window = NO_COUNT) -> Opened:
        with self._lock:
            m = self._s.get(claims.sid)
            state = str(m.rec["state"]) if m else ACTIVE
            if m is None:
                self._new(claims)
            n = 0
            if state == ACTIVE and calls.ms > 0:
                n = self._window_add((claims.sid, "calls"), calls)
            return Opened(state, n)

    def count_denied(self, sid: str, window: Window) -> int:
        if window.ms <= 0:
            return 0
        with self._lock:
            return self._window_add((sid, "denied"), window)

    def _new(self, claims: SessionClaims) -> None:
        self._s[claims.sid] = _Mem(
            {
                "state": ACTIVE,
                "tenant": claims.tenant,
                "agent": claims.agent,
                "agent_role": claims.agent_role,
                "exp": claims.exp,
                "created": time.time(),
                "ended_reason": "",
            }
        )

    def get(self, sid: str) -> SessionRecord | None:
        with self._lock:
            m = self._s.get(sid)
            if not m:
                return None
            return SessionRecord(sid=sid, leases=frozenset(m.leases), **m.rec)

    def add_lease(self, sid: str, lease_id: str) -> bool:
        with self._lock:
            m = self._s.get(sid)
            if not m or m.rec["state"] != ACTIVE:
                return False
            m.leases.add(lease_id)
            return True

    def end(self, sid: str, exp: int, reason: str) -> EndResult:
        with self._lock:
            m = self._s.get(sid)
            if m and m.rec["state"] == ENDED:
                return EndResult(False, ())
            if not m:
                m = self._s[sid] = _Mem(
                    {
                        "state": ENDED,
                        "tenant": "",
                        "agent": "",
                        "agent_role": "",
                        "exp": exp,
                        "created": time.time(),
                        "ended_reason": reason,
                    }
                )
            m.rec["state"], m.rec["ended_reason"] = ENDED, reason
            self._windows.pop((sid, "calls"), None)
            self._windows.pop((sid, "denied"), None)
            if m.leases:
                self._revoking.add(sid)
            return EndResult(True, tuple(sorted(m.leases)))

    def lease_revoked(self, sid: str, lease_id: str) -> None:
        with self._lock:
            m = self._s.get(sid)
            if m:
                m.leases.discard(lease_id)
                if not m.leases:
                    self._revoking.discard(sid)

    def expired(self, now: float, limit: int = 100) -> list[str]:
        with self._lock:
            return [
                s for s, m in self._s.items() if m.rec["state"] == ACTIVE and m.rec["exp"] <= now
            ][:limit]

    def pending(self, limit: int = 100) -> list[str]:
        with self._lock:
            return list(self._revoking)[:limit]

    def count_pending(self) -> int:
        with self._lock:
            return len(self._revoking)

    def clear_pending(self, sid: str) -> None:
        with self._lock:
            self._revoking.discard(sid)

    def leases(self, sid: str) -> list[str]:
        with self._lock:
            m = self._s.get(sid)
            return sorted(m.leases) if m else []

    def count_active(self) -> int:
        with self._lock:
            return sum(1 for m in self._s.values() if m.rec["state"] == ACTIVE)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None
