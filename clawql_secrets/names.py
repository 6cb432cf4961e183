"""The one grammar of names: tenants, agents, roles, connections and schemas.

A name travels. A tenant is a JWT claim, a segment of OpenBao paths
(``secret/data/tenants/<tenant>/…``), a part of object names joined by ``-``
(``database/roles/<tenant>-<role>-<connection>``, ``pki_int/roles/<tenant>-<role>``),
a PostgreSQL schema or MariaDB database (a tenant without ``schemas`` owns the
one named like it) and a segment of a certificate URI SAN. A name accepted at
one stop and refused at the next is an outage at best, so the provisioner
(``provision.model``) and the gateway (``gateway.jwt_check``,
``gateway.session_issuer``, ``policy.binding``) all take it from here.

Decision
--------
Tenants, roles, connections and schemas: ``[a-z][a-z0-9_]{0,30}`` (``NAME_RE``).
Agents: ``[a-z0-9][a-z0-9_-]{0,62}`` (``AGENT_RE``).

Why ``_`` but not ``-`` in tenants, roles and connections:

- ``-`` is the separator of composed names. With no ``-`` in any part,
  ``acme_eu-data_reader-pg_main`` splits one way only (``parse_db_role_name``).
  With ``-`` allowed, ``a-b-c-pg`` is tenant ``a`` role ``b-c`` *and* tenant
  ``a-b`` role ``c``: two tenants' credentials behind one OpenBao role name.
- ``.`` is taken as well: each agent role is two JWT roles, ``<role>`` and
  ``<role>.session`` (ADR 0010), and the approval controller strips the suffix.
- A tenant's name is its default schema and MariaDB database. Lower-case
  letters, digits and ``_`` with a letter first is an identifier that neither
  engine must quote and PostgreSQL does not fold, so ``acme_eu`` is the same
  string in the desired state, in a grant and in an agent's SQL. Generated SQL
  quotes it all the same (``provision.render``; ``quote_pg``/``quote_mariadb``
  here), so a tenant named like a keyword is still a name.
- No character of the grammar means anything in an OpenBao path or ACL glob
  (``/``, ``*``, ``+``, ``..``), a URI (no percent-encoding) or YAML.

Rejected: ``-`` everywhere with another separator (``.`` is taken; ``__`` or
``+`` read badly in SQL and paths and would rename every existing OpenBao
object), and ``-`` in tenants mapped to ``_`` for schemas (two spellings of one
tenant, and an anomaly rule that must know both). ``acme_eu`` costs nothing.

Agents are not declared in the desired state: the platform names them, and
``data-reader`` or ``4f1c9e-…`` are common. An agent name is only ever a whole
segment (``sub`` = ``<tenant>/<agent>``, ``…/agents/<agent>/<secret>``,
``spiffe://…/agents/<agent>``), never joined by ``-`` nor an SQL identifier, so
``-`` is harmless there; ``/`` and ``.`` are refused (no extra segment, no ``..``).

Lengths: 31 keeps every schema (``<tenant>_<suffix>`` is a name too) far below
PostgreSQL's 63 bytes (``NAMEDATALEN - 1``; a longer identifier is truncated
with only a NOTICE, so two long names could meet) and MariaDB's 64. Database
*users* are named by OpenBao's ``username_template``, not by this grammar; its
defaults truncate to 63 (PostgreSQL) and 32 (the mysql plugin, MySQL's own
bound), and a custom template must as well; ``check_db_user`` is the check for
code that quotes a generated name into a statement.

Reserved schemas: ``check_schema`` refuses ``public``, ``pg_*``,
``information_schema``, ``mysql``, ``performance_schema`` and ``sys``. A tenant
owning one would be granted the server's catalogue or everyone's shared schema
(``GRANT SELECT ON `mysql`.*`` reads the password hashes).
"""

from __future__ import annotations

import re
from typing import Literal

NAME_MAX = 31
AGENT_MAX = 63
PG_MAX_IDENTIFIER = 63
MARIADB_MAX_IDENTIFIER = 64
DB_USER_MAX: dict[str, int] = {"postgresql": PG_MAX_IDENTIFIER, "mariadb": 32}

# Anchored for pydantic's ``pattern`` (``provision.model.Name``); use ``fullmatch``.
NAME_RE = rf"^[a-z][a-z0-9_]{{0,{NAME_MAX - 1}}}$"
AGENT_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{AGENT_MAX - 1}}}$"
SECRET_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

TENANT_RE = ROLE_RE = CONNECTION_RE = SCHEMA_RE = re.compile(NAME_RE)
AGENT_RE = re.compile(AGENT_PATTERN)
SECRET_RE = re.compile(SECRET_PATTERN)
# What OpenBao's templates generate (``v-<display>-<role>-<random>-<time>``, or a
# prefix and random characters): no quote, backslash, space or control character.
DB_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")

