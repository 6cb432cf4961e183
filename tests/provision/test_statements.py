"""The session user's creation and revocation statements, as the plugins will run them (pure).

``pg_plugin_pieces``/``mysql_plugin_pieces`` reproduce what OpenBao 2.7's
database plugins send to the server for one list element
(``internal/builtin/database/postgresql/postgresql.go``: ``containsMultilineStatement``
and ``strutil.ParseArbitraryStringSlice``; ``mysql/mysql.go``: always split on
``;``). The live tests run the statements through them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re

import pytest

from clawql_secrets.provision import statements

# -- the plugins' handling of one element, reproduced -------------------------
_END = re.compile(r"\bEND\b")
_DOUBLE_QUOTED = re.compile(r'(".*?")')
_SINGLE_QUOTED = re.compile(r"('.*?')")


def _contains_multiline_statement(stmt: str) -> bool:
    without = stmt
    for literal in _DOUBLE_QUOTED.findall(stmt) + _SINGLE_QUOTED.findall(stmt):
        # Sic: the plugin removes only the last literal found.
        without = stmt.replace(literal, "")
    return bool(_END.search(without))


def _parse_arbitrary_string_slice(text: str, sep: str) -> list[str]:
    text = text.strip()
    if not text:
        return []
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):
        text = base64.b64decode(text, validate=True).decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
        return parsed
    return [p.strip() for p in text.split(sep)]


def pg_plugin_pieces(element: str) -> list[str]:
    """What the postgresql plugin sends, in order, for one statement element."""
    if _contains_multiline_statement(element):
        return [element]
    return [q.strip() for q in _parse_arbitrary_string_slice(element, ";") if q.strip()]


def mysql_plugin_pieces(element: str) -> list[str]:
    """What the mysql plugin sends, in order, for one statement element."""
    return [q.strip() for q in _parse_arbitrary_string_slice(element, ";") if q.strip()]


def fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


PG = statements.postgresql("acme", ("SELECT", "INSERT"))
MARIA = statements.mariadb("acme", ("SELECT",), hosts=("10.0.4.%", "gw.internal"))
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


# -- what is rendered ----------------------------------------------------------
def test_pg_creation_is_a_bounded_role_on_its_own_schema() -> None:
    s = statements.postgresql("acme", ("SELECT",), database="clawql", temp_file_limit_kb=65536)
    assert s.creation == (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL "
        "'{{expiration}}' NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        "NOBYPASSRLS CONNECTION LIMIT 8;",
        'GRANT CONNECT ON DATABASE "clawql" TO "{{name}}";',
        'GRANT USAGE ON SCHEMA "acme" TO "{{name}}";',
        'GRANT SELECT ON ALL TABLES IN SCHEMA "acme" TO "{{name}}";',
        'ALTER ROLE "{{name}}" SET search_path = "acme";',
        "ALTER ROLE \"{{name}}\" SET temp_file_limit = '65536kB';",
    )


def test_pg_creation_without_options_grants_no_database_and_no_file_limit() -> None:
    joined = " ".join(PG.creation)
    assert "DATABASE" not in joined and "temp_file_limit" not in joined
    assert "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA" in joined


def test_pg_revocation_takes_the_login_first_and_drops_last() -> None:
    rev = PG.revocation
    nologin = next(i for i, s in enumerate(rev) if "NOLOGIN PASSWORD NULL" in s)
    commits = [i for i, s in enumerate(rev) if s == "COMMIT AND CHAIN;"]
    drop_owned = next(i for i, s in enumerate(rev) if "DROP OWNED BY" in s)
    terminates = [i for i, s in enumerate(rev) if "pg_terminate_backend" in s]
    # Nothing that can fail comes before the login is taken and committed.
    assert terminates[0] < nologin < commits[0] < drop_owned < commits[1]
    assert "EXCEPTION WHEN OTHERS THEN NULL" in rev[terminates[0]]
    # After the commit, a backend that does not go fails the revocation.
    assert all("RAISE EXCEPTION" in rev[i] for i in terminates[1:])
    assert any(commits[0] < i < drop_owned for i in terminates)
    assert rev[-1] == 'DROP ROLE IF EXISTS "{{name}}";'
    assert "REASSIGN" not in " ".join(rev)
    # Each transaction bounds its lock waits.
    starts = [0, *(i + 1 for i in commits)]
    assert all(rev[i].startswith("SET LOCAL lock_timeout = ") for i in starts)


def test_pg_terminations_wait_for_the_backends_to_exit() -> None:
    s = statements.postgresql("acme", ("SELECT",), terminate_wait_ms=1234)
    terminates = [r for r in s.revocation if "pg_terminate_backend" in r]
    assert len(terminates) == 3
    assert all(", 1234)" in r for r in terminates)


def test_maria_creation_restricts_hosts_and_sets_limits() -> None:
    s = statements.mariadb(
        "acme", ("SELECT",), hosts=("10.0.4.%", "gw.internal"), max_user_connections=3,
        max_statement_time_ms=1500,
    )  # fmt: skip
    assert s.creation == (
        "CREATE USER '{{name}}'@'10.0.4.%' IDENTIFIED BY '{{password}}', "
        "'{{name}}'@'gw.internal' IDENTIFIED BY '{{password}}' "
        "WITH MAX_USER_CONNECTIONS 3 MAX_STATEMENT_TIME 1.500;",
        "GRANT SELECT ON `acme`.* TO '{{name}}'@'10.0.4.%', '{{name}}'@'gw.internal';",
    )


def test_maria_default_host_is_any() -> None:
    s = statements.mariadb("acme", ("SELECT",))
    assert "'{{name}}'@'%' IDENTIFIED BY" in s.creation[0]
    assert "MAX_STATEMENT_TIME 5.000" in s.creation[0]


def test_maria_revocation_locks_kills_then_drops_every_host() -> None:
    rev = MARIA.revocation
    assert rev[0] == (
        "ALTER USER IF EXISTS '{{name}}'@'10.0.4.%', '{{name}}'@'gw.internal' ACCOUNT LOCK;"
    )
    assert rev[1] == rev[-1] == "KILL USER '{{name}}';"
    # The drop is not limited to the configured hosts: an account made under an
    # earlier ``hosts`` setting goes too.
    assert "FROM mysql.user WHERE User = '{{name}}'" in rev[2]
    assert rev[3:6] == (
        "PREPARE clawql_revoke FROM @clawql_revoke;",
        "EXECUTE clawql_revoke;",
        "DEALLOCATE PREPARE clawql_revoke;",
    )
    assert "REVOKE" not in " ".join(rev)  # fails for a missing user; DROP USER revokes


def test_duplicate_privileges_and_hosts_are_rendered_once() -> None:
    s = statements.mariadb("acme", ("SELECT", "SELECT"), hosts=("%", "%"))
    assert s.creation[1] == "GRANT SELECT ON `acme`.* TO '{{name}}'@'%';"


# -- how the plugins will execute it -------------------------------------------
@pytest.mark.parametrize("element", PG.creation + PG.revocation)
def test_pg_each_element_reaches_the_server_whole(element: str) -> None:
    (piece,) = pg_plugin_pieces(element)
    if element.startswith("DO "):
        assert piece == element  # sent as-is: its inner ';' are not split
    else:
        assert piece == element.removesuffix(";") and ";" not in piece


@pytest.mark.parametrize("element", MARIA.creation + MARIA.revocation)
def test_maria_each_element_reaches_the_server_whole(element: str) -> None:
    (piece,) = mysql_plugin_pieces(element)
    assert piece == element.removesuffix(";") and ";" not in piece


def test_no_element_is_read_as_base64_or_json_by_the_plugins() -> None:
    for element in PG.creation + PG.revocation + MARIA.creation + MARIA.revocation:
        with pytest.raises(binascii.Error):
            base64.b64decode(element.strip(), validate=True)
        with pytest.raises(ValueError):
            json.loads(element)


def test_revocation_uses_only_the_placeholder_the_plugins_fill_in() -> None:
    # Revocation gets {{name}} (and {{username}}) only; a {{password}} or
    # {{expiration}} there would reach the server as text.
    for s in (PG, MARIA):
        assert {m for r in s.revocation for m in PLACEHOLDER.findall(r)} == {"name"}
        assert {m for c in s.creation for m in PLACEHOLDER.findall(c)} <= {
            "name",
            "password",
            "expiration",
        }


def test_every_identifier_is_quoted() -> None:
    for text in PG.creation + PG.revocation:
        assert "{{name}}" not in text.replace('"{{name}}"', "").replace("'{{name}}'", "")
    for text in MARIA.creation + MARIA.revocation:
        assert "{{name}}" not in text.replace("'{{name}}'", "")
    assert '"acme"' in PG.creation[1] and "`acme`" in MARIA.creation[1]


# -- every input is checked ------------------------------------------------------
BAD_SCHEMAS = {
    "quote": 'acme"; DROP ROLE postgres; --',
    "backtick": "acme`",
    "upper_case": "Acme",
    "leading_digit": "1acme",
    "hyphen": "acme-eu",
    "empty": "",
    "too_long": "a" * 32,
    "public": "public",
    "pg_catalog": "pg_catalog",
    "mysql": "mysql",
    "information_schema": "information_schema",
}


@pytest.mark.parametrize("schema", BAD_SCHEMAS.values(), ids=BAD_SCHEMAS.keys())
@pytest.mark.parametrize("engine", [statements.postgresql, statements.mariadb])
def test_bad_schema_is_refused(engine: object, schema: str) -> None:
    with pytest.raises(ValueError):
        engine(schema, ("SELECT",))  # type: ignore[operator]


BAD_PRIVILEGES = {
    "none": (),
    "all": ("ALL",),
    "injection": ("SELECT ON x TO PUBLIC; --",),
    "lower_case": ("select",),
    "create": ("CREATE",),
    "truncate": ("TRUNCATE",),
}


@pytest.mark.parametrize("privileges", BAD_PRIVILEGES.values(), ids=BAD_PRIVILEGES.keys())
@pytest.mark.parametrize("engine", [statements.postgresql, statements.mariadb])
def test_bad_privileges_are_refused(engine: object, privileges: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        engine("acme", privileges)  # type: ignore[operator]


@pytest.mark.parametrize("database", ['clawql"', "Clawql", "", "a b", "a" * 32])
def test_bad_database_is_refused(database: str) -> None:
    with pytest.raises(ValueError):
        statements.postgresql("acme", ("SELECT",), database=database)


def test_postgres_database_is_a_valid_database() -> None:
    s = statements.postgresql("acme", ("SELECT",), database="postgres")
    assert 'GRANT CONNECT ON DATABASE "postgres"' in s.creation[1]


BAD_HOSTS = {
    "none": (),
    "quote": ("10.0.0.1'",),
    "backslash": ("10.0.0.1\\",),
    "at": ("a@b",),
    "space": ("10.0.0.1 ",),
    "semicolon": ("h;DROP",),
    "empty": ("",),
    "too_long": ("a" * 256,),
}


@pytest.mark.parametrize("hosts", BAD_HOSTS.values(), ids=BAD_HOSTS.keys())
def test_bad_hosts_are_refused(hosts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        statements.mariadb("acme", ("SELECT",), hosts=hosts)


def test_good_hosts_are_accepted() -> None:
    hosts = ("%", "10.0.4.%", "10.0.4.0/255.255.255.0", "gw-1.clawql.svc", "fd00::1")
    s = statements.mariadb("acme", ("SELECT",), hosts=hosts)
    assert all(f"'{{{{name}}}}'@'{h}'" in s.creation[1] for h in hosts)


BAD_NUMBERS = {
    "pg_connection_limit_zero": (statements.postgresql, {"connection_limit": 0}),
    "pg_connection_limit_unlimited": (statements.postgresql, {"connection_limit": -1}),
    "pg_connection_limit_bool": (statements.postgresql, {"connection_limit": True}),
    "pg_connection_limit_text": (statements.postgresql, {"connection_limit": "8; DROP"}),
    "pg_wait_zero": (statements.postgresql, {"terminate_wait_ms": 0}),
    "pg_lock_timeout_zero": (statements.postgresql, {"lock_timeout_ms": 0}),
    "pg_temp_file_limit_zero": (statements.postgresql, {"temp_file_limit_kb": 0}),
    "pg_temp_file_limit_float": (statements.postgresql, {"temp_file_limit_kb": 1.5}),
    "maria_connections_zero": (statements.mariadb, {"max_user_connections": 0}),
    "maria_statement_time_zero": (statements.mariadb, {"max_statement_time_ms": 0}),
    "maria_statement_time_text": (statements.mariadb, {"max_statement_time_ms": "5"}),
}


@pytest.mark.parametrize("engine,kwargs", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_bad_limits_are_refused(engine: object, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        engine("acme", ("SELECT",), **kwargs)  # type: ignore[operator]
