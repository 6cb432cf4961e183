"""``sql.query`` on MariaDB: one statement as the session's own dynamic user.

The user comes from ``<mount>/creds/<agent_role>-<tenant>`` (OpenBao's
mysql-database-plugin) read with the agent's per-call token; its grants are
confined to the tenant's database. Same shape as the PostgreSQL path: a small
per-session pool kept as a session resource, a statement timeout
(``max_statement_time``, re-set before every call), and row and byte limits.

PyMySQL binds parameters client-side (escaped literals); the connection is
opened without ``CLIENT.MULTI_STATEMENTS``, so the server refuses a second
statement. The result is read unbuffered, and ``sql_select_limit`` (max rows
+ 1) bounds what is drained after a truncation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT, SERVER_STATUS

from clawql_secrets.gateway.config import MariaDBTarget, SQLLimits
from clawql_secrets.gateway.errors import AccessDenied, BackendUnavailable, RequestRejected
from clawql_secrets.gateway.tools import ToolContext, read_credential
from clawql_secrets.gateway.tools.pool import SessionPool, rows_result

Conn: TypeAlias = Any  # pymysql.connections.Connection (PyMySQL ships no type hints)

_DENIED = {1044, 1045, 1142, 1143, 1227, 1370}
_TIMEOUT = {1969, 3024}
_GONE = {2003, 2006, 2013, 1927, 4031}


class MariaDBPool(SessionPool[Conn]):
    def __init__(self, connect: Callable[[], Conn], size: int, user: str) -> None:
        super().__init__(connect, size, user, _reusable)


def _reusable(conn: Conn) -> bool:
    """Open and outside any transaction: a ``BEGIN`` does not outlive its call."""
    return bool(conn.open) and not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS


def open_pool(ctx: ToolContext, target: MariaDBTarget) -> MariaDBPool:
    user, password = read_credential(ctx, target.mount, target.creds_role_template, "database")
    dbname = target.dbname.format(tenant=ctx.claims.tenant)

    def connect() -> Conn:
        return pymysql.connect(
            host=target.host,
            port=target.port,
            user=user,
            password=password,
            database=dbname,
            connect_timeout=target.connect_timeout,
            cursorclass=pymysql.cursors.SSCursor,
            client_flag=CLIENT.MULTI_RESULTS,  # no MULTI_STATEMENTS: one statement per call
            autocommit=True,
            program_name="clawql-gateway",
        )

    pool = MariaDBPool(connect, target.pool_size, user)
    pool.warm((pymysql.MySQLError,), lambda exc: translate(exc, user))
    return pool


def execute(
    pool: MariaDBPool,
    sql: str,
    params: list[Any],
    max_rows: int,
    lim: SQLLimits,
    jsonable: Callable[[Any], Any],
) -> dict[str, Any]:
    try:
        with pool.connection() as conn:
            with conn.cursor() as cur:
                # Re-set per call (a hostile SET from an earlier call is undone). The
                # select limit bounds what is left to drain after a truncation.
                cur.execute(
                    "SET SESSION max_statement_time = %s, sql_select_limit = %s",
                    [lim.statement_timeout_ms / 1000, max_rows + 1],
                )
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                if cur.description is None:
                    return {
                        "columns": [],
                        "rows": [],
                        "row_count": cur.rowcount,
                        "truncated": False,
                    }
                columns = [str(d[0]) for d in cur.description]
                return rows_result(
                    columns, iter(cur.fetchone, None), max_rows, lim.max_bytes, jsonable
                )
    except pymysql.MySQLError as exc:
        raise translate(exc, pool.user) from None


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
