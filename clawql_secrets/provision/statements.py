"""Creation and revocation statements of a session's database user (pure).

OpenBao's database plugins run these; ``{{name}}``, ``{{password}}`` and
``{{expiration}}`` are filled in by the plugin (revocation gets ``{{name}}``
only). Every other identifier is checked here against the one name grammar
(``clawql_secrets.names``) and quoted anyway.

How the plugins run them (OpenBao ``internal/builtin/database/``)
----------------------------------------------------------------
PostgreSQL (``postgresql/postgresql.go``, ``NewUser``/``customDeleteUser``):
one ``BEGIN`` … ``COMMIT`` on one connection for the whole list; an element
containing the upper-case word ``END`` is sent as it is, any other is split on
every ``;`` and each piece sent alone (pgx, simple protocol: no parameters);
the first error rolls the transaction back and fails the call. MySQL/MariaDB
(``mysql/mysql.go``): the same single transaction, always split on ``;``; but
account statements (``ALTER``/``DROP USER``) commit implicitly and ``KILL`` is
not transactional, so each step there stands on its own.

Revocation, PostgreSQL
----------------------
With one transaction, a ``DROP ROLE`` that fails (the role owns a large object,
holds default privileges, owns something in another database) used to roll
back everything before it: the user kept ``LOGIN`` and the lease stayed. So
the list commits in the middle, ``COMMIT AND CHAIN`` (the plugin's final
``COMMIT`` closes the chained transaction):

1. best effort, cannot fail: terminate the role's backends, waiting for them
   to exit (one left idle in a transaction could hold the row lock on its own
   ``pg_authid`` entry, e.g. after ``ALTER ROLE CURRENT_USER PASSWORD``, and
   make step 2 wait);
2. ``NOLOGIN`` and ``PASSWORD NULL`` — committed: from here on nobody logs in
   as the role, whatever fails later (the password the agent may have set for
   itself is gone too);
3. terminate again, authoritatively: a backend that slipped in before the
   commit, or one that does not exit (or may not be signalled), fails the
   revocation;
4. ``DROP OWNED BY`` (after making the engine's admin a member, which
   PostgreSQL requires of a non-superuser): drops what the role owns here
   (large objects, default privileges) and revokes every privilege it holds
   here or on shared objects — committed;
5. terminate once more (a backend that authenticated just before step 2 and
   registered late), then ``DROP ROLE``: it fails, so the lease stays and the
   gateway reports ``revocation_pending``, if the role still owns or holds
   anything in another database. A retry runs the whole list again; every
   step is idempotent, and a role that is already gone is a success.

Each termination needs a transaction of its own anyway: ``pg_stat_activity``
is read once per transaction, so a second look in the same one would still
list the backends the first one ended.

``REASSIGN OWNED`` is deliberately not used: nothing a session user may own is
worth keeping, and handing its large objects to the admin would keep the
``GRANT … TO PUBLIC`` an agent put on them — a channel to other tenants that
outlives the session.

Revocation, MariaDB
-------------------
``ACCOUNT LOCK`` on the configured hosts, ``KILL USER`` (every host), then
``DROP USER`` of every account of that name whatever its host — read from
``mysql.user`` so that accounts created under an earlier ``hosts`` setting are
not left behind while the lease is reported revoked — and ``KILL USER`` again
for a connection that raced in on such an account. The admin needs
``SELECT (User, Host) ON mysql.user`` besides ``CREATE USER`` and
``CONNECTION ADMIN``.

What the database enforces and what it does not
-----------------------------------------------
PostgreSQL: a role cannot change its own ``LOGIN``, ``VALID UNTIL``,
``CONNECTION LIMIT`` or any ``CREATE*``/``REPLICATION``/``BYPASSRLS``
attribute, nor a superuser-only setting such as ``temp_file_limit`` (not even
with ``ALTER ROLE CURRENT_USER RESET ALL``). It can change its own password and
any user-settable parameter (``statement_timeout``, ``work_mem``…), for the
session or as its role default: a role-level ``statement_timeout`` is no limit.
MariaDB: a user cannot ``ALTER USER`` itself without ``CREATE USER``, but can
``SET PASSWORD`` for itself (nothing server-side prevents it), and
``SET SESSION max_statement_time = 0`` or ``SET STATEMENT max_statement_time=0
FOR …`` lifts the per-user ``MAX_STATEMENT_TIME``: it is a default, not a wall.
``MAX_USER_CONNECTIONS`` and the account's host are enforced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from clawql_secrets import names

PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
# MariaDB account host part: a name, an address, a '%'/'_' pattern or an
# address/netmask. No quote, backslash, '@', space or ';' (the plugin splits on it).
_HOST_RE = re.compile(r"[A-Za-z0-9.%_:/-]{1,255}")
_LIMITS = {
    "connection_limit": (1, 1000),
    "terminate_wait_ms": (1, 60_000),
    "lock_timeout_ms": (1, 60_000),
    "temp_file_limit_kb": (1, 2**31 - 1),
    "max_user_connections": (1, 1000),
    "max_statement_time_ms": (1, 86_400_000),
}
# The plugin's revocation fills in ``{{name}}`` only; user names come from
# OpenBao's username template (letters, digits, '-', '_', '.').
NAME = "{{name}}"
_PG_USER = '"' + NAME + '"'
_PG_USER_LITERAL = "'" + NAME + "'"


@dataclass(frozen=True)
class EngineStatements:
    creation: tuple[str, ...]
    revocation: tuple[str, ...]


def _int(param: str, value: int) -> int:
    low, high = _LIMITS[param]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{param} must be an integer from {low} to {high}, not {value!r}")
    return value


def _privileges(privileges: Iterable[str]) -> str:
    privs = tuple(privileges)
    if not privs:
        raise ValueError("at least one privilege is required")
    bad = [p for p in privs if p not in PRIVILEGES]
    if bad:
        raise ValueError(f"privileges must be among {sorted(PRIVILEGES)}, not {bad!r}")
    return ", ".join(dict.fromkeys(privs))


def _database(value: str) -> str:
    """A PostgreSQL database name (``postgres`` included: it is not a schema)."""
    if not isinstance(value, str) or not names.SCHEMA_RE.fullmatch(value):
        raise ValueError(f"invalid database name {value!r:.80}: use {names.RULES['schema']}")
    return f'"{value}"'


def _hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(dict.fromkeys(hosts))
    if not checked:
        raise ValueError("at least one host is required (use '%' for any)")
    for host in checked:
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            raise ValueError(
                f"invalid MariaDB host {host!r:.80}: letters, digits and . % _ : / - only"
            )
    return checked


def _pg_terminate(wait_ms: int, *, best_effort: bool) -> str:
    if best_effort:
        return (
            "DO $rev$ BEGIN PERFORM pg_terminate_backend(pid, "
            f"{wait_ms}) FROM pg_stat_activity WHERE usename = {_PG_USER_LITERAL}; "
            "EXCEPTION WHEN OTHERS THEN NULL; END $rev$;"
        )
    # pg_stat_activity is a snapshot taken once per transaction: a backend that
    # left on its own since is still listed, so look again before calling it stuck.
    mine = f"usename = {_PG_USER_LITERAL}"
    return (
        # An int and the plugin's {{name}}: nothing else goes in.
        "DO $rev$ DECLARE p integer; BEGIN FOR p IN SELECT pid FROM pg_stat_activity "  # noqa: S608
        f"WHERE {mine} LOOP IF NOT pg_terminate_backend(p, {wait_ms}) THEN "
        "PERFORM pg_stat_clear_snapshot(); IF EXISTS (SELECT FROM pg_stat_activity "
        f"WHERE pid = p AND {mine}) THEN RAISE EXCEPTION 'a backend of the role did not exit'; "
        "END IF; END IF; END LOOP; END $rev$;"
    )


def _pg_if_role(body: str) -> str:
    return (
        "DO $rev$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = "
        f"{_PG_USER_LITERAL}) THEN {body} END IF; END $rev$;"
    )


def postgresql(
    schema: str,
    privileges: Iterable[str],
    *,
    database: str | None = None,
    connection_limit: int = 8,
    temp_file_limit_kb: int | None = None,
    terminate_wait_ms: int = 5000,
    lock_timeout_ms: int = 5000,
) -> EngineStatements:
    """A role that can log in, use ``schema``'s tables with ``privileges``, and nothing else.

    ``database``: grant ``CONNECT`` on it (pair with ``REVOKE CONNECT … FROM PUBLIC``
    on every database, so the role can reach no other one). ``connection_limit``:
    the role's own bound, which it cannot raise; size it to gateway replicas x
    pool size. ``temp_file_limit_kb``: a superuser-only setting the role cannot
    lift; the admin needs ``GRANT SET ON PARAMETER temp_file_limit``.
    """
    quoted = names.quote_pg(schema)
    privs = _privileges(privileges)
    limit = _int("connection_limit", connection_limit)
    wait = _int("terminate_wait_ms", terminate_wait_ms)
    lock = f"SET LOCAL lock_timeout = {_int('lock_timeout_ms', lock_timeout_ms)};"
    create = [
        f"CREATE ROLE {_PG_USER} WITH LOGIN PASSWORD '{{{{password}}}}' "
        "VALID UNTIL '{{expiration}}' NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {limit};",
    ]
    if database is not None:
        create.append(f"GRANT CONNECT ON DATABASE {_database(database)} TO {_PG_USER};")
    create += [
        f"GRANT USAGE ON SCHEMA {quoted} TO {_PG_USER};",
        f"GRANT {privs} ON ALL TABLES IN SCHEMA {quoted} TO {_PG_USER};",
        f"ALTER ROLE {_PG_USER} SET search_path = {quoted};",
    ]
    if temp_file_limit_kb is not None:
        kb = _int("temp_file_limit_kb", temp_file_limit_kb)
        create.append(f"ALTER ROLE {_PG_USER} SET temp_file_limit = '{kb}kB';")
    revoke = [
        # 1-2: login gone and committed before anything that can fail.
        lock,
        _pg_terminate(wait, best_effort=True),
        _pg_if_role(f"ALTER ROLE {_PG_USER} NOLOGIN PASSWORD NULL;"),
        "COMMIT AND CHAIN;",
        # 3-4: no backend left; nothing owned or granted here — committed.
        lock,
        _pg_terminate(wait, best_effort=False),
        _pg_if_role(f"GRANT {_PG_USER} TO CURRENT_USER; DROP OWNED BY {_PG_USER};"),
        "COMMIT AND CHAIN;",
        # 5: fails loudly if anything of the role remains elsewhere.
        lock,
        _pg_terminate(wait, best_effort=False),
        f"DROP ROLE IF EXISTS {_PG_USER};",
    ]
    return EngineStatements(tuple(create), tuple(revoke))


def mariadb(
    schema: str,
    privileges: Iterable[str],
    *,
    hosts: Iterable[str] = ("%",),
    max_user_connections: int = 8,
    max_statement_time_ms: int = 5000,
) -> EngineStatements:
    """An account per host in ``hosts`` (the gateway's addresses), ``privileges`` on
    database ``schema``. ``MAX_USER_CONNECTIONS`` holds per account;
    ``MAX_STATEMENT_TIME`` is only the session's starting value (see the module doc).
    """
    quoted = names.quote_mariadb(schema)
    privs = _privileges(privileges)
    accounts = [f"'{NAME}'@'{h}'" for h in _hosts(hosts)]
    conns = _int("max_user_connections", max_user_connections)
    ms = _int("max_statement_time_ms", max_statement_time_ms)
    create = (
        "CREATE USER "
        + ", ".join(f"{a} IDENTIFIED BY '{{{{password}}}}'" for a in accounts)
        + f" WITH MAX_USER_CONNECTIONS {conns} MAX_STATEMENT_TIME {ms // 1000}.{ms % 1000:03d};",
        f"GRANT {privs} ON {quoted}.* TO {', '.join(accounts)};",
    )
    drop_every_host = (
        "SELECT IFNULL(CONCAT('DROP USER ', GROUP_CONCAT(CONCAT(QUOTE(User), '@', "  # noqa: S608
        f"QUOTE(Host)))), 'DO 0') INTO @clawql_revoke FROM mysql.user WHERE User = '{NAME}';"
    )
    revoke = (
        f"ALTER USER IF EXISTS {', '.join(accounts)} ACCOUNT LOCK;",
        f"KILL USER '{NAME}';",
        drop_every_host,
        "PREPARE clawql_revoke FROM @clawql_revoke;",
        "EXECUTE clawql_revoke;",
        "DEALLOCATE PREPARE clawql_revoke;",
        f"KILL USER '{NAME}';",
    )
    return EngineStatements(create, revoke)
