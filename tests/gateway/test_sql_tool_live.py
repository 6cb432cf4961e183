"""``sql.query`` against the machine's real PostgreSQL and MariaDB (issue 13, items 1-5).

No OpenBao: a small in-memory ``ToolContext`` hands the tool a LOGIN user this
module creates (with a password) in a throwaway database, and caches the pool as
a session would. Proves that hostile statements are refused with 403 and change
nothing (the password still works, nothing is owned), that ordinary SQL works,
that a 300,000-row result is cut at the limits without loading it (peak RSS and
tracemalloc, never time), and that the MariaDB timeout cannot be bypassed.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from clawql_secrets.gateway import sqlguard
from clawql_secrets.gateway.config import MariaDBTarget, PostgresTarget, SQLLimits
from clawql_secrets.gateway.errors import AccessDenied, CodedError, RequestRejected
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.tools import mariadb
from clawql_secrets.gateway.tools.sql import SQLArgs, SQLQueryTool

PG = {"host": "127.0.0.1", "port": 5432}
MARIA = {"host": "127.0.0.1", "port": 3306}
LIMITS = SQLLimits(max_rows=1000, max_bytes=1_000_000, statement_timeout_ms=500)
# For the big results: a timeout long enough for the server to produce all 300,000 rows,
# so that only the limits can stop the fetch.
SLOW_LIMITS = SQLLimits(max_rows=1000, max_bytes=1_000_000, statement_timeout_ms=60_000)
ROWS_300K = "SELECT repeat('x', 1000) FROM generate_series(1, 300000)"
# The whole 300,000-row result is ~300 MB; what may be resident at once is a chunk of
# rows and the (1 MB) answer. A generous constant, far below the result.
MAX_RSS_GROWTH = 64 * 2**20
MAX_PY_PEAK = 24 * 2**20


# -- an in-memory ToolContext -------------------------------------------------------------
@dataclass
class Lease:
    lease_id: str = ""
    lease_duration: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)


class Ctx:
    """A session of ``role``: ``read_secret`` returns the module's user for that role."""

    def __init__(self, role: str, creds: Mapping[str, tuple[str, str]]) -> None:
        self.claims = SessionClaims(
            sid="sid-" + secrets.token_hex(4),
            tenant="acme",
            agent="bot",
            agent_role=role,
            sub="acme/bot",
            exp=0,
            iat=0,
            jti="j",
        )
        self.reads: list[str] = []
        self._creds = creds
        self._resources: dict[str, Any] = {}

    def read_secret(self, path: str) -> Lease:
        self.reads.append(path)
        user, password = self._creds[self.claims.agent_role]
        return Lease(data={"username": user, "password": password})

    def resource(self, key: str, create: Callable[[], Any]) -> Any:
        if key not in self._resources:
            self._resources[key] = create()
        return self._resources[key]

    def close(self) -> None:
        for res in self._resources.values():
            res.close()
        self._resources.clear()


@dataclass
class DB:
    name: str
    creds: dict[str, tuple[str, str]]  # agent role -> (user, password)
    tool: SQLQueryTool
    sessions: list[Ctx] = field(default_factory=list)

    def session(self, role: str = "reader") -> Ctx:
        ctx = Ctx(role, self.creds)
        self.sessions.append(ctx)
        return ctx

    def run(self, ctx: Ctx, text: str, *params: Any, **kw: Any) -> dict[str, Any]:
        body = {"sql": text, "params": list(params), "database": self.name, **kw}
        return self.tool.run(ctx, SQLArgs.model_validate(body))

    def refused(self, ctx: Ctx, text: str, *params: Any) -> CodedError:
        with pytest.raises((AccessDenied, RequestRejected)) as e:
            self.run(ctx, text, *params)
        err = e.value
        assert isinstance(err, AccessDenied | RequestRejected)
        for _, password in self.creds.values():
            assert password not in str(err)
        return err


def _tool(
    pg_db: str | None = None, maria_db: str | None = None, limits: SQLLimits = LIMITS
) -> SQLQueryTool:
    classes = {"writer": ("read", "write")}
    targets: dict[str, Any] = {}
    if pg_db:
        targets["pg"] = PostgresTarget(host=PG["host"], dbname=pg_db, statement_classes=classes)
    if maria_db:
        targets["maria"] = MariaDBTarget(
            kind="mariadb", host=MARIA["host"], dbname=maria_db, statement_classes=classes
        )
    return SQLQueryTool(targets, limits)


