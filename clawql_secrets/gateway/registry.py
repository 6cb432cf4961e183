"""The shared session registry: what any replica needs to serve or end a session.

It holds lease ids, state and expiry — never a credential: passwords and
tokens live only in the memory of the replica that uses them. Two
implementations of one interface: Redis (shared between replicas) and an
in-memory one for single-process tests.

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
import itertools
import os
import threading
import time
from collections.abc import Callable
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


class RedisRegistry:
    def __init__(self, url: str, prefix: str) -> None:
        self._r = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._p = prefix
        self._open = self._r.register_script(_OPEN)
        self._add = self._r.register_script(_ADD_LEASE)
        self._end = self._r.register_script(_END)
        self._revoked = self._r.register_script(_LEASE_REVOKED)
        self._count = self._r.register_script(_COUNT)
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

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise BackendUnavailable(
                "registry_unavailable", f"the session registry failed ({type(exc).__name__})"
            ) from exc

    def open(self, claims: SessionClaims, calls: Window = NO_COUNT) -> Opened:
        h, _ = self._k(claims.sid)
        state, n = self._call(
            self._open,
            keys=[h, self._active, f"{h}:calls"],
            args=[
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
            ],
        )
        return Opened(str(state), int(n))

    def count_denied(self, sid: str, window: Window) -> int:
        if window.ms <= 0:
            return 0
        h, _ = self._k(sid)
        return int(
            self._call(
                self._count, keys=[f"{h}:denied"], args=[window.ms, window.cap, self._member()]
            )
        )

    def get(self, sid: str) -> SessionRecord | None:
        h, lk = self._k(sid)
        data: dict[str, str] = self._call(self._r.hgetall, h)
        if not data:
            return None
        leases: set[str] = self._call(self._r.smembers, lk)
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
        h, lk = self._k(sid)
        return bool(self._call(self._add, keys=[h, lk], args=[lease_id]))

    def end(self, sid: str, exp: int, reason: str) -> EndResult:
        h, lk = self._k(sid)
        out = self._call(
            self._end,
            keys=[h, lk, self._active, self._revoking],
            args=[sid, reason, time.time(), exp + RETAIN_AFTER_EXP],
        )
        return EndResult(bool(out[0]), tuple(str(x) for x in out[1:]))

    def lease_revoked(self, sid: str, lease_id: str) -> None:
        _, lk = self._k(sid)
        self._call(self._revoked, keys=[lk, self._revoking], args=[sid, lease_id])

    def expired(self, now: float, limit: int = 100) -> list[str]:
        return list(self._call(self._r.zrangebyscore, self._active, 0, now, 0, limit))

    def pending(self, limit: int = 100) -> list[str]:
        return list(self._call(self._r.srandmember, self._revoking, limit))

    def count_pending(self) -> int:
        return int(self._call(self._r.scard, self._revoking))

    def clear_pending(self, sid: str) -> None:
        self._call(self._r.srem, self._revoking, sid)

    def leases(self, sid: str) -> list[str]:
        return sorted(self._call(self._r.smembers, self._k(sid)[1]))

    def count_active(self) -> int:
        return int(self._call(self._r.zcard, self._active))

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._r.close()


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
