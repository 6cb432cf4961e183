"""A tiny blocking pool of one session's connections (no background threads).

Shared by the SQL tools: each session has its own pool of connections made with
the session's own dynamic user, closed when the session ends. ``rows_result``
is their shared row and byte limiting of a result.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from clawql_secrets.gateway.errors import BackendUnavailable


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class SessionPool(Generic[C]):
    def __init__(
        self, connect: Callable[[], C], size: int, user: str, usable: Callable[[C], bool]
    ) -> None:
        self._connect = connect
        self._usable = usable
        self._size = size
        self._idle: deque[C] = deque()
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        self.user = user

    def warm(
        self,
        errors: tuple[type[Exception], ...],
        translate: Callable[[Exception], Exception],
    ) -> None:
        """Open one connection now, so a bad credential fails this call, not the next."""
        try:
            with self.connection():
                pass
        except errors as exc:
            self.close()
            raise translate(exc) from None

    @contextlib.contextmanager
    def connection(self, timeout: float = 10.0) -> Iterator[C]:
        conn = self._acquire(timeout)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            self._release(conn, ok and self._usable(conn))

    # Hooks for a subclass: ``_park`` runs on a reusable connection as it goes idle (an
    # exception closes it instead); ``_take`` on an idle one as it is taken (False closes
    # it, and the pool takes or opens another).
    def _park(self, conn: C) -> None:
        return None

    def _take(self, conn: C) -> bool:
        return True

    def _acquire(self, timeout: float) -> C:
        deadline = time.monotonic() + timeout
        while True:
            conn: C | None = None
            with self._cond:
                while True:
                    if self._closed:
                        raise BackendUnavailable("session_closed", "this session's pool is closed")
                    if self._idle:
                        conn = self._idle.popleft()
                        break
                    if self._count < self._size:
                        self._count += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        raise BackendUnavailable(
                            "pool_exhausted", "too many concurrent calls for this session"
                        )
            if conn is None:
                try:
                    return self._connect()
                except BaseException:
                    self._forget(None)
                    raise
            if self._take(conn):
                return conn
            self._forget(conn)

    def _forget(self, conn: C | None) -> None:
        """One connection less: ``conn`` (if any) closed, its slot free for another."""
        with self._cond:
            self._count -= 1
            self._cond.notify()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _release(self, conn: C, reusable: bool) -> None:
        if reusable:
            try:
                self._park(conn)
            except Exception:
                reusable = False
        with self._cond:
            if reusable and not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
        self._forget(conn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._count -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def rows_result(
    columns: list[str],
    raws: Iterable[Sequence[Any]],
    max_rows: int,
    max_bytes: int,
    jsonable: Callable[[Any], Any],
) -> dict[str, Any]:
    """The tool result for ``raws``: at most ``max_rows`` rows and about ``max_bytes``
    of JSON, ``truncated`` when more was there. Stops reading ``raws`` at the limit."""
    rows: list[list[Any]] = []
    size, truncated = 0, False
    for raw in raws:
        if len(rows) == max_rows:
            truncated = True
            break
        row = [jsonable(v) for v in raw]
        size += len(json.dumps(row, default=str))
        if size > max_bytes:
            truncated = True
            break
        rows.append(row)
    return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated}