# -- PostgreSQL fixture -------------------------------------------------------------------
def _pg_super(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(**PG, user="postgres", dbname=dbname, autocommit=True)


@pytest.fixture(scope="module")
def pg() -> Iterator[DB]:
    run = secrets.token_hex(4)
    dbname = f"clawql_sg_{run}"
    creds = {
        "reader": (f"clawql_sg_r_{run}", secrets.token_urlsafe(18)),
        "writer": (f"clawql_sg_w_{run}", secrets.token_urlsafe(18)),
    }
    db = DB("pg", creds, _tool(pg_db=dbname))
    try:
        with _pg_super() as su:
            for user, password in creds.values():
                su.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(user), sql.Literal(password)
                    )
                )
            su.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            su.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname))
            )
        with _pg_super(dbname) as su:
            su.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            su.execute("CREATE SCHEMA app")
            su.execute("CREATE TABLE app.items (id int PRIMARY KEY, name text)")
            su.execute(
                "INSERT INTO app.items SELECT g, 'acme-row-' || g FROM generate_series(1, 50) g"
            )
            for role, (user, _) in creds.items():
                ident = sql.Identifier(user)
                su.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(dbname), ident
                    )
                )
                su.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(ident))
                privs = "SELECT, INSERT, UPDATE, DELETE" if role == "writer" else "SELECT"
                su.execute(sql.SQL(f"GRANT {privs} ON app.items TO {{}}").format(ident))
                su.execute(
                    sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = app").format(
                        ident, sql.Identifier(dbname)
                    )
                )
        yield db
    finally:
        for ctx in db.sessions:
            with contextlib.suppress(Exception):
                ctx.close()
        with _pg_super() as su:
            su.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            for user, _ in creds.values():
                su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def _pg_role_state(db: DB, role: str) -> tuple[Any, ...]:
    """What a hostile statement could have changed about ``role``, seen by the superuser."""
    user = db.creds[role][0]
    with _pg_super(db.tool.databases["pg"].dbname) as su:
        row = su.execute(
            "SELECT a.rolpassword, a.rolcanlogin,"
            " (SELECT array_agg(s.setconfig::text) FROM pg_db_role_setting s"
            "  WHERE s.setrole = a.oid),"
            " (SELECT count(*) FROM pg_largeobject_metadata m WHERE m.lomowner = a.oid),"
            " (SELECT count(*) FROM pg_default_acl d WHERE d.defaclrole = a.oid),"
            " (SELECT count(*) FROM pg_class c WHERE c.relowner = a.oid)"
            " FROM pg_authid a WHERE a.rolname = %s",
            [user],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _pg_login_works(db: DB, role: str) -> bool:
    user, password = db.creds[role]
    with psycopg.connect(
        **PG, user=user, password=password, dbname=db.tool.databases["pg"].dbname
    ) as c:
        return c.execute("SELECT current_user").fetchone() == (user,)


PG_HOSTILE = [
    # item 1: the agent sets its own password
    ("ALTER ROLE CURRENT_USER PASSWORD 'owned'", "sql_role_refused"),
    ("ALTER USER CURRENT_USER WITH PASSWORD 'owned'", "sql_role_refused"),
    # item 2: the agent pins its role past the session
    (
        "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO PUBLIC",
        "sql_role_refused",
    ),
    ("SELECT lo_create(0)", "sql_function_refused"),
    ("SELECT pg_catalog.lo_import('/etc/hostname')", "sql_function_refused"),
    ("SELECT * FROM app.items WHERE id = lo_creat(-1)", "sql_function_refused"),
    ("CREATE TABLE app.mine (a int)", "sql_ddl_refused"),
    # the timeout and identity belong to the gateway
    ("SET statement_timeout = 0", "sql_session_refused"),
    ("SET LOCAL statement_timeout = 0", "sql_session_refused"),
    ("RESET statement_timeout", "sql_session_refused"),
    ("SET ROLE postgres", "sql_session_refused"),
    ("SET SESSION AUTHORIZATION postgres", "sql_session_refused"),
    ("SELECT set_config('statement_timeout', '0', false)", "sql_function_refused"),
    ("DO $$ BEGIN PERFORM lo_create(0); END $$", "sql_procedural_refused"),
    ("COPY app.items TO PROGRAM 'id'", "sql_copy_refused"),
    ("SELECT query_to_xml('SELECT lo_create(0)', true, false, '')", "sql_function_refused"),
    ("SELECT pg_terminate_backend(pg_backend_pid())", "sql_function_refused"),
    ("BEGIN", "sql_transaction_refused"),
    ("SELECT 1; ALTER ROLE CURRENT_USER PASSWORD 'owned'", "sql_multiple_statements"),
    ("SELECT 1 /* ; */ ; ALTER ROLE CURRENT_USER PASSWORD 'owned'", "sql_multiple_statements"),
    ("SELECT 1 -- comment\n; SELECT lo_create(0)", "sql_multiple_statements"),
    ("ALTER ROLE CURRENT_USER PASSWORD 'owned' -- ; SELECT 1", "sql_role_refused"),
    ("SELEC 1", "sql_unparsable"),
]


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_pg_hostile_statements_refused_before_any_credential_and_change_nothing(
    pg: DB, role: str
) -> None:
    before = _pg_role_state(pg, role)
    for text, code in PG_HOSTILE:
        ctx = pg.session(role)
        err = pg.refused(ctx, text)
        assert err.code == code, (text, err.code, str(err))
        assert ctx.reads == [], text  # validated before the credential was read
    assert _pg_role_state(pg, role) == before
    assert _pg_login_works(pg, role)


def test_pg_ordinary_sql_works(pg: DB) -> None:
    ctx = pg.session()
    assert pg.run(ctx, "SELECT 5 % 2")["rows"] == [[1]]
    r = pg.run(ctx, "SELECT id FROM items WHERE name LIKE 'acme-row-1%' ORDER BY id")
    assert [row[0] for row in r["rows"]] == [1, *range(10, 20)]
    r = pg.run(
        ctx, "SELECT id, name FROM items WHERE id <= $1 AND name LIKE $2 ORDER BY id", 2, "%"
    )
    assert r["columns"] == ["id", "name"] and r["rows"] == [[1, "acme-row-1"], [2, "acme-row-2"]]
    # the older %s form, with a literal % in the same statement
    r = pg.run(ctx, "SELECT id FROM items WHERE id <= %s AND name LIKE 'acme%' ORDER BY id", 2)
    assert r["rows"] == [[1], [2]]
    text = """
        WITH ranked AS (
            SELECT id, name, row_number() OVER (ORDER BY id DESC) AS rn
            FROM items i JOIN (SELECT generate_series(1, 3) AS g) s ON s.g = i.id
        )
        SELECT id, rn FROM ranked
        ORDER BY id
    """
    assert pg.run(ctx, text)["rows"] == [[1, 3], [2, 2], [3, 1]]
    r = pg.run(ctx, "SELECT id, name FROM items WHERE false")
    assert (r["columns"], r["rows"], r["truncated"]) == (["id", "name"], [], False)
    assert pg.run(ctx, "SELECT $1::text", "it's a \\ 'quote' /* not a comment */")["rows"] == [
        ["it's a \\ 'quote' /* not a comment */"]
    ]
    assert pg.run(ctx, "SELECT pg_sleep(0)")["row_count"] == 1
    # the lexing the guard assumed, pinned per connection whatever the server's default
    assert pg.run(ctx, "SHOW standard_conforming_strings")["rows"] == [["on"]]
    assert pg.run(ctx, "SHOW client_encoding")["rows"] == [["UTF8"]]
    err = pg.refused(ctx, "SELECT $1 + $2", 1)
    assert err.code == "sql_params_mismatch"
    err = pg.refused(ctx, "INSERT INTO items VALUES (1000, 'x')")
    assert err.code == "sql_write_refused"
    # the writer role may write; its writes report their row count
    w = pg.session("writer")
    r = pg.run(w, "INSERT INTO items VALUES ($1, $2)", 1000, "new")
    assert (r["columns"], r["row_count"]) == ([], 1)
    r = pg.run(w, "UPDATE items SET name = $1 WHERE id = $2 RETURNING id, name", "newer", 1000)
    assert r["rows"] == [[1000, "newer"]]
    assert pg.run(w, "DELETE FROM items WHERE id = 1000")["row_count"] == 1
    assert pg.refused(w, "SELECT lo_create(0)").code == "sql_function_refused"


def test_pg_errors_are_coded_and_name_no_credential(pg: DB) -> None:
    ctx = pg.session()
    err = pg.refused(ctx, "SELECT 1 / 0")
    assert (err.code, err.status) == ("sql_error", 422)
    err = pg.refused(ctx, "SELECT * FROM pg_authid")
    assert (err.code, err.status) == ("sql_permission_denied", 403)
    assert pg.creds["reader"][0] not in str(err)
    err = pg.refused(ctx, "SELECT pg_sleep(5)")  # the timeout the session cannot lift
    assert (err.code, err.status) == ("sql_timeout", 422)
    err = pg.refused(ctx, "SELECT nosuchcolumn FROM items")
    assert (err.code, err.status) == ("sql_error", 422)
    assert pg.run(ctx, "SELECT 1")["rows"] == [[1]]  # the session still works


def _measure(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], int, int]:
    """``fn()``, the growth of peak RSS over RSS before it (Linux ``clear_refs`` resets
    the peak), and tracemalloc's peak of Python allocations during it."""
    status = Path("/proc/self/status")

    def kib(field_name: str) -> int:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", status.read_text(), re.M)
        assert m is not None
        return int(m.group(1)) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = kib("VmRSS")
    tracemalloc.start()
    try:
        out = fn()
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, kib("VmHWM") - before, py_peak


