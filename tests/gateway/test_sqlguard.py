"""The SQL statement guard, without a database: every refusal named after what it stops.

The live proofs (the refused statements change nothing; MariaDB runs nothing the guard
did not see) are in ``test_sql_tool_live.py``.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast, parse_sql
from pglast.visitors import Visitor
from pymysql.converters import escape_item

from clawql_secrets.gateway import sqlguard
from clawql_secrets.gateway.errors import AccessDenied, RequestRejected

READ = sqlguard.DEFAULT_CLASSES
EVERYTHING = frozenset(sqlguard.CLASSES) - sqlguard.NEVER_GRANTABLE


def _code(engine: sqlguard.Engine, text: str, allowed: frozenset[str] = READ) -> str:
    """The refusal code for ``text``, or "ok"."""
    try:
        sqlguard.check(engine, text, allowed)
    except (AccessDenied, RequestRejected) as exc:
        return exc.code
    return "ok"


# -- PostgreSQL: refused ------------------------------------------------------------------
PG_REFUSED = {
    # issue 13 item 1: the session's user takes a credential
    "alter_role_current_user_password": (
        "ALTER ROLE CURRENT_USER PASSWORD 'x'",
        "sql_role_refused",
    ),
    "alter_user_password": ("ALTER USER CURRENT_USER WITH PASSWORD 'x'", "sql_role_refused"),
    "create_role": ("CREATE ROLE backdoor LOGIN PASSWORD 'x'", "sql_role_refused"),
    "grant_to_public": ("GRANT SELECT ON items TO PUBLIC", "sql_role_refused"),
    "grant_role": ("GRANT pg_read_server_files TO CURRENT_USER", "sql_role_refused"),
    "revoke": ("REVOKE SELECT ON items FROM PUBLIC", "sql_role_refused"),
    # issue 13 item 2: the role pinned past the session
    "alter_default_privileges": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO PUBLIC",
        "sql_role_refused",
    ),
    "owner_to": ("ALTER TABLE items OWNER TO someone", "sql_role_refused"),
    "reassign_owned": ("REASSIGN OWNED BY CURRENT_USER TO postgres", "sql_role_refused"),
    "user_mapping": ("CREATE USER MAPPING FOR CURRENT_USER SERVER s", "sql_role_refused"),
    "schema_authorization": ("CREATE SCHEMA s AUTHORIZATION someone", "sql_role_refused"),
    "lo_create": ("SELECT lo_create(0)", "sql_function_refused"),
    "lo_create_qualified": ("SELECT pg_catalog.lo_create(0)", "sql_function_refused"),
    "lo_create_quoted": ('SELECT "lo_create"(0)', "sql_function_refused"),
    "lo_in_where": ("SELECT * FROM items WHERE id = lo_creat(-1)", "sql_function_refused"),
    "lo_in_from": ("SELECT * FROM lo_from_bytea(0, 'x') AS t", "sql_function_refused"),
    "lo_import": ("SELECT lo_import('/etc/passwd')", "sql_function_refused"),
    "lowrite": ("SELECT lowrite(0, 'x')", "sql_function_refused"),
    "lo_in_cte": ("WITH x AS (SELECT lo_create(0)) SELECT * FROM x", "sql_function_refused"),
    "lo_in_subquery": ("SELECT (SELECT lo_unlink(1))", "sql_function_refused"),
    "create_table": ("CREATE TABLE mine (a int)", "sql_ddl_refused"),
    "select_into_table": ("SELECT 1 INTO mine", "sql_ddl_refused"),
    "create_table_as": ("CREATE TABLE mine AS SELECT 1", "sql_ddl_refused"),
    "truncate": ("TRUNCATE items", "sql_ddl_refused"),
    "comment_on": ("COMMENT ON TABLE items IS 'x'", "sql_ddl_refused"),
    # the timeout and the identity are the gateway's
    "set_statement_timeout": ("SET statement_timeout = 0", "sql_session_refused"),
    "set_local_statement_timeout": ("SET LOCAL statement_timeout = 0", "sql_session_refused"),
    "reset_statement_timeout": ("RESET statement_timeout", "sql_session_refused"),
    "reset_all": ("RESET ALL", "sql_session_refused"),
    "set_role": ("SET ROLE postgres", "sql_session_refused"),
    "reset_role": ("RESET ROLE", "sql_session_refused"),
    "set_session_authorization": ("SET SESSION AUTHORIZATION postgres", "sql_session_refused"),
    "set_search_path": ("SET search_path = other_tenant", "sql_session_refused"),
    "set_config_function": (
        "SELECT set_config('statement_timeout', '0', false)",
        "sql_function_refused",
    ),
    "set_config_role": ("SELECT set_config('role', 'postgres', false)", "sql_function_refused"),
    "prepare": ("PREPARE p AS SELECT 1", "sql_session_refused"),
    "execute_prepared": ("EXECUTE p", "sql_session_refused"),
    "declare_cursor": ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "sql_session_refused"),
    "listen": ("LISTEN ch", "sql_session_refused"),
    "discard": ("DISCARD ALL", "sql_session_refused"),
    # code the guard cannot read
    "do_block": ("DO $$ BEGIN PERFORM lo_create(0); END $$", "sql_procedural_refused"),
    "do_block_language": ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", "sql_procedural_refused"),
    "call": ("CALL proc()", "sql_procedural_refused"),
    "create_function": (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "sql_procedural_refused",
    ),
    "create_trigger": (
        "CREATE TRIGGER t BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION f()",
        "sql_procedural_refused",
    ),
    "create_rule": (
        "CREATE RULE r AS ON SELECT TO items DO INSTEAD SELECT 1",
        "sql_procedural_refused",
    ),
    "query_to_xml_runs_sql": (
        "SELECT query_to_xml('SELECT lo_create(0)', true, false, '')",
        "sql_function_refused",
    ),
    "ts_stat_runs_sql": ("SELECT * FROM ts_stat('SELECT 1')", "sql_function_refused"),
    "dblink": ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", "sql_function_refused"),
    # the server's files and other sessions
    "copy_to_program": ("COPY items TO PROGRAM 'id'", "sql_copy_refused"),
    "copy_from_file": ("COPY items FROM '/etc/passwd'", "sql_copy_refused"),
    "copy_to_stdout": ("COPY (SELECT 1) TO STDOUT", "sql_copy_refused"),
    "pg_read_file": ("SELECT pg_read_file('/etc/passwd')", "sql_function_refused"),
    "pg_ls_dir": ("SELECT * FROM pg_ls_dir('.')", "sql_function_refused"),
    "pg_terminate_backend": ("SELECT pg_terminate_backend(1)", "sql_function_refused"),
    "pg_cancel_backend": ("SELECT pg_cancel_backend(1)", "sql_function_refused"),
    "pg_reload_conf": ("SELECT pg_reload_conf()", "sql_function_refused"),
    "replication_slot": (
        "SELECT pg_create_logical_replication_slot('s', 'test_decoding')",
        "sql_function_refused",
    ),
    "session_advisory_lock": ("SELECT pg_advisory_lock(1)", "sql_function_refused"),
    "pg_notify": ("SELECT pg_notify('ch', 'x')", "sql_function_refused"),
    # writes, for a read-only role
    "insert": ("INSERT INTO items VALUES (1)", "sql_write_refused"),
    "update": ("UPDATE items SET name = 'x'", "sql_write_refused"),
    "delete": ("DELETE FROM items", "sql_write_refused"),
    "merge": (
        "MERGE INTO items USING src ON items.id = src.id WHEN MATCHED THEN DELETE",
        "sql_write_refused",
    ),
    "data_modifying_cte": (
        "WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d",
        "sql_write_refused",
    ),
    "select_for_update": ("SELECT * FROM items FOR UPDATE", "sql_write_refused"),
    "select_for_share_in_subquery": (
        "SELECT * FROM (SELECT * FROM items FOR SHARE) s",
        "sql_write_refused",
    ),
    "explain_analyze_delete": ("EXPLAIN ANALYZE DELETE FROM items", "sql_write_refused"),
    "nextval": ("SELECT nextval('s')", "sql_write_refused"),
    # the rest
    "begin": ("BEGIN", "sql_transaction_refused"),
    "set_transaction": ("SET TRANSACTION READ WRITE", "sql_transaction_refused"),
    "lock_table": ("LOCK TABLE items", "sql_lock_refused"),
    "prepare_transaction": ("PREPARE TRANSACTION 'pinned'", "sql_other_refused"),
    "commit_prepared": ("COMMIT PREPARED 'pinned'", "sql_other_refused"),
    "vacuum": ("VACUUM items", "sql_other_refused"),
    "notify": ("NOTIFY ch", "sql_other_refused"),
    "load_library": ("LOAD 'plpgsql'", "sql_other_refused"),
    "checkpoint": ("CHECKPOINT", "sql_other_refused"),
    # one statement, parsed
    "second_statement": ("SELECT 1; DROP TABLE items", "sql_multiple_statements"),
    "second_statement_after_comment": (
        "SELECT 1 -- ok\n; ALTER ROLE CURRENT_USER PASSWORD 'x'",
        "sql_multiple_statements",
    ),
    "second_statement_after_block_comment": (
        "SELECT 1 /* ; */ ; SELECT lo_create(0)",
        "sql_multiple_statements",
    ),
    "second_statement_after_string": ("SELECT ';'; SELECT 2", "sql_multiple_statements"),
    "comment_hides_nothing": (
        "ALTER ROLE CURRENT_USER PASSWORD 'x' -- ; SELECT 1",
        "sql_role_refused",
    ),
    "nested_comment_hides_nothing": (
        "SELECT 1 /* /* */ ; ALTER ROLE CURRENT_USER PASSWORD 'x' */",
        "ok",
    ),
    "garbage": ("SELEC 1", "sql_unparsable"),
    "unterminated_string": ("SELECT 'x", "sql_unparsable"),
    "unterminated_comment": ("SELECT 1 /* x", "sql_unparsable"),
    "only_a_comment": ("-- nothing", "sql_unparsable"),
    "only_semicolons": (";;", "sql_unparsable"),
    "nul_character": ("SELECT 1\x00; DROP TABLE items", "sql_unparsable"),
    "nested_too_deep": ("SELECT " + "(" * 20_000 + "1" + ")" * 20_000, "sql_unparsable"),
}


@pytest.mark.parametrize(("text", "code"), PG_REFUSED.values(), ids=PG_REFUSED.keys())
def test_postgresql_refusals(text: str, code: str) -> None:
    assert _code("postgresql", text) == code


# Refused whatever the role is granted: functions, settings, never-grantable classes.
PG_REFUSED_EVEN_IF_GRANTED = {
    "set_statement_timeout": ("SET statement_timeout = 0", "sql_setting_refused"),
    "set_role": ("SET ROLE postgres", "sql_setting_refused"),
    "set_session_authorization": ("SET SESSION AUTHORIZATION x", "sql_setting_refused"),
    "set_session_characteristics": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "sql_setting_refused",
    ),
    "reset_all": ("RESET ALL", "sql_setting_refused"),
    "set_search_path": ("SET search_path = x", "sql_setting_refused"),
    "alter_role_password": ("ALTER ROLE CURRENT_USER PASSWORD 'x'", "sql_role_refused"),
    "copy": ("COPY items TO STDOUT", "sql_copy_refused"),
    "vacuum": ("VACUUM", "sql_other_refused"),
    "lo_create_in_insert": ("INSERT INTO items VALUES (lo_create(0))", "sql_function_refused"),
    "set_config_in_update": (
        "UPDATE items SET name = set_config('role', 'x', false)",
        "sql_function_refused",
    ),
    "lo_create_in_call": ("CALL proc(lo_create(0))", "sql_function_refused"),
}


@pytest.mark.parametrize(
    ("text", "code"), PG_REFUSED_EVEN_IF_GRANTED.values(), ids=PG_REFUSED_EVEN_IF_GRANTED.keys()
)
def test_postgresql_refusals_no_grant_lifts(text: str, code: str) -> None:
    assert _code("postgresql", text, EVERYTHING) == code


PG_ACCEPTED = {
    "modulo": "SELECT 5 % 2",
    "like_percent": "SELECT * FROM items WHERE name LIKE 'x%'",
    "like_escaped": "SELECT * FROM items WHERE name LIKE E'x\\\\%' ESCAPE '\\'",
    "dollar_params": "SELECT * FROM items WHERE id = $1 AND name = $2",
    "cte": "WITH a AS (SELECT 1 AS x), b AS (SELECT x + 1 AS y FROM a) SELECT * FROM b",
    "recursive_cte": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) "
        "SELECT * FROM n"
    ),
    "join": "SELECT a.id, b.name FROM items a JOIN other b USING (id) LEFT JOIN c ON true",
    "window": "SELECT id, rank() OVER (PARTITION BY name ORDER BY id DESC) FROM items",
    "multi_line": "SELECT id,\n       name\n  FROM items\n WHERE id > 1\n ORDER BY id\n",
    "semicolon_in_string": "SELECT ';', 'a;b' FROM items",
    "semicolon_in_comment": "SELECT 1 /* ; DROP TABLE items */",
    "semicolon_in_line_comment": "SELECT 1 -- ; DROP TABLE items",
    "semicolon_in_dollar_quote": "SELECT $$;DROP TABLE items$$",
    "trailing_semicolon": "SELECT 1;",
    "values": "VALUES (1, 'a'), (2, 'b')",
    "table": "TABLE items",
    "union": "SELECT 1 UNION ALL SELECT 2",
    "explain": "EXPLAIN SELECT * FROM items",
    "show": "SHOW statement_timeout",
    "pg_sleep_bounded_by_the_timeout": "SELECT pg_sleep(1)",
    "xact_advisory_lock": "SELECT pg_try_advisory_xact_lock(1)",
    "aggregates": "SELECT count(*), max(id), string_agg(name, ',') FROM items GROUP BY name",
    "json": "SELECT jsonb_build_object('a', 1) -> 'a', '{\"a\": 1}'::jsonb @> '{}'",
    "lo_in_string_only": "SELECT 'lo_create(0)'",
    "lo_as_column_name": "SELECT lo_create FROM items",
}


@pytest.mark.parametrize("text", PG_ACCEPTED.values(), ids=PG_ACCEPTED.keys())
def test_postgresql_ordinary_sql_accepted(text: str) -> None:
    assert _code("postgresql", text) == "ok"


def test_postgresql_writer_may_write() -> None:
    rw = sqlguard.classes_for_privileges(["SELECT", "INSERT"])
    assert _code("postgresql", "INSERT INTO items VALUES ($1) RETURNING id", rw) == "ok"
    assert _code("postgresql", "WITH d AS (DELETE FROM items RETURNING *) SELECT 1", rw) == "ok"
    assert _code("postgresql", "SELECT * FROM items FOR UPDATE", rw) == "ok"
    assert _code("postgresql", "CREATE TABLE x (a int)", rw) == "sql_ddl_refused"


def test_postgresql_statement_shape() -> None:
    s = sqlguard.classify("postgresql", "SELECT $2::int, lo_get(1) FROM t WHERE a = $1")
    assert (s.kind, s.cls, s.placeholders) == ("SelectStmt", "read", 2)
    assert s.functions == {"lo_get"}
    s = sqlguard.classify("postgresql", "SET LOCAL statement_timeout = 0")
    assert (s.cls, s.settings) == ("session", {"statement_timeout"})
    s = sqlguard.classify("postgresql", "EXPLAIN ANALYZE WITH d AS (DELETE FROM t) SELECT 1")
    assert s.classes == {"write"}
    s = sqlguard.classify("postgresql", "PREPARE p AS DELETE FROM t")
    assert s.classes == {"session", "write"} and s.cls == "session"


# -- MariaDB: refused ---------------------------------------------------------------------
MARIA_REFUSED = {
    # issue 13 item 1: the session's user takes a credential
    "set_password_function": ("SET PASSWORD = PASSWORD('x')", "sql_role_refused"),
    "set_password_plain": ("SET PASSWORD = 'x'", "sql_role_refused"),
    # Regression (red team): SHOW GRANTS printed the session user's password hash.
    "show_grants_prints_the_password_hash": ("SHOW GRANTS", "sql_role_refused"),
    "show_grants_for_current_user": ("SHOW GRANTS FOR CURRENT_USER", "sql_role_refused"),
    "set_password_lowercase": ("set password = password('x')", "sql_role_refused"),
    "set_password_for_current_user": (
        "SET PASSWORD FOR CURRENT_USER() = PASSWORD('x')",
        "sql_role_refused",
    ),
    "alter_user_identified": ("ALTER USER CURRENT_USER() IDENTIFIED BY 'x'", "sql_role_refused"),
    "create_user": ("CREATE USER backdoor IDENTIFIED BY 'x'", "sql_role_refused"),
    "create_or_replace_user": ("CREATE OR REPLACE USER u IDENTIFIED BY 'x'", "sql_role_refused"),
    "grant": ("GRANT ALL ON *.* TO CURRENT_USER()", "sql_role_refused"),
    "revoke": ("REVOKE SELECT ON items FROM u", "sql_role_refused"),
    "set_default_role": ("SET DEFAULT ROLE admin", "sql_role_refused"),
    "drop_user": ("DROP USER u", "sql_role_refused"),
    "rename_user": ("RENAME USER a TO b", "sql_role_refused"),
    # issue 13 item 3: the statement timeout bypassed
    "set_statement_for": (
        "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(1)",
        "sql_session_refused",
    ),
    "set_max_statement_time": ("SET max_statement_time = 0", "sql_session_refused"),
    "set_session_max_statement_time": (
        "SET SESSION max_statement_time = 0",
        "sql_session_refused",
    ),
    "set_at_at_max_statement_time": (
        "SET @@max_statement_time = 0",
        "sql_session_refused",
    ),
    "set_at_at_session_max_statement_time": (
        "SET @@session.max_statement_time = 0",
        "sql_session_refused",
    ),
    "set_global": ("SET GLOBAL max_statement_time = 0", "sql_session_refused"),
    "set_user_var_and_system_var": ("SET @a = 1, max_statement_time = 0", "sql_session_refused"),
    "set_sql_mode": ("SET sql_mode = 'NO_BACKSLASH_ESCAPES'", "sql_session_refused"),
    "set_names": ("SET NAMES gbk", "sql_session_refused"),
    "set_role": ("SET ROLE admin", "sql_session_refused"),
    "use_other_database": ("USE other_tenant", "sql_session_refused"),
    "prepare": ("PREPARE s FROM 'SET PASSWORD = PASSWORD(1)'", "sql_session_refused"),
    "execute_immediate": ("EXECUTE IMMEDIATE 'SELECT 1'", "sql_session_refused"),
    # executable comments and lexer disagreements: MariaDB runs what parsers skip
    "executable_comment": ("SELECT 1 /*! , SLEEP(10) */", "sql_unparsable"),
    "versioned_executable_comment": ("SELECT 1 /*!50000 , SLEEP(10) */", "sql_unparsable"),
    "mariadb_executable_comment": ("SELECT 1 /*M!100000 , SLEEP(10) */", "sql_unparsable"),
    "mariadb_executable_comment_lower": ("SELECT 1 /*m! , SLEEP(10) */", "sql_unparsable"),
    "dashdash_nbsp": ("SELECT 1 --\xa0, LOAD_FILE('/etc/passwd')", "sql_unparsable"),
    "dashdash_ideographic_space": ("SELECT 1 --\u3000, LOAD_FILE('x')", "sql_unparsable"),
    "nul_character": ("SELECT 1\x00, LOAD_FILE('x')", "sql_unparsable"),
    # files, locks, CPU
    "load_file": ("SELECT LOAD_FILE('/etc/passwd')", "sql_function_refused"),
    "load_file_lowercase": ("select load_file('/etc/passwd')", "sql_function_refused"),
    "load_file_spaced": ("SELECT LOAD_FILE /* c */ ('/etc/passwd')", "sql_function_refused"),
    "load_file_in_show": ("SHOW TABLES WHERE LOAD_FILE('x') IS NULL", "sql_function_refused"),
    "load_file_in_set": ("SET @a = LOAD_FILE('/etc/passwd')", "sql_function_refused"),
    "into_outfile": ("SELECT * FROM items INTO OUTFILE '/tmp/x'", "sql_copy_refused"),
    "into_dumpfile": ("SELECT 1 INTO DUMPFILE '/tmp/x'", "sql_copy_refused"),
    "load_data_local": (
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE items",
        "sql_copy_refused",
    ),
    "load_xml": ("LOAD XML INFILE '/x' INTO TABLE items", "sql_copy_refused"),
    "benchmark": ("SELECT BENCHMARK(100000000, MD5('x'))", "sql_function_refused"),
    "get_lock": ("SELECT GET_LOCK('global', 10)", "sql_function_refused"),
    "is_used_lock": ("SELECT IS_USED_LOCK('other-tenant')", "sql_function_refused"),
    "master_pos_wait": ("SELECT MASTER_POS_WAIT('f', 1)", "sql_function_refused"),
    "sys_exec": ("SELECT sys_exec('id')", "sql_function_refused"),
    # writes, for a read-only role
    "insert": ("INSERT INTO items VALUES (1)", "sql_write_refused"),
    "replace": ("REPLACE INTO items VALUES (1)", "sql_write_refused"),
    "update": ("UPDATE items SET name = 'x'", "sql_write_refused"),
    "delete": ("DELETE FROM items", "sql_write_refused"),
    "select_for_update": ("SELECT * FROM items FOR UPDATE", "sql_write_refused"),
    "lock_in_share_mode": ("SELECT * FROM items LOCK IN SHARE MODE", "sql_write_refused"),
    "nextval": ("SELECT NEXTVAL(s)", "sql_write_refused"),
    # the rest
    "create_table": ("CREATE TABLE mine (a int)", "sql_ddl_refused"),
    "drop_table": ("DROP TABLE items", "sql_ddl_refused"),
    "truncate": ("TRUNCATE items", "sql_ddl_refused"),
    "rename_table": ("RENAME TABLE items TO x", "sql_ddl_refused"),
    "create_procedure": ("CREATE PROCEDURE p() SELECT 1", "sql_procedural_refused"),
    "create_definer_procedure": (
        "CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1",
        "sql_procedural_refused",
    ),
    "create_event": (
        "CREATE EVENT e ON SCHEDULE EVERY 1 SECOND DO SELECT 1",
        "sql_procedural_refused",
    ),
    "call": ("CALL p()", "sql_procedural_refused"),
    "begin": ("BEGIN", "sql_transaction_refused"),
    "start_transaction": ("START TRANSACTION", "sql_transaction_refused"),
    "lock_tables": ("LOCK TABLES items WRITE", "sql_lock_refused"),
    "kill": ("KILL 1", "sql_other_refused"),
    "xa_start": ("XA START 'x'", "sql_unparsable"),
    "shutdown": ("SHUTDOWN", "sql_other_refused"),
    "flush": ("FLUSH PRIVILEGES", "sql_other_refused"),
    "handler": ("HANDLER items OPEN", "sql_unparsable"),
    # one statement, parsed
    "second_statement": ("SELECT 1; SET PASSWORD = PASSWORD('x')", "sql_multiple_statements"),
    "second_statement_after_hash_comment": (
        "SELECT 1 # x\n; DROP TABLE items",
        "sql_multiple_statements",
    ),
    "second_statement_after_replace": (
        "REPLACE INTO items VALUES (1); DROP TABLE items",
        "sql_multiple_statements",
    ),
    "hash_comment_hides_nothing": ("SET PASSWORD = PASSWORD('x') # ; SELECT 1", "sql_role_refused"),
    "garbage": ("SELEC 1", "sql_unparsable"),
    "unterminated_string": ("SELECT 'x", "sql_unparsable"),
    "empty": ("  ", "sql_unparsable"),
    "do_statement": ("DO SLEEP(10)", "sql_unparsable"),
}


@pytest.mark.parametrize(("text", "code"), MARIA_REFUSED.values(), ids=MARIA_REFUSED.keys())
def test_mariadb_refusals(text: str, code: str) -> None:
    assert _code("mariadb", text) == code


MARIA_REFUSED_EVEN_IF_GRANTED = {
    "set_statement_for": (
        "SET STATEMENT max_statement_time=0 FOR SELECT 1",
        "sql_setting_refused",
    ),
    "set_max_statement_time": ("SET max_statement_time = 0", "sql_setting_refused"),
    "set_global_time_zone": ("SET GLOBAL time_zone = '+00:00'", "sql_setting_refused"),
    "set_sql_mode": ("SET SESSION sql_mode = ''", "sql_setting_refused"),
    "set_names": ("SET NAMES gbk", "sql_setting_refused"),
    "set_password": ("SET PASSWORD = PASSWORD('x')", "sql_role_refused"),
    "load_file_in_insert": (
        "INSERT INTO items SELECT 1, LOAD_FILE('/etc/passwd')",
        "sql_function_refused",
    ),
    "load_file_in_replace": (
        "REPLACE INTO items SELECT 1, LOAD_FILE('/etc/passwd')",
        "sql_function_refused",
    ),
    "load_file_in_call": ("CALL p(LOAD_FILE('/etc/passwd'))", "sql_function_refused"),
}


@pytest.mark.parametrize(
    ("text", "code"),
    MARIA_REFUSED_EVEN_IF_GRANTED.values(),
    ids=MARIA_REFUSED_EVEN_IF_GRANTED.keys(),
)
def test_mariadb_refusals_no_grant_lifts(text: str, code: str) -> None:
    assert _code("mariadb", text, EVERYTHING) == code


MARIA_ACCEPTED = {
    "modulo": "SELECT 5 % 2",
    "mod_function": "SELECT MOD(5, 2)",
    "like_percent": "SELECT * FROM items WHERE name LIKE 'x%'",
    "question_params": "SELECT * FROM items WHERE id = ? AND name = ?",
    "cte": "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
    "join": "SELECT a.id, b.name FROM items a JOIN other b ON a.id = b.id",
    "window": "SELECT id, ROW_NUMBER() OVER (PARTITION BY name ORDER BY id) FROM items",
    "multi_line": "SELECT id,\n       name\n  FROM items\n WHERE id > 1\n ORDER BY id\n",
    "semicolon_in_string": "SELECT ';', \"a;b\" FROM items",
    "semicolon_in_comment": "SELECT 1 /* ; DROP TABLE items */",
    "semicolon_in_hash_comment": "SELECT 1 # ; DROP TABLE items",
    "backslash_quote_in_string": "SELECT 'it\\'s; DROP TABLE items'",
    "trailing_semicolons": "SELECT 1;;",
    "dashdash_without_space_is_minus": "SELECT 1 --1",
    "user_variable": "SET @a = 1",
    "user_variables": "SET @a := 1, @b = (SELECT COUNT(*) FROM items)",
    "select_into_user_variable": "SELECT COUNT(*) INTO @n FROM items",
    "sleep_bounded_by_the_timeout": "SELECT SLEEP(1)",
    "show": "SHOW TABLES",
    "explain": "EXPLAIN SELECT * FROM items",
    "table": "TABLE items",
    "union": "SELECT 1 UNION SELECT 2",
    "load_file_in_string_only": "SELECT 'LOAD_FILE(1)'",
    "optimizer_hint_comment": "SELECT /*+ NO_RANGE_OPTIMIZATION(items) */ 1",
}


@pytest.mark.parametrize("text", MARIA_ACCEPTED.values(), ids=MARIA_ACCEPTED.keys())
def test_mariadb_ordinary_sql_accepted(text: str) -> None:
    assert _code("mariadb", text) == "ok"


def test_mariadb_allowed_settings_when_session_granted() -> None:
    session = READ | {"session"}
    assert _code("mariadb", "SET time_zone = '+00:00'", session) == "ok"
    assert _code("mariadb", "SET time_zone = '+00:00'") == "sql_session_refused"
    assert _code("postgresql", "SET TIME ZONE 'UTC'", session) == "ok"
    assert _code("postgresql", "SET enable_seqscan = off", session) == "ok"


# -- placeholders and parameters ----------------------------------------------------------
@pytest.mark.parametrize(
    ("engine", "text", "n", "want"),
    [
        ("postgresql", "SELECT %s, %s", 2, "SELECT $1, $2"),
        ("postgresql", "SELECT %s, '%s', %s -- %s", 2, "SELECT $1, '%s', $2 -- %s"),
        ("postgresql", "SELECT $1, %s", 1, "SELECT $1, %s"),  # native wins: no rewrite
        ("postgresql", "SELECT 5 %s", 0, "SELECT 5 %s"),  # no parameters: % is an operator
        ("postgresql", "SELECT a %status FROM t", 1, "SELECT a %status FROM t"),
        ("postgresql", "SELECT $$%s$$, %s", 1, "SELECT $$%s$$, $1"),
        ("mariadb", "SELECT %s, '%s' # %s", 1, "SELECT ?, '%s' # %s"),
        ("mariadb", "SELECT ?, %s", 1, "SELECT ?, %s"),
        ("mariadb", "SELECT 'é', %s", 1, "SELECT 'é', ?"),
        ("postgresql", "SELECT 'é', %s", 1, "SELECT 'é', $1"),
    ],
)
def test_placeholders_rewritten_by_tokens(
    engine: sqlguard.Engine, text: str, n: int, want: str
) -> None:
    assert sqlguard.normalize_placeholders(engine, text, n) == want


@pytest.mark.parametrize(
    ("engine", "text", "n"),
    [
        ("postgresql", "SELECT $1", 0),
        ("postgresql", "SELECT $1, $3", 2),  # PostgreSQL wants every $n up to the highest
        ("postgresql", "SELECT 1", 1),
        ("mariadb", "SELECT ?", 2),
        ("mariadb", "SELECT '?'", 1),  # a ? in a string is not a placeholder
    ],
)
def test_params_mismatch_refused(engine: sqlguard.Engine, text: str, n: int) -> None:
    stmt = sqlguard.classify(engine, text)
    with pytest.raises(RequestRejected) as e:
        sqlguard.check_params(stmt, n)
    assert (e.value.code, e.value.status) == ("sql_params_mismatch", 400)


def _escape(value: Any) -> str:
    return str(escape_item(value, "utf8mb4"))


def test_bind_mariadb_splices_literals_outside_strings() -> None:
    stmt = sqlguard.classify("mariadb", "SELECT ?, '?', ? # ?")
    assert sqlguard.bind_mariadb(stmt, [_escape("a'b"), _escape(-5)]) == (
        "SELECT 'a\\'b', '?', -5 # ?"
    )


@pytest.mark.parametrize(
    "literal",
    ["1, LOAD_FILE('x')", "'a' 'b'", "x", "'a' /*! , SLEEP(1) */ ''", "@a := 1", "NULL, 1"],
)
def test_bind_mariadb_refuses_a_value_that_is_not_one_literal(literal: str) -> None:
    stmt = sqlguard.classify("mariadb", "SELECT ?")
    with pytest.raises(RequestRejected) as e:
        sqlguard.bind_mariadb(stmt, [literal])
    assert e.value.code == "sql_bad_param"


# -- configuration ------------------------------------------------------------------------
def test_classes_for_privileges() -> None:
    assert sqlguard.classes_for_privileges([]) == {"read"}
    assert sqlguard.classes_for_privileges(["SELECT"]) == {"read"}
    assert sqlguard.classes_for_privileges(["SELECT", "delete"]) == {"read", "write"}
    assert sqlguard.classes_for_privileges(["UPDATE"]) == {"read", "write"}


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (["read", "role"], "can never be allowed"),
        (["copy"], "can never be allowed"),
        (["other"], "can never be allowed"),
        (["reed"], "unknown statement class 'reed'"),
    ],
)
def test_grantable_refuses_unknown_and_dangerous_classes(classes: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sqlguard.grantable(classes)


def test_sqlglot_logs_no_statement_text(caplog: pytest.LogCaptureFixture) -> None:
    secret_looking = "SET PASSWORD FOR CURRENT_USER() = PASSWORD('hunter2-canary')"
    sqlguard.classify("mariadb", secret_looking)
    assert "hunter2-canary" not in caplog.text


# -- properties ---------------------------------------------------------------------------
_PG_FRAGMENTS = [
    "SELECT ",
    "1",
    " ",
    ", ",
    ";",
    "(",
    ")",
    "lo_create(0)",
    "set_config('a', 'b', false)",
    "pg_sleep(0)",
    "upper('x')",
    "'x'",
    "'",
    "$$",
    "$1",
    "/*",
    "*/",
    "--",
    "\n",
    " FROM items",
    " WHERE id = 1",
    " UNION SELECT 1",
    "WITH x AS (",
    "DELETE FROM items RETURNING 1",
    ") SELECT * FROM x",
    " FOR UPDATE",
    " INTO t2",
    "E'\\''",
    "\\",
    '"lo_create"(0)',
    "pg_catalog.lo_unlink(1)",
    "ALTER ROLE CURRENT_USER PASSWORD 'x'",
    "SET ROLE x",
    "DO $$ BEGIN END $$",
    "EXPLAIN ",
    "ANALYZE ",
    "VALUES (1)",
    "TABLE items",
    "COPY items TO STDOUT",
    "nextval('s')",
    "CREATE TABLE t (a int)",
]
_READ_KINDS = (ast.SelectStmt, ast.VariableShowStmt, ast.ExplainStmt)


class _Oracle(Visitor):  # type: ignore[misc]
    """pglast's own AST (not the JSON the guard reads): what the statement contains."""

    def __init__(self) -> None:
        self.functions: set[str] = set()
        self.nodes: set[str] = set()

    def visit(self, ancestors: Any, node: Any) -> None:
        self.nodes.add(type(node).__name__)
        if isinstance(node, ast.FuncCall):
            self.functions.add(str(node.funcname[-1].sval).lower())
        if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            self.nodes.add("IntoClause")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PG_FRAGMENTS), min_size=1, max_size=10).map("".join))
