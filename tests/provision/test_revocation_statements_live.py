"""Revocation an agent cannot block, against the machine's real PostgreSQL and MariaDB.

No OpenBao: the statements are run the way OpenBao 2.7's database plugins run
them (``tests/provision/test_statements.py`` reproduces the splitting), as an
engine admin with the privileges ``docs/operations.md`` asks of a DBA:

- PostgreSQL (``postgresql.go``): ``BEGIN``, each piece in order on one
  connection, ``COMMIT``; the first error rolls back and fails the call.
- MariaDB (``mysql.go``): ``START TRANSACTION``, each piece, ``COMMIT``;
  creation pieces are prepared server-side first (falling back to plain
  execution on error 1295), revocation pieces are not.

Each test creates a session user, plays one trick with it as the agent would
(through SQL only, or directly with the password where the trick needs it),
revokes, and checks what is left: no role, no backend, no object or privilege.
Where the drop genuinely cannot succeed, the revocation must fail loudly and
the user must be unable to log in anyway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from clawql_secrets.provision import statements
from tests.provision.test_statements import fill, mysql_plugin_pieces, pg_plugin_pieces

HOST = "127.0.0.1"
PG_PORT = 5432
MARIA_PORT = 3306
SCHEMA = "acme"
OTHER_SCHEMA = "globex"
WAIT = 30.0  # a bound on waiting for the server to catch up, never asserted on


def _wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {WAIT:.0f} s: {what}")
        time.sleep(0.05)


def _expiration() -> str:
    # The plugin's format: "2006-01-02 15:04:05-0700".
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return when.strftime("%Y-%m-%d %H:%M:%S%z")


# ============================================================================
# PostgreSQL
# ============================================================================
PGConn = psycopg.Connection[tuple[Any, ...]]


def _pg(user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> PGConn:
    return psycopg.connect(
        host=HOST,
        port=PG_PORT,
        user=user,
        password=password,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def run_like_pg_plugin(conn: PGConn, elements: tuple[str, ...], values: dict[str, str]) -> None:
    """``customDeleteUser``/``NewUser``: one transaction, pieces in order, rollback on error."""
    conn.execute("BEGIN")
    try:
        for element in elements:
            for piece in pg_plugin_pieces(element):
                conn.execute(fill(piece, values).encode())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dataclass
class PGEnv:
    run: str
    db: str
    other_db: str
    admin: str
    admin_password: str
    stmts: statements.EngineStatements
    users: list[str] = field(default_factory=list)

    def admin_conn(self) -> PGConn:
        return _pg(self.admin, self.admin_password, self.db)

    def create_user(self) -> tuple[str, str]:
        name = f"v-Tok-{self.run}-{len(self.users)}"
        password = secrets.token_urlsafe(18)
        self.users.append(name)
        with self.admin_conn() as a:
            values = {"name": name, "password": password, "expiration": _expiration()}
            run_like_pg_plugin(a, self.stmts.creation, values)
        return name, password

    def revoke(self, name: str, *, as_admin: tuple[str, str] | None = None) -> None:
        user, password = as_admin or (self.admin, self.admin_password)
        with _pg(user, password, self.db) as a:
            run_like_pg_plugin(a, self.stmts.revocation, {"name": name, "username": name})

    def login(self, name: str, password: str, dbname: str | None = None) -> PGConn:
        return _pg(name, password, dbname or self.db)


def _pg_available() -> bool:
    try:
        _pg().close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(scope="module")
def pg() -> Iterator[PGEnv]:
    if not _pg_available():
        pytest.skip(f"no PostgreSQL at {HOST}:{PG_PORT} (user postgres, trust)")
    run = secrets.token_hex(4)
    env = PGEnv(
        run=run,
        db=f"clawql_rev_{run}",
        other_db=f"clawql_rev_other_{run}",
        admin=f"clawql_rev_admin_{run}",
        admin_password=secrets.token_urlsafe(18),
        stmts=statements.postgresql(SCHEMA, ("SELECT", "INSERT"), database=f"clawql_rev_{run}"),
    )
    su = _pg()
    try:
        ident = sql.Identifier
        # The engine admin as operations.md asks: not a superuser.
        su.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                ident(env.admin), sql.Literal(env.admin_password)
            )
        )
        su.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(ident(env.admin)))
        su.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(env.db), ident(env.admin)))
        # PUBLIC keeps TEMP here: the revocation must hold without that hardening.
        su.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident(env.db)))
        # A database the admin never connects to, left with PostgreSQL's default
        # PUBLIC CONNECT: what operations.md says to revoke.
        su.execute(sql.SQL("CREATE DATABASE {}").format(ident(env.other_db)))
        with env.admin_conn() as a:
            for schema in (SCHEMA, OTHER_SCHEMA):
                a.execute(sql.SQL("CREATE SCHEMA {}").format(ident(schema)))
                a.execute(
                    sql.SQL("CREATE TABLE {}.items (id int PRIMARY KEY, v text)").format(
                        ident(schema)
                    )
                )
                a.execute(
                    sql.SQL("INSERT INTO {}.items VALUES (1, {})").format(
                        ident(schema), sql.Literal(schema)
                    )
                )
        yield env
    finally:
        for db in (env.db, env.other_db):
            su.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(db)))
        for name in [*env.users, env.admin]:
            # Objects in the shared catalogue (none expected): the role's
            # databases are gone, so DROP ROLE either works or names a leak.
            su.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
            )
            with contextlib.suppress(psycopg.Error):
                su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident(name)))
        su.close()


def _oid(name: str) -> int:
    with _pg() as su:
        row = su.execute("SELECT oid FROM pg_roles WHERE rolname = %s", [name]).fetchone()
    assert row is not None, f"role {name} does not exist"
    return int(row[0])


def assert_pg_gone(env: PGEnv, name: str, oid: int) -> None:
    """No role, no backend, nothing owned or granted, in any database."""
    with _pg() as su:
        assert su.execute("SELECT 1 FROM pg_authid WHERE oid = %s", [oid]).fetchone() is None
        backends = su.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usesysid = %s OR usename = %s",
            [oid, name],
        ).fetchone()
        assert backends == (0,)
        shared = su.execute(
            "SELECT (SELECT count(*) FROM pg_shdepend WHERE refobjid = %(o)s)"
            " + (SELECT count(*) FROM pg_auth_members WHERE roleid = %(o)s OR member = %(o)s)"
            " + (SELECT count(*) FROM pg_db_role_setting WHERE setrole = %(o)s)",
            {"o": oid},
        ).fetchone()
        assert shared == (0,)
    with _pg(dbname=env.db) as su:
        local = su.execute(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = %(o)s)"
            " + (SELECT count(*) FROM pg_default_acl WHERE defaclrole = %(o)s)"
            " + (SELECT count(*) FROM pg_class WHERE relowner = %(o)s)"
            " + (SELECT count(*) FROM pg_proc WHERE proowner = %(o)s)"
            " + (SELECT count(*) FROM pg_type WHERE typowner = %(o)s)",
            {"o": oid},
        ).fetchone()
        assert local == (0,)


def assert_dead(conn: PGConn) -> None:
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")


def assert_pg_login_refused(env: PGEnv, name: str, *passwords: str) -> None:
    for password in passwords:
        with pytest.raises(psycopg.OperationalError):
            env.login(name, password).close()


# -- the tricks ---------------------------------------------------------------
# Each takes the agent's own connection (left open) and may open more; all of
# them used to leave DROP ROLE failing, a lock hanging it, or a session alive.
PGTrick = Callable[[PGEnv, PGConn, str, str], list[PGConn]]


def _default_privileges_for_self(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute("ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO PUBLIC")
    return []


def _default_privileges_in_own_schema(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} GRANT ALL ON TABLES TO PUBLIC")
    c.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} GRANT ALL ON FUNCTIONS TO PUBLIC")
    return []


def _large_object(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute("SELECT lo_create(0)")
    c.execute("SELECT lo_from_bytea(0, 'pinned')")
    return []


def _temporary_objects_on_an_open_connection(
    env: PGEnv, c: PGConn, name: str, pw: str
) -> list[PGConn]:
    c.execute("CREATE TEMP TABLE pinned (x int)")
    c.execute("CREATE TEMP VIEW pinned_v AS SELECT 1 AS x")
    c.execute("CREATE TEMP SEQUENCE pinned_s")
    c.execute("CREATE FUNCTION pg_temp.pinned_f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    c.execute("CREATE TYPE pg_temp.pinned_t AS (a int)")
    c.execute("BEGIN")
    c.execute("DECLARE held CURSOR WITH HOLD FOR SELECT * FROM items")
    c.execute("COMMIT")
    return []


def _open_transaction_holding_a_lock(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute("BEGIN")
    c.execute(f"LOCK TABLE {SCHEMA}.items IN ACCESS SHARE MODE")
    c.execute(f"INSERT INTO {SCHEMA}.items VALUES (100, 'uncommitted')")
    return []


def _uncommitted_alter_role_on_itself(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    # Holds the row lock on its own pg_authid entry: ALTER ROLE … NOLOGIN would
    # wait on it for ever if the backend were not terminated first.
    c.execute("BEGIN")
    c.execute("ALTER ROLE CURRENT_USER PASSWORD 'agent-held'")
    return []


def _role_settings(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
    c.execute("ALTER ROLE CURRENT_USER SET work_mem = '64kB'")
    c.execute(
        sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET lock_timeout = 0").format(
            sql.Identifier(env.db)
        )
    )
    return []


def _grant_to_public_without_grant_option(
    env: PGEnv, c: PGConn, name: str, pw: str
) -> list[PGConn]:
    c.execute(f"GRANT SELECT ON {SCHEMA}.items TO PUBLIC")  # a WARNING, grants nothing
    row = c.execute(f"SELECT has_table_privilege('public', '{SCHEMA}.items', 'SELECT')")
    assert row.fetchone() == (False,)
    return []


def _every_allowed_connection_left_open(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    extra = [env.login(name, pw) for _ in range(7)]  # CONNECTION LIMIT 8, with ``c``
    with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
        env.login(name, pw).close()
    return extra


def _password_set_by_the_agent(env: PGEnv, c: PGConn, name: str, pw: str) -> list[PGConn]:
    c.execute("ALTER ROLE CURRENT_USER PASSWORD 'agent-chosen'")
    return [env.login(name, "agent-chosen")]


PG_TRICKS: dict[str, PGTrick] = {
    "alter_default_privileges_for_role_current_user": _default_privileges_for_self,
    "alter_default_privileges_in_own_schema": _default_privileges_in_own_schema,
    "large_objects_created": _large_object,
    "temporary_objects_on_an_open_connection": _temporary_objects_on_an_open_connection,
    "open_transaction_holding_a_lock": _open_transaction_holding_a_lock,
    "uncommitted_alter_role_on_itself": _uncommitted_alter_role_on_itself,
    "role_settings_for_itself": _role_settings,
    "grant_to_public_without_grant_option": _grant_to_public_without_grant_option,
    "every_allowed_connection_left_open": _every_allowed_connection_left_open,
    "password_set_by_the_agent": _password_set_by_the_agent,
}


@pytest.mark.parametrize("trick", PG_TRICKS.values(), ids=PG_TRICKS.keys())
def test_pg_revocation_survives(pg: PGEnv, trick: PGTrick) -> None:
    name, pw = pg.create_user()
    oid = _oid(name)
    c = pg.login(name, pw)
    opened = [c]
    try:
        opened += trick(pg, c, name, pw)
        pg.revoke(name)
        assert_pg_gone(pg, name, oid)
        for conn in opened:
            assert_dead(conn)
        assert_pg_login_refused(pg, name, pw, "agent-chosen", "agent-held")
    finally:
        for conn in opened:
            conn.close()


def test_pg_large_object_granted_to_public_does_not_outlive_the_session(pg: PGEnv) -> None:
    """A PUBLIC-readable large object is a channel to every other tenant; it goes
    with the role (DROP OWNED, not REASSIGN OWNED to the admin)."""
    name, pw = pg.create_user()
    other, other_pw = pg.create_user()
    with contextlib.closing(pg.login(name, pw)) as c:
        row = c.execute("SELECT lo_from_bytea(0, 'for tenant B')").fetchone()
        assert row is not None
        lo = int(row[0])
        c.execute(f"GRANT SELECT ON LARGE OBJECT {lo} TO PUBLIC")
    with contextlib.closing(pg.login(other, other_pw)) as b:
        assert b.execute("SELECT lo_get(%s)", [lo]).fetchone() == (b"for tenant B",)
        pg.revoke(name)
        with pytest.raises(psycopg.errors.UndefinedObject):
            b.execute("SELECT lo_get(%s)", [lo])
    pg.revoke(other)


def test_pg_query_in_flight_is_cut_off(pg: PGEnv) -> None:
    name, pw = pg.create_user()
    oid = _oid(name)
    c = pg.login(name, pw)
    failure: list[BaseException] = []

    def sleeper() -> None:
        try:
            c.execute("SELECT pg_sleep(3600)")
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    try:
        with _pg() as su:

            def sleeping() -> bool:
                row = su.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND "
                    "state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
                    [name],
                ).fetchone()
                return row == (1,)

            _wait_until("the agent's query is running", sleeping)
        pg.revoke(name)
        t.join(WAIT)
        assert not t.is_alive()
        assert failure and isinstance(failure[0], psycopg.OperationalError)
        assert_pg_gone(pg, name, oid)
    finally:
        c.close()


def test_pg_advisory_lock_held_is_released(pg: PGEnv) -> None:
    name, pw = pg.create_user()
    key = _oid(name)
    with contextlib.closing(pg.login(name, pw)) as c:
        c.execute("SELECT pg_advisory_lock(4242, %s)", [key])
        pg.revoke(name)
        assert_dead(c)
    with pg.admin_conn() as a:
        assert a.execute("SELECT pg_try_advisory_lock(4242, %s)", [key]).fetchone() == (True,)


ESCALATIONS = {
    "login_attribute": "ALTER ROLE CURRENT_USER LOGIN",
    "connection_limit": "ALTER ROLE CURRENT_USER CONNECTION LIMIT -1",
    "valid_until": "ALTER ROLE CURRENT_USER VALID UNTIL 'infinity'",
    "createdb": "ALTER ROLE CURRENT_USER CREATEDB",
    "set_role_admin": "SET ROLE {admin}",
    "set_session_authorization": "SET SESSION AUTHORIZATION {admin}",
    "grant_itself_to_the_admin": 'GRANT "{name}" TO {admin}',
    "create_schema": "CREATE SCHEMA pinned",
    "create_table_in_own_schema": f"CREATE TABLE {SCHEMA}.pinned (x int)",
    "create_table_in_public": "CREATE TABLE public.pinned (x int)",
    "read_other_tenant": f"SELECT * FROM {OTHER_SCHEMA}.items",
    "lift_temp_file_limit": "ALTER ROLE CURRENT_USER SET temp_file_limit = -1",
    "publication": "CREATE PUBLICATION pinned",
    "extension": "CREATE EXTENSION dblink",
}


@pytest.mark.parametrize("statement", ESCALATIONS.values(), ids=ESCALATIONS.keys())
def test_pg_session_user_cannot(pg: PGEnv, statement: str) -> None:
    name, pw = pg.create_user()
    with contextlib.closing(pg.login(name, pw)) as c, pytest.raises(psycopg.errors.Error):
        c.execute(statement.format(admin=pg.admin, name=name))
    pg.revoke(name)


def test_pg_prepared_transactions_are_disabled(pg: PGEnv) -> None:
    """A prepared transaction outlives its backend and its role's checks; the
    server must keep ``max_prepared_transactions = 0`` (operations.md)."""
    with _pg() as su:
        setting = su.execute("SHOW max_prepared_transactions").fetchone()
    if setting != ("0",):
        pytest.skip("this server enables prepared transactions; operations.md says not to")
    name, pw = pg.create_user()
    with contextlib.closing(pg.login(name, pw)) as c:
        c.execute("BEGIN")
        c.execute("SELECT lo_create(0)")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("PREPARE TRANSACTION 'pinned'")
    pg.revoke(name)


def test_pg_creation_bounds_the_role(pg: PGEnv) -> None:
    name, pw = pg.create_user()
    with _pg() as su:
        row = su.execute(
            "SELECT rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole,"
            " rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil IS NOT NULL"
            " FROM pg_roles WHERE rolname = %s",
            [name],
        ).fetchone()
    assert row == (True, False, False, False, False, False, False, 8, True)
    with contextlib.closing(pg.login(name, pw)) as c:
        # The search path is the tenant's schema; the other tenant's is refused.
        assert c.execute("SELECT v FROM items").fetchall() == [(SCHEMA,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"SELECT * FROM {OTHER_SCHEMA}.items")
    # No PUBLIC CONNECT on the engine's database: only the grant lets it in.
    with _pg() as su:
        row = su.execute(
            "SELECT has_database_privilege('public', %s, 'CONNECT')", [pg.db]
        ).fetchone()
        assert row == (False,)
    pg.revoke(name)


def test_pg_revoking_a_missing_role_succeeds(pg: PGEnv) -> None:
    name, _ = pg.create_user()
    pg.revoke(name)
    pg.revoke(name)  # the retry after a success, or a role dropped by hand
    pg.revoke(f"v-Tok-{pg.run}-never-created")


# -- when the drop genuinely cannot succeed ----------------------------------------
def test_pg_object_in_another_database_fails_the_revocation_but_not_the_lockout(
    pg: PGEnv,
) -> None:
    """The admin never connects to ``other_db``, so ``DROP OWNED`` cannot reach the
    large object and default privileges the role left there. The revocation must
    say so (the lease stays, the gateway reports ``revocation_pending``) while the
    role can no longer log in, with any password, and holds nothing here."""
    name, pw = pg.create_user()
    oid = _oid(name)
    c = pg.login(name, pw)
    o = pg.login(name, pw, pg.other_db)
    try:
        o.execute("SELECT lo_create(0)")
        o.execute("ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO PUBLIC")
        c.execute("SELECT lo_create(0)")
        c.execute("ALTER ROLE CURRENT_USER PASSWORD 'agent-chosen'")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match=pg.other_db):
            pg.revoke(name)
        # The lock-out and the clean-up here were committed before the failed drop.
        with _pg() as su:
            row = su.execute(
                "SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE oid = %s", [oid]
            ).fetchone()
            assert row == (False, True)
            assert su.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usesysid = %s", [oid]
            ).fetchone() == (0,)
            left = su.execute(
                "SELECT coalesce(d.datname, '<shared>') FROM pg_shdepend s"
                " LEFT JOIN pg_database d ON d.oid = s.dbid WHERE s.refobjid = %s",
                [oid],
            ).fetchall()
            assert left and {r[0] for r in left} == {pg.other_db}
        assert_dead(c)
        assert_dead(o)
        assert_pg_login_refused(pg, name, pw, "agent-chosen")
        # The DBA cleans the other database; the retry (as the sweeper does) finishes.
        with _pg(dbname=pg.other_db) as su:
            su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        pg.revoke(name)
        assert_pg_gone(pg, name, oid)
    finally:
        c.close()
        o.close()


def test_pg_admin_without_signal_privilege_fails_the_revocation_but_not_the_lockout(
    pg: PGEnv,
) -> None:
    """An admin that may not terminate the role's backends (no ``pg_signal_backend``)
    cannot make the revocation true: it must fail, after taking the login."""
    weak, weak_pw = f"clawql_rev_weak_{pg.run}", secrets.token_urlsafe(18)
    pg.users.append(weak)
    with _pg() as su:
        su.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(weak), sql.Literal(weak_pw)
            )
        )
        su.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(pg.db), sql.Identifier(weak)
        ))  # fmt: skip
    name, pw = pg.create_user()
    oid = _oid(name)
    c = pg.login(name, pw)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pg.revoke(name, as_admin=(weak, weak_pw))
        with _pg() as su:
            row = su.execute("SELECT rolcanlogin FROM pg_authid WHERE oid = %s", [oid])
            assert row.fetchone() == (False,)
        assert_pg_login_refused(pg, name, pw)
        assert c.execute("SELECT 1").fetchone() == (1,)  # alive: hence the failure
        pg.revoke(name)
        assert_dead(c)
        assert_pg_gone(pg, name, oid)
    finally:
        c.close()


# ============================================================================
# MariaDB
# ============================================================================
MariaConn = Any  # pymysql is untyped


def _maria(user: str = "root", password: str = "", **kw: Any) -> MariaConn:
    return pymysql.connect(
        host=HOST,
        port=MARIA_PORT,
        user=user,
        password=password,
        autocommit=True,
        connect_timeout=5,
        **kw,
    )


def _fetch(conn: MariaConn, query: str, args: Any = None) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        return tuple(cur.fetchall())


def run_like_mysql_plugin(
    conn: MariaConn, elements: tuple[str, ...], values: dict[str, str], *, prepare: bool
) -> None:
    """``executePreparedStatementsWithMap`` (``prepare``) or ``customDeleteUser``."""
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION")
        try:
            for element in elements:
                for piece in mysql_plugin_pieces(element):
                    query = fill(piece, values)
                    if not prepare:
                        cur.execute(query)  # no args: pymysql sends it verbatim
                        continue
                    try:
                        cur.execute("PREPARE clawql_test FROM %s", [query])
                    except pymysql.MySQLError as exc:
                        if exc.args[0] != 1295:
                            raise
                        cur.execute(query)
                        continue
                    cur.execute("EXECUTE clawql_test")
                    cur.execute("DEALLOCATE PREPARE clawql_test")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


@dataclass
class MariaEnv:
    run: str
    db: str
    other_db: str
    admin: str
    admin_password: str
    users: list[str] = field(default_factory=list)

    def stmts(self, **kw: Any) -> statements.EngineStatements:
        kw.setdefault("hosts", (HOST,))  # the gateway's address, here loopback
        kw.setdefault("max_user_connections", 4)
        return statements.mariadb(self.db, ("SELECT", "INSERT", "UPDATE"), **kw)

    def create_user(self, **kw: Any) -> tuple[str, str]:
        name = f"v-Mx-{self.run}-{len(self.users)}"
        password = secrets.token_urlsafe(18)
        self.users.append(name)
        with contextlib.closing(_maria(self.admin, self.admin_password)) as a:
            values = {"name": name, "password": password, "expiration": _expiration()}
            run_like_mysql_plugin(a, self.stmts(**kw).creation, values, prepare=True)
        return name, password

    def revoke(self, name: str, *, as_admin: tuple[str, str] | None = None, **kw: Any) -> None:
        user, password = as_admin or (self.admin, self.admin_password)
        with contextlib.closing(_maria(user, password)) as a:
            values = {"name": name, "username": name}
            run_like_mysql_plugin(a, self.stmts(**kw).revocation, values, prepare=False)

    def login(self, name: str, password: str) -> MariaConn:
        return _maria(name, password, database=self.db)


def _maria_available() -> bool:
    try:
        _maria().close()
    except pymysql.MySQLError:
        return False
    return True


def _create_maria_admin(root: MariaConn, name: str, password: str, dbs: tuple[str, ...]) -> None:
    with root.cursor() as cur:
        cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", [password])
        cur.execute(f"GRANT CREATE USER, CONNECTION ADMIN ON *.* TO '{name}'@'%'")
        for db in dbs:
            cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{name}'@'%' WITH GRANT OPTION")


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaEnv]:
    if not _maria_available():
        pytest.skip(f"no MariaDB at {HOST}:{MARIA_PORT} (root, empty password)")
    run = secrets.token_hex(4)
    env = MariaEnv(
        run=run,
        db=f"clawql_rev_{run}",
        other_db=f"clawql_rev_other_{run}",
        admin=f"clawql_rev_admin_{run}",
        admin_password=secrets.token_urlsafe(18),
    )
    root = _maria()
    try:
        with root.cursor() as cur:
            for db in (env.db, env.other_db):
                cur.execute(f"CREATE DATABASE `{db}`")
                cur.execute(f"CREATE TABLE `{db}`.items (id int PRIMARY KEY, v text) ENGINE=InnoDB")
                cur.execute(f"INSERT INTO `{db}`.items VALUES (1, %s)", [db])
        _create_maria_admin(root, env.admin, env.admin_password, (env.db,))
        with root.cursor() as cur:
            cur.execute(f"GRANT SELECT (User, Host) ON mysql.user TO '{env.admin}'@'%'")
        yield env
    finally:
        with root.cursor() as cur:
            for name in [*env.users, env.admin]:
                with contextlib.suppress(pymysql.MySQLError):
                    cur.execute("KILL USER %s", [name])
                rows = _fetch(root, "SELECT Host FROM mysql.user WHERE User = %s", [name])
                for (host,) in rows:
                    cur.execute("DROP USER %s@%s", [name, host])
            for db in (env.db, env.other_db):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        root.close()


def _maria_threads(name: str) -> int:
    with contextlib.closing(_maria()) as root:
        rows = _fetch(
            root, "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = %s", [name]
        )
    return int(rows[0][0])


def assert_maria_gone(name: str) -> None:
    with contextlib.closing(_maria()) as root:
        assert _fetch(root, "SELECT Host FROM mysql.user WHERE User = %s", [name]) == ()
        assert _fetch(root, "SELECT 1 FROM mysql.db WHERE User = %s", [name]) == ()
        assert _fetch(root, "SELECT 1 FROM mysql.tables_priv WHERE User = %s", [name]) == ()
    # KILL is asynchronous: a killed thread may take a moment to leave.
    _wait_until(f"no thread of {name}", lambda: _maria_threads(name) == 0)


def assert_maria_dead(conn: MariaConn) -> None:
    with pytest.raises(pymysql.MySQLError):
        _fetch(conn, "SELECT 1")


def assert_maria_login_refused(env: MariaEnv, name: str, *passwords: str) -> None:
    for password in passwords:
        with pytest.raises(pymysql.MySQLError):
            env.login(name, password).close()


MariaTrick = Callable[[MariaEnv, MariaConn, str, str], list[MariaConn]]


def _maria_password_set_by_the_agent(
    env: MariaEnv, c: MariaConn, name: str, pw: str
) -> list[MariaConn]:
    # Allowed: MariaDB lets every user change its own password, and nothing
    # server-side stops it (no PASSWORD REQUIRE CURRENT in MariaDB).
    _fetch(c, "SET PASSWORD = PASSWORD('agent-chosen')")
    return [env.login(name, "agent-chosen")]


def _maria_every_allowed_connection_left_open(
    env: MariaEnv, c: MariaConn, name: str, pw: str
) -> list[MariaConn]:
    extra = [env.login(name, pw) for _ in range(3)]  # MAX_USER_CONNECTIONS 4, with ``c``
    with pytest.raises(pymysql.MySQLError) as refused:
        env.login(name, pw).close()
    assert refused.value.args[0] in {1203, 1226}  # MAX_USER_CONNECTIONS reached
    return extra


def _maria_open_transaction_holding_row_locks(
    env: MariaEnv, c: MariaConn, name: str, pw: str
) -> list[MariaConn]:
    _fetch(c, "START TRANSACTION")
    _fetch(c, "SELECT * FROM items WHERE id = 1 FOR UPDATE")
    _fetch(c, "INSERT INTO items VALUES (100, 'uncommitted')")
    return []


def _maria_named_lock_held(env: MariaEnv, c: MariaConn, name: str, pw: str) -> list[MariaConn]:
    assert _fetch(c, "SELECT GET_LOCK(%s, 0)", [f"pinned-{name}"]) == ((1,),)
    return []


def _maria_user_variables_and_prepared_statements(
    env: MariaEnv, c: MariaConn, name: str, pw: str
) -> list[MariaConn]:
    _fetch(c, "SET @pinned = 1")
    _fetch(c, "PREPARE pinned FROM 'SELECT * FROM items'")
    return []


MARIA_TRICKS: dict[str, MariaTrick] = {
    "password_set_by_the_agent": _maria_password_set_by_the_agent,
    "every_allowed_connection_left_open": _maria_every_allowed_connection_left_open,
    "open_transaction_holding_row_locks": _maria_open_transaction_holding_row_locks,
    "named_lock_held": _maria_named_lock_held,
    "session_state_left_behind": _maria_user_variables_and_prepared_statements,
}


@pytest.mark.parametrize("trick", MARIA_TRICKS.values(), ids=MARIA_TRICKS.keys())
def test_maria_revocation_survives(maria: MariaEnv, trick: MariaTrick) -> None:
    name, pw = maria.create_user()
    c = maria.login(name, pw)
    opened = [c]
    try:
        opened += trick(maria, c, name, pw)
        maria.revoke(name)
        assert_maria_gone(name)
        for conn in opened:
            assert_maria_dead(conn)
        assert_maria_login_refused(maria, name, pw, "agent-chosen")
        with contextlib.closing(_maria()) as root:
            # Whatever it held is free again.
            assert _fetch(root, "SELECT IS_FREE_LOCK(%s)", [f"pinned-{name}"]) == ((1,),)
            _fetch(root, "START TRANSACTION")
            rows = _fetch(root, f"SELECT id FROM `{maria.db}`.items FOR UPDATE NOWAIT")
            _fetch(root, "ROLLBACK")
            assert rows == ((1,),)
    finally:
        for conn in opened:
            conn.close()


def test_maria_query_in_flight_with_its_timeout_lifted_is_cut_off(maria: MariaEnv) -> None:
    name, pw = maria.create_user()
    c = maria.login(name, pw)
    failure: list[BaseException] = []

    def sleeper() -> None:
        try:
            _fetch(c, "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(3600)")
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    try:
        with contextlib.closing(_maria()) as root:
            _wait_until(
                "the agent's query is running",
                lambda: (
                    _fetch(
                        root,
                        "SELECT count(*) FROM information_schema.PROCESSLIST"
                        " WHERE USER = %s AND INFO LIKE %s",
                        [name, "%SLEEP(3600)%"],
                    )
                    == ((1,),)
                ),
            )
        maria.revoke(name)
        t.join(WAIT)
        assert not t.is_alive()
        assert failure and isinstance(failure[0], pymysql.MySQLError)
        assert_maria_gone(name)
    finally:
        c.close()


def test_maria_accounts_of_an_earlier_hosts_setting_are_dropped(maria: MariaEnv) -> None:
    """Revocation statements follow the desired state; a lease created under the
    old ``hosts`` must not leave its accounts behind while reported revoked."""
    name, pw = maria.create_user(hosts=(HOST, "10.255.255.1"))
    c = maria.login(name, pw)
    try:
        maria.revoke(name, hosts=("10.0.9.%",))
        assert_maria_gone(name)
        assert_maria_dead(c)
    finally:
        c.close()


def test_maria_login_from_another_host_is_refused(maria: MariaEnv) -> None:
    name, pw = maria.create_user(hosts=("10.255.255.1",))
    with pytest.raises(pymysql.MySQLError) as refused:
        maria.login(name, pw).close()
    # access denied, no account for this host: 1045, or 1698 when the server matched
    # another account for the address (one using a socket or no password)
    assert refused.value.args[0] in (1045, 1698)
    maria.revoke(name, hosts=("10.255.255.1",))
    assert_maria_gone(name)


MARIA_ESCALATIONS = {
    "alter_own_limits": "ALTER USER CURRENT_USER() WITH MAX_STATEMENT_TIME 0",
    "alter_own_account": "ALTER USER CURRENT_USER() ACCOUNT UNLOCK",
    "grant_onwards": "GRANT SELECT ON `{db}`.* TO '{name}'@'%'",
    "create_user": "CREATE USER 'pinned'@'%'",
    "temporary_table": "CREATE TEMPORARY TABLE pinned (x int)",
    "create_view": "CREATE VIEW pinned AS SELECT 1",
    "create_procedure": "CREATE PROCEDURE pinned() SELECT 1",
    "create_event": "CREATE EVENT pinned ON SCHEDULE EVERY 1 DAY DO SELECT 1",
    "read_other_database": "SELECT * FROM `{other}`.items",
    "read_password_hashes": "SELECT * FROM mysql.global_priv",
}


@pytest.mark.parametrize("statement", MARIA_ESCALATIONS.values(), ids=MARIA_ESCALATIONS.keys())
def test_maria_session_user_cannot(maria: MariaEnv, statement: str) -> None:
    name, pw = maria.create_user()
    with contextlib.closing(maria.login(name, pw)) as c, pytest.raises(pymysql.MySQLError):
        _fetch(c, statement.format(db=maria.db, other=maria.other_db, name=name))
    maria.revoke(name)


def test_maria_statement_time_is_a_default_the_user_can_lift(maria: MariaEnv) -> None:
    """Measured, not wished: ``MAX_STATEMENT_TIME`` only sets the session's starting
    ``max_statement_time``. ``SET STATEMENT … FOR`` and ``SET SESSION`` lift it;
    the gateway's own timeout and the statement guard are the walls."""
    name, pw = maria.create_user(max_statement_time_ms=300)
    with contextlib.closing(maria.login(name, pw)) as c:
        assert float(_fetch(c, "SELECT @@max_statement_time")[0][0]) == pytest.approx(0.3)
        with pytest.raises(pymysql.MySQLError) as interrupted:
            _fetch(c, "SELECT SLEEP(1)")
        assert interrupted.value.args[0] == 1969  # max_statement_time exceeded
        # SLEEP returns 0 when it ran to the end, 1 when interrupted.
        assert _fetch(c, "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(1)") == ((0,),)
        _fetch(c, "SET SESSION max_statement_time = 0")
        assert _fetch(c, "SELECT SLEEP(1)") == ((0,),)
    maria.revoke(name)