def test_pg_300k_rows_are_cut_at_the_limits_without_being_loaded(pg: DB) -> None:
    # The fixture's session list: the module closes these pools too.
    slow = _tool(pg_db=pg.tool.databases["pg"].dbname, limits=SLOW_LIMITS)
    pg = DB(pg.name, pg.creds, slow, pg.sessions)
    ctx = pg.session()
    (pid,) = pg.run(ctx, "SELECT pg_backend_pid()")["rows"][0]
    r, rss_growth, py_peak = _measure(lambda: pg.run(ctx, ROWS_300K))
    assert r["truncated"] is True and 0 < r["row_count"] <= LIMITS.max_rows
    assert rss_growth < MAX_RSS_GROWTH, rss_growth
    assert py_peak < MAX_PY_PEAK, py_peak
    r, rss_growth, _ = _measure(lambda: pg.run(ctx, ROWS_300K, max_rows=5))
    assert (r["row_count"], r["truncated"]) == (5, True) and rss_growth < MAX_RSS_GROWTH
    # the rest was cancelled, not left on the connection: the same backend serves on
    assert pg.run(ctx, "SELECT pg_backend_pid()")["rows"] == [[pid]]


# -- MariaDB fixture ----------------------------------------------------------------------
def _maria_root() -> Any:
    return pymysql.connect(**MARIA, user="root", autocommit=True)


