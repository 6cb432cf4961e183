"""``SessionPool``: slots, reuse, and the park/take hooks (pure: connections are stand-ins)."""

from __future__ import annotations

import threading

import pytest

from clawql_secrets.gateway.errors import BackendUnavailable
from clawql_secrets.gateway.tools.pool import SessionPool


class Conn:
    made = 0

    def __init__(self) -> None:
        Conn.made += 1
        self.n = Conn.made
        self.closed = False
        self.parked = 0

    def close(self) -> None:
        self.closed = True


class HookPool(SessionPool[Conn]):
    """Parks by counting; a connection marked ``bad_park`` / listed in ``refuse`` fails."""

    def __init__(self, size: int = 2) -> None:
        super().__init__(Conn, size, "u", lambda c: not c.closed)
        self.refuse: set[int] = set()
        self.bad_park: set[int] = set()
        self.taken: list[int] = []

    def _park(self, conn: Conn) -> None:
        if conn.n in self.bad_park:
            raise OSError("send failed")
        conn.parked += 1

    def _take(self, conn: Conn) -> bool:
        self.taken.append(conn.n)
        return conn.n not in self.refuse


def test_a_released_connection_is_parked_and_taken_again() -> None:
    pool = HookPool()
    with pool.connection() as c1:
        pass
    with pool.connection() as c2:
        assert c2 is c1
    assert (c1.parked, pool.taken, c1.closed) == (2, [c1.n], False)


def test_a_connection_refused_at_take_is_closed_and_replaced() -> None:
    pool = HookPool(size=1)
    with pool.connection() as c1:
        pass
    pool.refuse.add(c1.n)
    with pool.connection() as c2:
        assert c2 is not c1
    assert c1.closed and not c2.closed
    # Its slot was freed: the pool (size 1) could open the replacement.
    with pool.connection() as c3:
        assert c3 is c2


def test_a_connection_whose_park_fails_is_closed_not_kept() -> None:
    pool = HookPool(size=1)
    with pool.connection() as c1:
        pool.bad_park.add(c1.n)
    assert c1.closed
    with pool.connection() as c2:
        assert c2 is not c1 and pool.taken == []


def test_an_unusable_or_failed_call_connection_is_not_parked() -> None:
    pool = HookPool(size=1)
    with pytest.raises(RuntimeError), pool.connection() as c1:
        raise RuntimeError("the call failed")
    assert c1.closed and c1.parked == 0


def test_exhausted_and_closed_pools_refuse_with_codes() -> None:
    pool = HookPool(size=1)
    with pool.connection():
        with pytest.raises(BackendUnavailable) as exc, pool.connection(timeout=0.05):
            pass
        assert exc.value.code == "pool_exhausted"
    pool.close()
    with pytest.raises(BackendUnavailable) as exc, pool.connection():
        pass
    assert exc.value.code == "session_closed"


def test_a_waiter_gets_the_connection_released_by_another_thread() -> None:
    pool = HookPool(size=1)
    got: list[Conn] = []
    with pool.connection() as c1:
        t = threading.Thread(target=lambda: got.append(pool._acquire(5.0)))
        t.start()
        t.join(0.05)
        assert t.is_alive()  # waiting for the only slot
    t.join(5)
    assert got == [c1] and pool.taken == [c1.n]
