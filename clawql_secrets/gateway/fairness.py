"""Fair shares of tool-call capacity, taken at the ASGI edge before a call gets a thread.

A tool call holds a worker thread for its whole life (OpenBao login, SQL). With
one shared pool, one tenant's burst of slow calls used to occupy every thread
and queue every other tenant behind it. Here each call first takes a slot in
three counted pools — its session (``per_session``), its tenant
(``per_tenant``) and the gateway (``total``) — in that order, then runs on a
thread limiter of ``total`` threads that only tool calls use, so a call that
holds its slots never waits for a thread, and a waiting call holds no thread.

A slot that is not free at once is waited for, FIFO per key, at most
``slot_wait`` seconds in all; then the call is refused with 429
``session_busy`` / ``tenant_busy`` (the caller is over its share) or 503
``gateway_busy`` (the gateway is full), with ``Retry-After`` from a moving
average of how long calls hold their slot. Slots already taken are given back
on refusal or cancellation, and a freed slot passes straight to the first
waiter of its key, so nothing barges ahead of a queue.

Single event loop, no locks: every method runs on the loop's thread.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import anyio

from clawql_secrets.gateway.edge_settings import EdgeLimits
from clawql_secrets.gateway.errors import BackendUnavailable, RequestRejected

_ALL = ""
# Retry-After bounds (seconds) and the weight of the newest hold time in the average.
_RETRY_MIN, _RETRY_MAX, _ALPHA = 1, 30, 0.1


class Busy(RequestRejected):
    """429: the session or tenant already has its share of calls in flight."""

    def __init__(self, code: str, message: str, *, retry_after: int) -> None:
        super().__init__(code, message, status=429)
        self.retry_after = retry_after


class Overloaded(BackendUnavailable):
    """503: the gateway as a whole is at ``total`` calls."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__("gateway_busy", message, status=503)
        self.retry_after = retry_after


class _Gate:
    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: deque[anyio.Event] = deque()


class Pool:
    """At most ``limit`` slots per key; a key's state exists only while it is used."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, _Gate] = {}

    def held(self, key: str) -> int:
        gate = self._gates.get(key)
        return gate.held if gate is not None else 0

    def waiting(self, key: str) -> int:
        gate = self._gates.get(key)
        return len(gate.waiters) if gate is not None else 0

    def __len__(self) -> int:
        """Keys with slots held or waited for (what the pool keeps in memory)."""
        return len(self._gates)

    def try_acquire(self, key: str) -> bool:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.held < self.limit and not gate.waiters:
            gate.held += 1
            return True
        return False

    async def acquire(self, key: str, timeout: float) -> bool:
        """A slot within ``timeout`` seconds (True), or nothing taken (False)."""
        if self.try_acquire(key):
            return True
        gate = self._gates[key]
        if timeout <= 0:
            return False
        event = anyio.Event()
        gate.waiters.append(event)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        except BaseException:
            # Cancelled from outside: a slot handed over meanwhile is passed on.
            self._leave(key, gate, event)
            raise
        if event.is_set():  # handed over, even if the timeout fired at the same time
            return True
        self._leave(key, gate, event)
        return False

    def _leave(self, key: str, gate: _Gate, event: anyio.Event) -> None:
        if event.is_set():
            self.release(key)
            return
        gate.waiters.remove(event)
        if gate.held == 0 and not gate.waiters:
            del self._gates[key]

    def release(self, key: str) -> None:
        gate = self._gates[key]
        if gate.waiters:
            gate.waiters.popleft().set()  # the slot passes to the first waiter
            return
        gate.held -= 1
        if gate.held == 0:
            del self._gates[key]


class FairShare:
    """The three pools, the tool-call thread limiter and the Retry-After estimate."""

    def __init__(self, limits: EdgeLimits, *, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.sessions = Pool(limits.per_session)
        self.tenants = Pool(limits.per_tenant)
        self.gateway = Pool(limits.total)
        # Tool calls run here and nowhere else; ``total`` slots, ``total`` threads.
        self.threads = anyio.CapacityLimiter(limits.total)
        self._clock = clock
        self._hold = 0.0  # moving average of the seconds a call holds its slots

    @property
    def retry_after(self) -> int:
        return min(max(_RETRY_MIN, math.ceil(self._hold)), _RETRY_MAX)

    async def acquire(self, sid: str, tenant: str) -> float:
        """Take the session's, the tenant's and a gateway slot; returns the start time
        to hand to ``release``. Raises ``Busy`` / ``Overloaded`` with nothing held."""
        wait = self.limits.slot_wait
        deadline = 0.0
        if not self.sessions.try_acquire(sid):
            deadline = anyio.current_time() + wait
            if not await self.sessions.acquire(sid, wait):
                raise Busy(
                    "session_busy",
                    f"this session already has {self.sessions.limit} tool calls in flight",
                    retry_after=self.retry_after,
                )
        try:
            if not self.tenants.try_acquire(tenant):
                deadline = deadline or anyio.current_time() + wait
                if not await self.tenants.acquire(tenant, deadline - anyio.current_time()):
                    raise Busy(
                        "tenant_busy",
                        f"this tenant already has {self.tenants.limit} tool calls in flight",
                        retry_after=self.retry_after,
                    )
            try:
                if not self.gateway.try_acquire(_ALL):
                    deadline = deadline or anyio.current_time() + wait
                    if not await self.gateway.acquire(_ALL, deadline - anyio.current_time()):
                        raise Overloaded(
                            "the gateway is at its limit of concurrent tool calls",
                            retry_after=self.retry_after,
                        )
            except BaseException:
                self.tenants.release(tenant)
                raise
        except BaseException:
            self.sessions.release(sid)
            raise
        return self._clock()

    def release(self, sid: str, tenant: str, started: float) -> None:
        self._hold += (self._clock() - started - self._hold) * _ALPHA
        self.gateway.release(_ALL)
        self.tenants.release(tenant)
        self.sessions.release(sid)


class AuthFailures:
    """Failed authentications per client address, in a sliding window.

    A bearer that fails verification costs a signature check on the event loop;
    a client flooding forged tokens must not slow everyone else (red team:
    another tenant's ``SELECT 1`` went from 5 to 121 ms under 1,900 forged
    requests a second). Past ``limit`` failures in ``window`` seconds an address
    gets 429 ``auth_failures`` with ``Retry-After`` before anything is verified;
    addresses whose failures have aged out are forgotten. ``limit`` 0 disables.
    Behind a proxy every client shares its address: size ``limit`` for that.
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}

    def check(self, address: str) -> None:
        if not self._limit:
            return
        times = self._seen.get(address)
        if times is None:
            return
        now = self._clock()
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._seen[address]
        elif len(times) >= self._limit:
            wait = max(1, int(times[0] + self._window - now + 0.999))
            raise Busy(
                "auth_failures",
                "too many failed authentications from this address",
                retry_after=min(wait, _RETRY_MAX),
            )

    def failed(self, address: str) -> None:
        if not self._limit:
            return
        if len(self._seen) >= _MAX_ADDRESSES and address not in self._seen:
            self._seen.clear()  # bounded memory; the budget restarts
        # Only the newest ``limit`` failures matter: the deque drops older ones itself.
        self._seen.setdefault(address, deque(maxlen=self._limit)).append(self._clock())


_MAX_ADDRESSES = 65_536
