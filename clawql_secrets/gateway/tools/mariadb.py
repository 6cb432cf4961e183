"""``sql.query`` on MariaDB: one statement as the session's own dynamic user.

The user comes from ``<mount>/creds/<agent_role>-<tenant>`` (OpenBao's
mysql-database-plugin) read with the agent's per-call token; its grants are
confined to the tenant's database. Same shape as the PostgreSQL path: a small
per-session pool kept as a session resource, a statement timeout
(``max_statement_time``, re-set before every call), and row and byte limits.

The statement has passed the guard (``gateway/sqlguard.py``) before this module
sees it. Parameters (``?``) are bound here as literals escaped by PyMySQL for
this connection, and the bound text is re-lexed by the guard to prove each value
stayed one literal. The connection is opened without ``CLIENT.MULTI_STATEMENTS``
(the server refuses a second statement) and without ``LOCAL INFILE``, with
``sql_mode`` cleared of the modes that change how strings and quotes are lexed
(so the server reads the text as the guard did). The result is read unbuffered;
``sql_select_limit`` (max rows + 1) bounds what the server sends for a plain
SELECT, and when the limits stop reading before the end the connection is
dropped instead of draining the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeAlias

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT, SERVER_STATUS

from clawql_secrets.gateway import sqlguard
from clawql_secrets.gateway.config import MariaDBTarget, SQLLimits
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, read_credential
from clawql_secrets.gateway.tools.pool import SessionPool, rows_result

Conn: TypeAlias = Any  # pymysql.connections.Connection (PyMySQL ships no type hints)

_DENIED = {1044, 1045, 1142, 1143, 1227, 1370}
_TIMEOUT = {1969, 3024}
_GONE = {2003, 2006, 2013, 1927, 4031}
# sql_mode flags under which MariaDB lexes strings or quotes differently from the guard
# (backslashes, "…" as identifiers) or parses another dialect.
_LEXING_MODES = frozenset(
    {"NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI", "ORACLE", "MSSQL", "DB2", "POSTGRESQL", "MAXDB"}
)


class MariaDBPool(SessionPool[Conn]):
    def __init__(self, connect: Callable[[], Conn], size: int, user: str) -> None:
        super().__init__(connect, size, user, _reusable)


def _reusable(conn: Conn) -> bool:
    """Open and outside any transaction: a ``BEGIN`` does not outlive its call."""
    return bool(conn.open) and not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS


def _pin_lexing(conn: Conn) -> None:
    """Clear the ``sql_mode`` flags that would make the server read the text differently
    from the guard. Sessions cannot set them back: ``SET`` of ``sql_mode`` is refused."""
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        cur.execute("SELECT @@SESSION.sql_mode")
        row = cur.fetchone()
        modes = str(row[0] if row else "").split(",")
        kept = [m for m in modes if m and m.upper() not in _LEXING_MODES]
        if len(kept) != len([m for m in modes if m]):
            cur.execute("SET SESSION sql_mode = %s", [",".join(kept)])


def open_pool(ctx: ToolContext, target: MariaDBTarget) -> MariaDBPool:
    user, password = read_credential(ctx, target.mount, target.creds_role_template, "database")
    dbname = target.dbname.format(tenant=ctx.claims.tenant)

    def connect() -> Conn:
        conn = pymysql.connect(
            host=target.host,
            port=target.port,
            user=user,
            password=password,
            database=dbname,
            connect_timeout=target.connect_timeout,
            cursorclass=pymysql.cursors.SSCursor,
            client_flag=CLIENT.MULTI_RESULTS,  # no MULTI_STATEMENTS: one statement per call
            local_infile=False,
            autocommit=True,
            program_name="clawql-gateway",
        )
        try:
            _pin_lexing(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    pool = MariaDBPool(connect, target.pool_size, user)
    pool.warm((pymysql.MySQLError,), lambda exc: translate(exc, user))
    return pool


def execute(
    pool: MariaDBPool,
    stmt: sqlguard.Statement,
    params: list[Any],
    max_rows: int,
    lim: SQLLimits,
    jsonable: Callable[[Any], Any],
) -> dict[str, Any]:
    try:
        with pool.connection() as conn:
            with conn.cursor() as cur:
                # Re-set per call (a hostile SET from an earlier call is undone). The
                # select limit bounds what a plain SELECT sends past a truncation.
                cur.execute(
                    "SET SESSION max_statement_time = %s, sql_select_limit = %s",
                    [lim.statement_timeout_ms / 1000, max_rows + 1],
                )
            text = stmt.sql
            if params:
                text = sqlguard.bind_mariadb(stmt, [str(conn.escape(p)) for p in params])
            return _run(conn, text, max_rows, lim, jsonable)
    except pymysql.MySQLError as exc:
        raise translate(exc, pool.user) from None


def _run(
    conn: Conn, text: str, max_rows: int, lim: SQLLimits, jsonable: Callable[[Any], Any]
) -> dict[str, Any]:
    cur = conn.cursor()
    try:
        cur.execute(text)  # no args: PyMySQL does no %-formatting of the text
    except BaseException:
        cur.close()  # an error packet ends the result: nothing left to read
        raise
    finished = False
    try:
        if cur.description is None:
            finished = True
            return {"columns": [], "rows": [], "row_count": cur.rowcount, "truncated": False}
        columns = [str(d[0]) for d in cur.description]
        result = rows_result(columns, iter(cur.fetchone, None), max_rows, lim.max_bytes, jsonable)
        # Cut by the row count: under sql_select_limit the end is usually one read away.
        finished = not result["truncated"] or (
            result["row_count"] == max_rows and cur.fetchone() is None
        )
        return result
    finally:
        if finished:
            cur.close()
        else:
            _abandon(conn, cur)


def _abandon(conn: Conn, cur: Any) -> None:
    """Drop a connection whose result was not read to the end.

    PyMySQL can only stop an unbuffered result by reading all of it; closing the
    socket makes the server abort the statement instead. The result is marked done
    so that neither the cursor nor the result reads from the closed socket later.
    """
    result = getattr(cur, "_result", None)
    if result is not None:
        result.unbuffered_active = False
    with contextlib.suppress(Exception):
        conn.close()
    with contextlib.suppress(Exception):
        cur.close()


def translate(exc: pymysql.MySQLError, user: str) -> Exception:
    """A coded error whose message names no user and carries no backend text verbatim."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    text = str(exc.args[1]) if len(exc.args) > 1 else ""
    msg = text.replace(user, "<session user>")[:300]
    if code in _TIMEOUT:
        return RequestRejected("sql_timeout", "the statement exceeded its time limit", status=422)
    if code in _DENIED:
        return AccessDenied("sql_permission_denied", f"the database refused: {msg}")
    if code in _GONE or isinstance(exc, pymysql.err.InterfaceError) or code >= 2000:
        return BackendUnavailable(
            "database_unavailable", "the database connection failed or was terminated"
        )
    return RequestRejected(
        "sql_error", f"the database rejected the statement ({code}): {msg}", status=422
    )
