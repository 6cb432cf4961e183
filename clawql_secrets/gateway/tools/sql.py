"""``sql.query``: one SQL statement as the session's own database user.

The user comes from ``<mount>/creds/<agent_role>-<tenant>`` read with the
agent's per-call token, so OpenBao decides what the session may reach; its
grants are confined to the tenant's schema. The first call of a session on a
replica creates the user and a small pool; later calls reuse it.

Per call, in this order:
  1. validate: sizes, parameter count, the database name, then the statement
     guard (``gateway/sqlguard.py``: parsed by the engine's grammar, one
     statement, classes allowed for the role, no refused function or setting,
     placeholders matching the parameters). Nothing is read from OpenBao and no
     connection is opened before all of it passed.
  2. run it in autocommit with a statement timeout the session cannot lift, the
     extended query protocol with ``$n`` parameters bound server-side, and
     ``standard_conforming_strings=on`` and UTF-8 pinned per connection (the
     lexing the guard assumed).
  3. stream the result in chunks; the row and byte limits stop the fetch, and
     what the server would still send is cancelled, never loaded.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import select
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway import sqlguard
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

# Rows per libpq result while streaming: memory holds one chunk, not the result.
_CHUNK = 64
# How long past the statement timeout a silent server is waited for.
_SLACK_S = 10.0


class SQLArgs(BaseModel):
    """One SQL statement, run as the session's own database user.

    Placeholders: PostgreSQL takes ``$1``, ``$2``…; MariaDB takes ``?``. ``%s`` is
    also accepted on both when no native placeholder is used. ``%`` is otherwise an
    ordinary character (``SELECT 5 % 2``, ``LIKE 'x%'``). Exactly one statement;
    which kinds (read, write…) depends on the agent role.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str = Field(
        min_length=1,
        description="one statement; PostgreSQL placeholders $1…$n, MariaDB placeholders ?",
    )
    params: list[Scalar] = Field(default=[], description="values for the placeholders, in order")
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


def _encodable(value: Scalar) -> bool:
    """False for a str with lone surrogates: JSON allows them (pydantic refuses them in
    ``sql`` but not inside the ``params`` union), no database takes them."""
    if not isinstance(value, str):
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _allowed_classes(
    databases: dict[str, DatabaseTarget],
) -> dict[str, dict[str, frozenset[str]]]:
    """Each database's ``statement_classes``, checked once at start: an unknown or
    never-grantable class is an operator error, not a per-call surprise."""
    out: dict[str, dict[str, frozenset[str]]] = {}
    for name, target in databases.items():
        out[name] = {}
        for role, classes in target.statement_classes.items():
            try:
                out[name][role] = sqlguard.grantable(classes)
            except ValueError as exc:
                raise ConfigError(
                    f"gateway config databases.{name}.statement_classes.{role}: {exc}",
                    fix="see docs: gateway configuration (statement classes)",
                ) from None
    return out


class SQLQueryTool:
    name = "sql.query"
    args_model = SQLArgs

    def __init__(self, databases: dict[str, DatabaseTarget], limits: SQLLimits) -> None:
        self.databases = databases
        self.limits = limits
        self._classes = _allowed_classes(databases)
        # A fixed statement: the timeout is a validated int from the config.
        self._timeout_ms = int(limits.statement_timeout_ms)
        self._reset_timeout = f"SET statement_timeout = {self._timeout_ms}".encode()

    def run(self, ctx: ToolContext, args: SQLArgs) -> dict[str, Any]:
        # 1. Validate everything before any credential is read or connection opened.
        lim = self.limits
        if not all(_encodable(v) for v in args.params):
            raise RequestRejected("sql_bad_param", "a parameter is not valid Unicode text")
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
        engine: sqlguard.Engine = "mariadb" if isinstance(target, MariaDBTarget) else "postgresql"
        if engine == "mariadb" and any(
            isinstance(v, float) and not math.isfinite(v) for v in args.params
        ):
            raise RequestRejected("sql_bad_param", "MariaDB has no NaN or infinite values")
        text = sqlguard.normalize_placeholders(engine, args.sql, len(args.params))
        stmt = sqlguard.classify(engine, text)
        allowed = self._classes[args.database].get(ctx.claims.agent_role, sqlguard.DEFAULT_CLASSES)
        sqlguard.check_statement(stmt, allowed)
        sqlguard.check_params(stmt, len(args.params))
        max_rows = min(args.max_rows or lim.max_rows, lim.max_rows)
        # 2. Run it as the session's user.
        if isinstance(target, MariaDBTarget):
            mpool = ctx.resource(f"maria:{args.database}", lambda: mariadb.open_pool(ctx, target))
            return mariadb.execute(mpool, stmt, list(args.params), max_rows, lim, _jsonable)
        pg = target
        pool = ctx.resource(f"pg:{args.database}", lambda: self._open_pool(ctx, pg))
        try:
            with pool.connection() as conn:
                return self._execute(conn, stmt, list(args.params), max_rows)
        except psycopg.Error as exc:
            raise _translate(exc, pool.user) from None

    def _open_pool(self, ctx: ToolContext, target: PostgresTarget) -> PGPool:
        user, password = read_credential(ctx, target.mount, target.creds_role_template, "database")
        # The lexing pglast assumes: standard_conforming_strings on (off would read
        # backslashes in '…' differently) and UTF-8 (client-only encodings such as SJIS or
        # GBK can hide a quote or backslash byte inside a character).
        options = f"-c statement_timeout={self._timeout_ms} -c standard_conforming_strings=on"

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
                client_encoding="UTF8",
                options=options,
            )

        pool = PGPool(connect, target.pool_size, user, self._reset_timeout)
        pool.warm((psycopg.Error,), lambda exc: _translate(exc, user))  # type: ignore[arg-type]
        return pool

    def _execute(
        self,
        conn: psycopg.Connection[Any],
        stmt: sqlguard.Statement,
        params: list[Scalar],
        max_rows: int,
    ) -> dict[str, Any]:
        # The connection comes with the statement timeout set (``PGPool``).
        deadline = time.monotonic() + self._timeout_ms / 1000 + _SLACK_S
        stream = _PGStream(conn, deadline)
        try:
            stream.send(stmt.sql.encode(), params)
            return stream.result(max_rows, self.limits.max_bytes)
        except _Stalled:
            conn.close()
            raise BackendUnavailable(
                "database_unavailable", "the database did not answer in time"
            ) from None


