"""``sql.query``: one SQL statement as the session's own PostgreSQL user.

The user comes from ``<mount>/creds/<agent_role>-<tenant>`` read with the
agent's per-call token, so OpenBao decides what the session may reach; its
grants are confined to the tenant's schema. The first call of a session on a
replica creates the user and a small pool; later calls reuse it. Every call
runs in its own transaction with a statement timeout, the extended query
protocol (exactly one statement, parameters bound server-side), and row and
byte limits on the result.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import select
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.gateway.config import (
    DatabaseTarget,
    GatewayConfig,
    MariaDBTarget,
    PostgresTarget,
    SQLLimits,
)
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, mariadb, read_credential
from clawql_secrets.gateway.tools.pool import SessionPool, rows_result

Scalar = str | int | float | bool | None


class SQLArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str = Field(min_length=1)
    params: list[Scalar] = []
    database: str = "default"
    max_rows: int | None = Field(default=None, ge=1)


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """Open and outside any transaction: a ``BEGIN`` does not outlive its call (closing
    the connection rolls it back), so each call starts clean."""
    return not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE


class PGPool(SessionPool[psycopg.Connection[Any]]):
    """A session's connections; each starts every call with the configured statement timeout.

    A new connection gets it at connect; after each call it is re-set, so that a hostile
    ``SET`` does not outlive its call, off the call's critical path: the reset is sent as
    the connection goes back to the pool (``_park``, one libpq ``PQsendQuery`` of a fixed
    statement) and its answer read when the connection is next taken (``_take``), before
    anything else runs on it. By then it has long arrived, so a warm call makes one round
    trip to PostgreSQL, not two (ADR 0005, "Performance"). A connection whose reset failed,
    or did not answer within ``wait`` seconds, is closed, not used.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        size: int,
        user: str,
        reset: bytes,
        wait: float = 5.0,
    ) -> None:
        super().__init__(connect, size, user, _reusable)
        self._reset = reset
        self._wait = wait

    def _park(self, conn: psycopg.Connection[Any]) -> None:
        pg = conn.pgconn
        pg.send_query(self._reset)
        if pg.flush() != 0:
            raise psycopg.OperationalError("the statement timeout reset was not sent")

    def _take(self, conn: psycopg.Connection[Any]) -> bool:
        pg = conn.pgconn
        ok = True
        try:
            deadline = time.monotonic() + self._wait
            pg.consume_input()
            if pg.is_busy():  # rare: the answer has not arrived yet; poll has no fd limit
                poller = select.poll()
                poller.register(pg.socket, select.POLLIN)
                while pg.is_busy():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    poller.poll(left * 1000)
                    pg.consume_input()
            while (res := pg.get_result()) is not None:
                ok = ok and res.status == pq.ExecStatus.COMMAND_OK
        except psycopg.Error:
            return False
        return ok and _reusable(conn)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class SQLQueryTool:
    name = "sql.query"
    args_model = SQLArgs

    def __init__(self, databases: dict[str, DatabaseTarget], limits: SQLLimits) -> None:
        self.databases = databases
        self.limits = limits
        # A fixed statement: the timeout is a validated int from the config.
        self._timeout_ms = int(limits.statement_timeout_ms)
        self._reset_timeout = f"SET statement_timeout = {self._timeout_ms}".encode()

    def run(self, ctx: ToolContext, args: SQLArgs) -> dict[str, Any]:
        lim = self.limits
        if len(args.sql.encode()) > lim.max_sql_bytes:
            raise RequestRejected(
                "sql_too_large", f"the SQL text exceeds {lim.max_sql_bytes} bytes", status=413
            )
        if len(args.params) > lim.max_params:
            raise RequestRejected("too_many_params", f"more than {lim.max_params} parameters")
        target = self.databases.get(args.database)
        if target is None:
            raise RequestRejected(
                "unknown_database", f"no database named {args.database[:64]!r}", status=404
            )
        max_rows = min(args.max_rows or lim.max_rows, lim.max_rows)
        if isinstance(target, MariaDBTarget):
            mpool = ctx.resource(f"maria:{args.database}", lambda: mariadb.open_pool(ctx, target))
            return mariadb.execute(mpool, args.sql, list(args.params), max_rows, lim, _jsonable)
        pg = target
        pool = ctx.resource(f"pg:{args.database}", lambda: self._open_pool(ctx, pg))
        try:
            with pool.connection() as conn:
                return self._execute(conn, args, max_rows)
        except psycopg.Error as exc:
            raise _translate(exc, pool.user) from None

    def _open_pool(self, ctx: ToolContext, target: PostgresTarget) -> PGPool:
        user, password = read_credential(ctx, target.mount, target.creds_role_template, "database")

        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(
                host=target.host,
                port=target.port,
                dbname=target.dbname,
                user=user,
                password=password,
                connect_timeout=target.connect_timeout,
                application_name="clawql-gateway",
                sslmode="disable" if target.host.startswith("127.") else "require",
                autocommit=True,
                options=f"-c statement_timeout={self._timeout_ms}",
            )

        pool = PGPool(connect, target.pool_size, user, self._reset_timeout)
        pool.warm((psycopg.Error,), lambda exc: _translate(exc, user))  # type: ignore[arg-type]
        return pool

    def _execute(
        self, conn: psycopg.Connection[Any], args: SQLArgs, max_rows: int
    ) -> dict[str, Any]:
        lim = self.limits
        # The connection comes with the statement timeout set (``PGPool``).
        with conn.cursor() as cur:
            # binary=True forces the extended protocol: exactly one statement.
            cur.execute(args.sql.encode(), args.params, prepare=False, binary=True)
            if cur.description is None:
                return {"columns": [], "rows": [], "row_count": cur.rowcount, "truncated": False}
            columns = [d.name for d in cur.description]
            raws = cur.fetchmany(max_rows + 1)
        return rows_result(columns, raws, max_rows, lim.max_bytes, _jsonable)


def _translate(exc: psycopg.Error, user: str) -> Exception:
    """A coded error whose message names no user and carries no backend text verbatim."""
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or "").replace(user, "<session user>")[:300]
    if isinstance(exc, pgerrors.QueryCanceled):
        return RequestRejected("sql_timeout", "the statement exceeded its time limit", status=422)
    if isinstance(exc, pgerrors.InsufficientPrivilege):
        return AccessDenied("sql_permission_denied", f"the database refused: {primary}")
    if isinstance(exc, psycopg.OperationalError) or exc.sqlstate is None:
        return BackendUnavailable(
            "database_unavailable", "the database connection failed or was terminated"
        )
    if exc.sqlstate.startswith("57P"):
        return BackendUnavailable("database_unavailable", "the database connection was terminated")
    return RequestRejected(
        "sql_error", f"the database rejected the statement ({exc.sqlstate}): {primary}", status=422
    )


def factory(config: GatewayConfig) -> SQLQueryTool:
    return SQLQueryTool(dict(config.databases), config.sql)