def test_maria_xa_prepared_transaction_survives_the_user(maria: MariaEnv) -> None:
    """A residual, written down in operations.md: an XA transaction prepared by the
    session user outlives its connection and its account (MariaDB ≥ 10.5) and keeps
    its row locks, and nothing names its owner, so revocation cannot roll it back.
    It holds no credential; the statement guard refuses XA, and a DBA rolls
    orphans back (``XA RECOVER``)."""
    name, pw = maria.create_user()
    xid = f"pinned-{maria.run}"
    try:
        with contextlib.closing(maria.login(name, pw)) as c:
            _fetch(c, f"XA START '{xid}'")
            _fetch(c, "SELECT * FROM items WHERE id = 1 FOR UPDATE")
            _fetch(c, f"XA END '{xid}'")
            _fetch(c, f"XA PREPARE '{xid}'")
        maria.revoke(name)
        assert_maria_gone(name)
        with contextlib.closing(_maria()) as root:
            recovered = {bytes(r[3]) for r in _fetch(root, "XA RECOVER")}
            assert xid.encode() in recovered
    finally:
        with contextlib.closing(_maria()) as root:
            with contextlib.suppress(pymysql.MySQLError):  # 1402 XA_RBROLLBACK: rolled back
                _fetch(root, f"XA ROLLBACK '{xid}'")
            # Left prepared, it would hold the table's locks and hang DROP DATABASE.
            assert xid.encode() not in {bytes(r[3]) for r in _fetch(root, "XA RECOVER")}