class _Stalled(Exception):
    """The server sent nothing for longer than the statement timeout allows."""


class _PGStream:
    """One statement's result, read a chunk of rows at a time (libpq chunked-rows mode).

    Memory holds one chunk. When the limits stop reading early, the rest is cancelled
    on the server and what is already in flight discarded chunk by chunk, so the
    connection goes back to the pool idle. Uses psycopg's public libpq layer
    (``pgconn``) and ``Transformer``, as ``PGPool`` does.
    """

    def __init__(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self._deadline = deadline
        self._tx = Transformer(conn)
        self._done = False

    def send(self, sql: bytes, params: Sequence[Scalar]) -> None:
        tx, pg = self._tx, self._pg
        values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params)) if params else None
        pg.send_query_params(
            sql,
            values,
            tx.types if params else None,
            tx.formats if params else None,
            result_format=pq.Format.BINARY,
        )
        pg.set_chunked_rows_mode(_CHUNK)
        while pg.flush() == 1:
            self._wait(select.POLLIN | select.POLLOUT)
            pg.consume_input()

    def result(self, max_rows: int, max_bytes: int) -> dict[str, Any]:
        first = self._next()
        if first is None:
            self._done = True
            return {"columns": [], "rows": [], "row_count": -1, "truncated": False}
        status = first.status
        if status == pq.ExecStatus.FATAL_ERROR:
            self._drain()
            raise pgerrors.error_from_result(first, self._conn.info.encoding)
        if status == pq.ExecStatus.COMMAND_OK:
            self._drain()
            count = first.command_tuples
            return {
                "columns": [],
                "rows": [],
                "row_count": -1 if count is None else count,
                "truncated": False,
            }
        if status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.TUPLES_CHUNK):
            # COPY and the like: the guard refuses them; a connection in that state is
            # not worth saving.
            self._conn.close()
            raise RequestRejected(
                "sql_unsupported_result", "the statement's result cannot be returned", status=422
            )
        enc = self._conn.info.encoding
        columns = [(first.fname(i) or b"").decode(enc, "replace") for i in range(first.nfields)]
        rows = self._rows(first)
        try:
            return rows_result(columns, rows, max_rows, max_bytes, _jsonable)
        finally:
            rows.close()
            if not self._done:
                self._abandon()

    def _rows(self, first: pq.abc.PGresult) -> Generator[tuple[Any, ...], None, None]:
        res: pq.abc.PGresult | None = first
        while res is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                self._drain()
                raise pgerrors.error_from_result(res, self._conn.info.encoding)
            if res.ntuples:
                self._tx.set_pgresult(res)
                yield from self._tx.load_rows(0, res.ntuples, tuple)
            res = self._next()
        self._done = True

    def _abandon(self) -> None:
        """The limits stopped reading: cancel the rest on the server, discard what came."""
        try:
            self._conn.cancel_safe(timeout=min(5.0, max(0.1, self._deadline - time.monotonic())))
            self._drain()
        except (psycopg.Error, _Stalled):
            self._conn.close()

    def _drain(self) -> None:
        while self._next() is not None:
            pass
        self._done = True

    def _next(self) -> pq.abc.PGresult | None:
        pg = self._pg
        while pg.is_busy():
            self._wait(select.POLLIN)
            pg.consume_input()
        return pg.get_result()

    def _wait(self, events: int) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _Stalled
        poller = select.poll()
        poller.register(self._pg.socket, events)
        if not poller.poll(left * 1000):
            raise _Stalled


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