def test_property_postgresql_read_is_one_select_without_refused_functions(text: str) -> None:
    """Whatever the guard accepts for a read-only session is, by pglast's AST, one
    read statement that writes nothing, locks nothing and calls no refused function."""
    try:
        sqlguard.check("postgresql", text, READ)
    except (AccessDenied, RequestRejected):
        return
    stmts = parse_sql(text)
    assert len(stmts) == 1
    stmt = stmts[0].stmt
    assert isinstance(stmt, _READ_KINDS)
    oracle = _Oracle()
    oracle(stmts)
    writes = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "LockingClause"}
    assert not oracle.nodes & (writes | {"IntoClause"})
    assert not any(sqlguard._function_refused("postgresql", f) for f in oracle.functions)
    assert not oracle.functions & {"nextval", "setval"}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(max_size=40) | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
        max_size=3,
    )
)
def test_property_mariadb_parameters_never_change_the_statement(values: list[Any]) -> None:
    """Any values bound into ``?`` stay values: the bound text is one read statement
    calling nothing new, whatever quotes, comments or semicolons the values hold."""
    text = "SELECT " + ", ".join(["?"] * len(values) or ["1"]) + " FROM items"
    stmt = sqlguard.classify("mariadb", text)
    bound = sqlguard.bind_mariadb(stmt, [_escape(v) for v in values])
    # The raw-text pre-check would (rightly, conservatively) trip on a "/*!" inside a
    # value; the parse of the bound text is what this property is about.
    with mock.patch.object(sqlguard, "_maria_lexical_check", lambda sql: None):
        again = sqlguard.classify("mariadb", bound)
    assert again.classes == {"read"} and again.functions == set() and again.placeholders == 0