@pytest.fixture(scope="module")
def maria() -> Iterator[DB]:
    run = secrets.token_hex(4)
    dbname = f"clawql_sg_{run}"
    creds = {
        "reader": (f"clawql_sg_r_{run}", secrets.token_urlsafe(18)),
        "writer": (f"clawql_sg_w_{run}", secrets.token_urlsafe(18)),
    }
    db = DB("maria", creds, _tool(maria_db=dbname))
    try:
        with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{dbname}`")
            cur.execute(f"USE `{dbname}`")
            cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
            cur.execute("INSERT INTO items SELECT seq, CONCAT('acme-row-', seq) FROM seq_1_to_50")
            for role, (user, password) in creds.items():
                cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", [password])
                privs = "SELECT, INSERT, UPDATE, DELETE" if role == "writer" else "SELECT"
                cur.execute(f"GRANT {privs} ON `{dbname}`.* TO '{user}'@'%'")
        yield db
    finally:
        for ctx in db.sessions:
            with contextlib.suppress(Exception):
                ctx.close()
        with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
            for user, _ in creds.values():
                with contextlib.suppress(pymysql.MySQLError):
                    cur.execute(f"KILL USER '{user}'")
                cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP DATABASE IF EXISTS `{dbname}`")


def _maria_state(db: DB, role: str) -> tuple[Any, ...]:
    user = db.creds[role][0]
    with contextlib.closing(_maria_root()) as c, c.cursor() as cur:
        # The account's whole record: password hash, limits, lock, password_last_changed.
        cur.execute("SELECT Host, Priv FROM mysql.global_priv WHERE User = %s", [user])
        row = cur.fetchone()
    assert row is not None
    return tuple(row)


def _maria_login(db: DB, role: str) -> Any:
    user, password = db.creds[role]
    return pymysql.connect(**MARIA, user=user, password=password, autocommit=True)


MARIA_HOSTILE = [
    # item 1: the agent sets its own password
    ("SET PASSWORD = PASSWORD('owned')", "sql_role_refused"),
    ("SET PASSWORD = 'owned'", "sql_role_refused"),
    ("SET PASSWORD FOR CURRENT_USER() = PASSWORD('owned')", "sql_role_refused"),
    ("ALTER USER CURRENT_USER() IDENTIFIED BY 'owned'", "sql_role_refused"),
    ("GRANT SELECT ON *.* TO CURRENT_USER()", "sql_role_refused"),
    # item 3: the statement timeout bypassed
    ("SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(1)", "sql_session_refused"),
    ("SET max_statement_time = 0", "sql_session_refused"),
    ("SET @@session.max_statement_time = 0", "sql_session_refused"),
    ("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'", "sql_session_refused"),
    ("SELECT 1 /*! , SLEEP(1) */", "sql_unparsable"),
    ("SELECT 1 /*M!100000 , SLEEP(1) */", "sql_unparsable"),
    ("SELECT 1 --\xa0, SLEEP(1) FROM (SELECT 1 AS `\xa0`) t", "sql_unparsable"),
    # files, locks, CPU burn
    ("SELECT LOAD_FILE('/etc/hostname')", "sql_function_refused"),
    ("SELECT 1 INTO OUTFILE '/tmp/clawql-sg'", "sql_copy_refused"),
    ("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE items", "sql_copy_refused"),
    ("SELECT GET_LOCK('x', 1)", "sql_function_refused"),
    ("SELECT BENCHMARK(1000000, MD5('x'))", "sql_function_refused"),
    ("REPLACE INTO items SELECT 99, LOAD_FILE('/etc/hostname')", "sql_write_refused"),
    ("SELECT 1; SET PASSWORD = PASSWORD('owned')", "sql_multiple_statements"),
    ("SELECT 1 # x\n; SET PASSWORD = PASSWORD('owned')", "sql_multiple_statements"),
    ("CREATE PROCEDURE p() SELECT 1", "sql_procedural_refused"),
    ("USE mysql", "sql_session_refused"),
    ("LOCK TABLES items WRITE", "sql_lock_refused"),
    ("SHUTDOWN", "sql_other_refused"),
    ("DO SLEEP(1)", "sql_unparsable"),
]


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_maria_hostile_statements_refused_before_any_credential_and_change_nothing(
    maria: DB, role: str
) -> None:
    before = _maria_state(maria, role)
    for text, code in MARIA_HOSTILE:
        if role == "writer" and text.startswith("REPLACE"):
            code = "sql_function_refused"  # writes allowed; LOAD_FILE is not
        ctx = maria.session(role)
        err = maria.refused(ctx, text)
        assert err.code == code, (text, err.code, str(err))
        assert ctx.reads == [], text
    assert _maria_state(maria, role) == before
    with contextlib.closing(_maria_login(maria, role)) as c, c.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert str(cur.fetchone()[0]).startswith(maria.creds[role][0])


def test_maria_ordinary_sql_works_and_the_timeout_holds(maria: DB) -> None:
    ctx = maria.session()
    assert maria.run(ctx, "SELECT 5 % 2")["rows"] == [[1]]
    r = maria.run(ctx, "SELECT id FROM items WHERE name LIKE 'acme-row-1%' ORDER BY id")
    assert [row[0] for row in r["rows"]] == [1, *range(10, 20)]
    r = maria.run(
        ctx, "SELECT id, name FROM items WHERE id <= ? AND name LIKE ? ORDER BY id", 2, "%"
    )
    assert r["rows"] == [[1, "acme-row-1"], [2, "acme-row-2"]]
    # %s with a literal % beside it: PyMySQL's own formatting would have failed here
    r = maria.run(ctx, "SELECT id FROM items WHERE id <= %s AND name LIKE 'acme%' ORDER BY id", 2)
    assert r["rows"] == [[1], [2]]
    text = """
        SELECT id,
               ROW_NUMBER() OVER (ORDER BY id DESC) AS rn
        FROM items
        WHERE id IN (1, 2, 3)
        ORDER BY id
    """
    assert maria.run(ctx, text)["rows"] == [[1, 3], [2, 2], [3, 1]]
    hostile = "x' /*! , SLEEP(1) */ -- \\' \"; SELECT 1"
    assert maria.run(ctx, "SELECT ?", hostile)["rows"] == [[hostile]]
    assert maria.run(ctx, "SET @a = 41")["row_count"] == 0
    assert maria.run(ctx, "SELECT @a + 1")["rows"] == [[42]]
    err = maria.refused(ctx, "SELECT SLEEP(5)")  # allowed, and bounded by the timeout
    assert (err.code, err.status) == ("sql_timeout", 422)
    err = maria.refused(ctx, "SELECT ? + ?", 1)
    assert err.code == "sql_params_mismatch"
    err = maria.refused(ctx, "SELECT * FROM mysql.user")
    assert (err.code, err.status) == ("sql_permission_denied", 403)
    err = maria.refused(ctx, "SELECT nosuchcolumn FROM items")
    assert (err.code, err.status) == ("sql_error", 422)
    w = maria.session("writer")
    assert maria.run(w, "INSERT INTO items VALUES (?, ?)", 1000, "new")["row_count"] == 1
    assert maria.run(w, "REPLACE INTO items VALUES (?, ?)", 1000, "newer")["row_count"] == 2
    assert maria.run(w, "DELETE FROM items WHERE id = ?", 1000)["row_count"] == 1


def test_maria_300k_rows_are_cut_at_the_limits_without_being_loaded(maria: DB) -> None:
    dbname = maria.tool.databases["maria"].dbname
    maria = DB(maria.name, maria.creds, _tool(maria_db=dbname, limits=SLOW_LIMITS), maria.sessions)
    ctx = maria.session()
    # LIMIT overrides sql_select_limit: the server would send all 300,000 rows.
    text = "SELECT repeat('x', 1000) FROM seq_1_to_300000 LIMIT 300000"

    def connection_id() -> Any:
        return maria.run(ctx, "SELECT CONNECTION_ID()")["rows"][0][0]

    first = connection_id()
    r, rss_growth, py_peak = _measure(lambda: maria.run(ctx, text))
    assert r["truncated"] is True and 0 < r["row_count"] <= LIMITS.max_rows
    assert rss_growth < MAX_RSS_GROWTH, rss_growth
    assert py_peak < MAX_PY_PEAK, py_peak
    # The rest was not drained through the gateway: that connection was dropped.
    second = connection_id()
    assert second != first
    # A plain SELECT cut by max_rows ends under sql_select_limit: its connection stays.
    r = maria.run(ctx, "SELECT id FROM items ORDER BY id", max_rows=3)
    assert (r["row_count"], r["truncated"]) == (3, True)
    assert connection_id() == second
    assert maria.run(ctx, "SELECT COUNT(*) FROM items")["rows"] == [[50]]


# -- faithfulness: what the guard accepts, MariaDB runs as the guard read it ----------------
# Every way we know for a lexer to disagree about where code ends: comment and quote
# openers, then a separator (ASCII and Unicode spaces, control characters), then closers.
_OPENERS = ["", "--", "#", "/*", "/*!", "/*M!", "/*!999999", "/*+", "'", '"', "`", "\\", "-"]
_OPENERS += ["/", "*", "{", "$$", "?"]
_SEPARATORS = ["", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\xa0"]
_SEPARATORS += ["\u2028", "\u3000", "\ufeff", "!", "\\", "'", "*/", "-"]
_CLOSERS = ["", "*/", "'", '"', "`", "\n", "}", "\\'"]


@pytest.fixture(scope="module")
def maria_probe(maria: DB) -> Iterator[Any]:
    """The reader's own connection, lexing pinned as the tool pins it."""
    conn = _maria_login(maria, "reader")
    mariadb._pin_lexing(conn)
    try:
        yield conn
    finally:
        conn.close()


def test_maria_guard_sees_every_call_mariadb_runs(maria_probe: Any) -> None:
    """No text the guard accepts for a read-only session makes MariaDB call a refused
    function: ``LOAD_FILE(@hit := 1)`` behind every opener x separator x closer (the
    assignment shows that it ran; the derived table gives a separator that MariaDB reads
    as an identifier a column of that name) must be seen by the guard or not run."""
    hidden = []
    with maria_probe.cursor(pymysql.cursors.Cursor) as cur:
        for opener, sep, closer in itertools.product(_OPENERS, _SEPARATORS, _CLOSERS):
            column = sep if sep and (sep.isspace() or not sep.isascii()) else "c"
            text = (
                f"SELECT 1 {opener}{sep}, LOAD_FILE(@hit := 1) {closer}"
                f" FROM (SELECT 1 AS `{column}`) t"
            )
            try:
                sqlguard.check("mariadb", text, sqlguard.DEFAULT_CLASSES)
            except (AccessDenied, RequestRejected):
                continue
            cur.execute("SET @hit = 0")
            with contextlib.suppress(pymysql.MySQLError):
                cur.execute(text)
                cur.fetchall()
            cur.execute("SELECT @hit")
            if cur.fetchone() != (0,):
                hidden.append(text)
    assert hidden == []