# The separator of composed names; no tenant, role or connection contains it.
JOIN = "-"
SESSION_ROLE_SUFFIX = ".session"
RESERVED_SCHEMAS = frozenset({"public", "information_schema", "mysql", "performance_schema", "sys"})
_RESERVED_SCHEMA_PREFIX = "pg_"

_NAME_RULE = f"lower-case letters, digits and '_', a letter first, at most {NAME_MAX}"
_AGENT_RULE = f"lower-case letters, digits, '_' and '-', alphanumeric first, at most {AGENT_MAX}"
RULES = {
    "tenant": _NAME_RULE,
    "role": _NAME_RULE,
    "connection": _NAME_RULE,
    "schema": _NAME_RULE,
    "agent": _AGENT_RULE,
    "secret": "lower-case letters, digits, '_' and '-', a letter first, at most 63",
}


def _refuse(kind: str, value: object) -> ValueError:
    shown = repr(value[:80]) if isinstance(value, str) else type(value).__name__
    return ValueError(f"invalid {kind} name {shown}: use {RULES[kind]}")


def _check(kind: str, pattern: re.Pattern[str], value: object) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _refuse(kind, value)
    return value


def check_tenant(value: object) -> str:
    return _check("tenant", TENANT_RE, value)


def check_role(value: object) -> str:
    """An agent role: also a JWT role (``<role>``, ``<role>.session``) and ``agent-<role>``."""
    return _check("role", ROLE_RE, value)


def check_connection(value: object) -> str:
    return _check("connection", CONNECTION_RE, value)


def check_agent(value: object) -> str:
    return _check("agent", AGENT_RE, value)


def check_secret(value: object) -> str:
    """A name under an agent's KV folder (``provision.model.SecretName``)."""
    return _check("secret", SECRET_RE, value)


def check_schema(value: object) -> str:
    """A schema or MariaDB database a tenant may own: a name, and not the server's own."""
    name = _check("schema", SCHEMA_RE, value)
    if name in RESERVED_SCHEMAS or name.startswith(_RESERVED_SCHEMA_PREFIX):
        raise ValueError(
            f"schema {name!r} is reserved: the server's catalogue or the schema every "
            "role shares cannot belong to a tenant"
        )
    return name


def check_db_user(value: object, engine: Literal["postgresql", "mariadb"]) -> str:
    """A generated database user name, safe inside ``"…"``, ``'…'`` and ``'…'@'%'``.

    Refused rather than truncated: PostgreSQL would silently cut a long name,
    so two sessions could share one role.
    """
    limit = DB_USER_MAX[engine]
    if not isinstance(value, str) or not DB_USER_RE.fullmatch(value):
        raise ValueError("invalid database user name: letters, digits, '_', '.', '/' and '-' only")
    if len(value.encode()) > limit:
        raise ValueError(f"database user name longer than {limit} bytes ({engine}'s limit)")
    return value


def db_role_name(tenant: str, role: str, connection: str) -> str:
    """The engine role ``<tenant>-<role>-<connection>`` (``provision.render``), checked."""
    return JOIN.join((check_tenant(tenant), check_role(role), check_connection(connection)))


def parse_db_role_name(name: str) -> tuple[str, str, str]:
    """``(tenant, role, connection)`` of a DB role name: the only way to split it."""
    parts = name.split(JOIN)
    if len(parts) != 3:
        raise ValueError(f"{name[:120]!r} is not <tenant>{JOIN}<role>{JOIN}<connection>")
    tenant, role, connection = parts
    return check_tenant(tenant), check_role(role), check_connection(connection)


def quote_pg(schema: str) -> str:
    """A checked schema as a PostgreSQL identifier (quoted: keywords stay names)."""
    return f'"{check_schema(schema)}"'


def quote_mariadb(schema: str) -> str:
    """A checked schema (database) as a MariaDB identifier."""
    return f"`{check_schema(schema)}`"


def agent_uri_san(template: str, tenant: str, agent: str) -> str:
    """``template`` with ``{tenant}`` and ``{agent}`` filled in by checked names.

    Both grammars are RFC 3986 ``unreserved`` characters: substituted into a path
    they need no escaping and cannot add a segment, query or OpenBao glob.
    """
    return template.replace("{tenant}", check_tenant(tenant)).replace("{agent}", check_agent(agent))


def kv_agent_secret_path(tenant: str, agent: str, secret: str) -> str:
    """The agent's secret below the KV mount's ``data/``, every segment checked."""
    return f"tenants/{check_tenant(tenant)}/agents/{check_agent(agent)}/{check_secret(secret)}"