def test_maria_revoking_a_missing_user_succeeds(maria: MariaEnv) -> None:
    name, _ = maria.create_user()
    maria.revoke(name)
    maria.revoke(name)
    maria.revoke(f"v-Mx-{maria.run}-never")


def test_maria_admin_unable_to_list_accounts_fails_the_revocation_but_not_the_lockout(
    maria: MariaEnv,
) -> None:
    """Without ``SELECT (User, Host) ON mysql.user`` the admin cannot find every
    account of the user: the revocation fails, after the lock and the kill."""
    weak, weak_pw = f"clawql_rev_weak_{maria.run}", secrets.token_urlsafe(18)
    maria.users.append(weak)
    with contextlib.closing(_maria()) as root:
        _create_maria_admin(root, weak, weak_pw, (maria.db,))
    name, pw = maria.create_user()
    c = maria.login(name, pw)
    try:
        with pytest.raises(pymysql.MySQLError) as failed:
            maria.revoke(name, as_admin=(weak, weak_pw))
        assert failed.value.args[0] == 1142  # SELECT command denied … mysql.user
        with pytest.raises(pymysql.MySQLError) as locked:
            maria.login(name, pw).close()
        assert locked.value.args[0] == 4151  # this account is locked
        assert_maria_dead(c)
        maria.revoke(name)
        assert_maria_gone(name)
    finally:
        c.close()
