"""The SQL statement guard: what an agent's statement is, by the database's own grammar.

``sql.query`` runs agent-written SQL as the session's own database user. The
database's grants are the main wall; this guard is the one in front of it, for
what grants cannot express: a user may always change its own password
(``ALTER ROLE CURRENT_USER PASSWORD``, MariaDB ``SET PASSWORD``), lift its own
statement timeout (``SET statement_timeout``, ``SET STATEMENT … FOR``), or own
something (a large object, default privileges) that keeps its role alive past
the session. Pure: no I/O; the SQL tools call it before any credential is read.

Rules
  1. Every statement is parsed by a real parser: PostgreSQL's own grammar
     (pglast, libpg_query) and, for MariaDB, sqlglot's ``mysql`` dialect, after a
     lexical pre-check for what sqlglot reads differently from MariaDB (below).
     What cannot be parsed is refused, never passed.
  2. Exactly one statement per call (a trailing ``;`` is fine).
  3. The statement falls into one or more classes; every one must be allowed for
     the session's agent role on that database (config: ``databases.<db>.
     statement_classes``; a role absent gets ``read`` only, see
     ``classes_for_privileges``). Classes, most severe first:

        role         CREATE/ALTER/DROP ROLE/USER, GRANT/REVOKE, SET PASSWORD,
                     ALTER DEFAULT PRIVILEGES, REASSIGN/DROP OWNED, OWNER TO,
                     user mappings, SET DEFAULT ROLE              (never grantable)
        copy         COPY, LOAD DATA, SELECT … INTO OUTFILE/DUMPFILE (never grantable)
        procedural   DO, CALL, CREATE/ALTER FUNCTION/PROCEDURE/TRIGGER/EVENT, rules
        ddl          other CREATE/ALTER/DROP, TRUNCATE, COMMENT, SELECT INTO a table
        session      SET/RESET (except MariaDB user variables), DISCARD, PREPARE,
                     EXECUTE, DEALLOCATE, cursors, LISTEN, USE, SET ROLE, SET STATEMENT
        lock         LOCK TABLE(S)
        transaction  BEGIN/COMMIT/ROLLBACK/SAVEPOINT, SET TRANSACTION
        other        anything else, including what the parser only half-understood
                     (VACUUM, NOTIFY, KILL, FLUSH, PREPARE TRANSACTION, bare
                     expressions)                                  (never grantable)
        write        INSERT/UPDATE/DELETE/MERGE/REPLACE, data-modifying CTEs,
                     SELECT … FOR UPDATE/SHARE (row locks need UPDATE rights in
                     PostgreSQL too), nextval/setval
        read         SELECT, WITH … SELECT, VALUES, TABLE, SHOW, EXPLAIN of a read,
                     MariaDB ``SET @var = …`` and ``SELECT … INTO @var``

     ``EXPLAIN`` takes the class of the statement it explains (``ANALYZE`` runs it).
     MariaDB statements sqlglot keeps as an opaque ``Command`` are classed by their
     leading keywords, and their calls read from a lexer that does not swallow them.
  4. Inside every class, even an allowed one, these are refused:
     - calls of functions that escape the statement or the session (anywhere in
       the tree, schema-qualified or not): PostgreSQL large objects (``lo_*``,
       ``loread``, ``lowrite``: they pin the role), ``set_config`` (``SET`` by another
       name), ``query_to_xml``/``cursor_to_xml``/``ts_stat``/``ts_rewrite`` (they run SQL
       text the guard never sees), ``dblink*``, server files (``pg_read_file``,
       ``pg_ls_*``…), other backends (``pg_terminate_backend``, ``pg_cancel_backend``),
       server administration (``pg_reload_conf``, replication slots, backups),
       session-level advisory locks (they outlive the call on a pooled connection),
       ``pg_notify``; MariaDB ``LOAD_FILE``, ``BENCHMARK`` (its interruption by the
       statement timeout is silent), named locks (``GET_LOCK`` family: held by the
       pooled connection and visible across tenants), replication waits, UDF shells
       (``sys_exec``/``sys_eval``). ``pg_sleep``/``SLEEP`` stay allowed: the
       statement timeout, which no agent can lift, bounds them like any slow query.
     - a ``SET`` of a setting outside a short allow-list of presentation and
       planner settings (datestyle, time zone, ``enable_*``…), when ``session`` is
       allowed at all: never ``role``, ``session_authorization``, timeouts,
       ``search_path``, ``sql_mode``, character sets, ``SET STATEMENT``, globals.
  5. Parameters: PostgreSQL takes ``$1…$n`` (bound server-side; ``%`` is an ordinary
     operator), MariaDB takes ``?`` (bound as escaped literals, then re-lexed to
     prove each value stayed one literal). ``%s`` is accepted on both as the older
     positional form when the statement has no native placeholder and parameters
     are given; it is rewritten token by token, never inside strings or comments.
  6. MariaDB lexical pre-check, refused as unparsable: NUL characters, executable
     comments (``/*! … */``, ``/*M! … */``: MariaDB runs them, every parser skips them),
     and ``--`` followed by non-ASCII whitespace (a comment to sqlglot, code to
     MariaDB). The tools pin, per connection, what these parsers assume: MariaDB
     ``sql_mode`` without ``NO_BACKSLASH_ESCAPES``/``ANSI_QUOTES`` (and the modes that
     imply them), PostgreSQL ``standard_conforming_strings=on`` and UTF-8.
     ``tests/gateway/test_sql_tool_live.py`` checks the MariaDB side against the
     server: behind every comment/quote opener x separator x closer we know of, no
     text the guard accepts makes MariaDB run a call the guard did not see.

Refusal codes (``code`` of the gateway error; messages name the class or function)
    sql_<class>_refused       403  e.g. ``sql_role_refused``: "statements of class
                                   'role' are not allowed for this session"
    sql_function_refused      403  a refused function is called (rule 4)
    sql_setting_refused       403  a SET of a setting outside the allow-list (rule 4)
    sql_unparsable            422  the parser (or the lexical pre-check) refused it
    sql_multiple_statements   400  more than one statement
    sql_params_mismatch       400  placeholders and parameters differ in number
    sql_bad_param             400  a parameter cannot be sent as one literal

What the guard cannot see: the bodies of functions, views, triggers and rules the
statement reaches (they run with whatever the database grants), the effect of
volatile functions that are not on the list, and statements prepared earlier when
``session`` is granted. The database's grants and per-user limits stay the wall.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import sqlglot.errors
from pglast import parser as pg_parser
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokenizer_core import Token, TokenType

from clawql_secrets.gateway.errors import AccessDenied, RequestRejected

# sqlglot logs the text of a statement it falls back on ("Falling back to parsing as
# a 'Command'"); statements are the agent's, not the gateway log's.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

Engine = Literal["postgresql", "mariadb"]

# Most severe first: a statement in several classes is refused under the first one
# that is not allowed.
CLASSES: tuple[str, ...] = (
    "role",
    "copy",
    "procedural",
    "ddl",
    "session",
    "lock",
    "transaction",
    "other",
    "write",
    "read",
)
# Never allowed, whatever the configuration says: a session managing roles can keep
# or hand out a credential; COPY and file loads reach the server's or the gateway's
# files (and the tool speaks no COPY protocol); ``other`` is what the guard does not
# understand.
NEVER_GRANTABLE = frozenset({"role", "copy", "other"})
DEFAULT_CLASSES = frozenset({"read"})

_WRITE_PRIVILEGES = frozenset({"INSERT", "UPDATE", "DELETE"})


@dataclass(frozen=True)
class Statement:
    """One parsed statement: its classes, the functions it calls and what it SETs.

    ``sql`` is the text to send (placeholders in the engine's native form);
    ``spans`` are the MariaDB ``?`` positions (start, end inclusive) in it.
    """

    engine: Engine
    sql: str
    kind: str
    classes: frozenset[str]
    functions: frozenset[str]
    settings: frozenset[str]
    placeholders: int
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def cls(self) -> str:
        """The most severe class (the one a refusal names)."""
        return next(c for c in CLASSES if c in self.classes)


# -- public API ---------------------------------------------------------------------------
def classes_for_privileges(privileges: Iterable[str]) -> frozenset[str]:
    """Statement classes that match a desired-state grant: SELECT gives ``read``, any
    of INSERT/UPDATE/DELETE adds ``write``. Nothing configured is read-only."""
    privs = {p.upper() for p in privileges}
    return DEFAULT_CLASSES | ({"write"} if privs & _WRITE_PRIVILEGES else set())


def grantable(classes: Iterable[str]) -> frozenset[str]:
    """``classes`` as configured, or ValueError naming an unknown or never-grantable one."""
    out = frozenset(classes)
    unknown = sorted(out - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown statement class {unknown[0]!r} (known: {', '.join(CLASSES)})")
    never = sorted(out & NEVER_GRANTABLE)
    if never:
        raise ValueError(f"statement class {never[0]!r} can never be allowed")
    return out


def normalize_placeholders(engine: Engine, sql: str, nparams: int) -> str:
    """``sql`` with ``%s`` placeholders rewritten to the engine's own (``$n`` / ``?``),
    when parameters are given and no native placeholder is used; else unchanged.

    Works on the engine's tokens, so a ``%s`` inside a string or comment is untouched;
    an unlexable text is returned as is and refused by ``classify``.
    """
    if nparams == 0 or "%" not in sql:
        return sql
    if engine == "postgresql":
        try:
            tokens = [(t.start, t.end, t.name) for t in pg_parser.scan(sql)]
        except pg_parser.ParseError:
            return sql
        if any(name == "PARAM" for _, _, name in tokens):
            return sql
        pairs = [
            (a[0], b[1])
            for a, b in itertools.pairwise(tokens)
            if a[2] == "ASCII_37"
            and b[2] == "IDENT"
            and b[0] == a[1] + 1
            and sql[b[0] : b[1] + 1] == "s"
        ]
        native = [f"${i}" for i in range(1, len(pairs) + 1)]
    else:
        try:
            mtokens = _maria_tokens(sql)
        except _Unlexable:
            return sql
        if any(t.token_type == TokenType.PLACEHOLDER for t in mtokens):
            return sql
        pairs = [
            (a.start, b.end)
            for a, b in itertools.pairwise(mtokens)
            if a.token_type == TokenType.MOD and b.text == "s" and b.start == a.end + 1
        ]
        native = ["?"] * len(pairs)
    out = sql
    for (start, end), ph in zip(reversed(pairs), reversed(native), strict=True):
        out = out[:start] + ph + out[end + 1 :]
    return out


def classify(engine: Engine, sql: str) -> Statement:
    """Parse ``sql`` (exactly one statement) and say what it is.

    Raises ``RequestRejected`` (``sql_unparsable``, ``sql_multiple_statements``).
    """
    if "\x00" in sql:
        raise _unparsable("the SQL text contains a NUL character")
    if engine == "postgresql":
        return _pg_classify(sql)
    return _maria_classify(sql)


def check_statement(stmt: Statement, allowed: frozenset[str]) -> None:
    """Refuse ``stmt`` (``AccessDenied``) unless all its classes are allowed and it
    calls no refused function and SETs nothing outside the allow-list."""
    for cls in CLASSES:  # 1. classes, most severe first
        if cls in stmt.classes and (cls not in allowed or cls in NEVER_GRANTABLE):
            raise AccessDenied(
                f"sql_{cls}_refused",
                f"statements of class {cls!r} are not allowed for this session",
            )
    for name in sorted(stmt.settings):  # 2. settings
        if not _setting_allowed(stmt.engine, name):
            raise AccessDenied(
                "sql_setting_refused", f"setting {name[:64]!r} may not be changed by a session"
            )
    for name in sorted(stmt.functions):  # 3. functions
        if _function_refused(stmt.engine, name):
            raise AccessDenied(
                "sql_function_refused", f"function {name[:64]!r} may not be called by a session"
            )


def check(engine: Engine, sql: str, allowed: frozenset[str]) -> None:
    """``classify`` then ``check_statement``: returns None or raises."""
    check_statement(classify(engine, sql), allowed)


def check_params(stmt: Statement, nparams: int) -> None:
    """Placeholders and parameters must match in number (PostgreSQL: the highest ``$n``)."""
    if stmt.placeholders != nparams:
        form = "$1…$n" if stmt.engine == "postgresql" else "?"
        raise RequestRejected(
            "sql_params_mismatch",
            f"the statement has {stmt.placeholders} placeholder(s) ({form}) "
            f"but {nparams} parameter(s) were given",
        )


def bind_mariadb(stmt: Statement, literals: Sequence[str]) -> str:
    """``stmt.sql`` with each ``?`` replaced by its escaped literal, re-lexed to prove
    that each literal is one value token and nothing else moved.

    ``literals`` come from the driver's escaping for this connection (its charset and
    ``sql_mode``); the check catches an escaping that does not match the lexer.
    """
    if len(literals) != len(stmt.spans):
        check_params(stmt, len(literals))
    out = stmt.sql
    for (start, end), lit in zip(reversed(stmt.spans), reversed(literals), strict=True):
        out = out[:start] + lit + out[end + 1 :]
    try:
        before = _maria_tokens(stmt.sql)
        after = _maria_tokens(out)
    except _Unlexable:
        raise _bad_param() from None
    if _executable_comment(after):
        raise _bad_param()
    i = 0
    for tok in before:
        if tok.token_type == TokenType.PLACEHOLDER:
            n = _literal_width(after, i, tok.comments or ())
            if n == 0:
                raise _bad_param()
            i += n
            continue
        if i >= len(after) or (after[i].token_type, after[i].text) != (tok.token_type, tok.text):
            raise _bad_param()
        i += 1
    if i != len(after):
        raise _bad_param()
    return out


# -- errors -------------------------------------------------------------------------------
def _unparsable(why: str) -> RequestRejected:
    return RequestRejected("sql_unparsable", f"the statement cannot be parsed: {why}", status=422)


def _multiple() -> RequestRejected:
    return RequestRejected(
        "sql_multiple_statements", "exactly one SQL statement per call is accepted"
    )


def _bad_param() -> RequestRejected:
    return RequestRejected("sql_bad_param", "a parameter cannot be sent as a single SQL value")


class _Unlexable(Exception):
    pass


# -- refused functions and allowed settings -----------------------------------------------
def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Matched lower-cased, schema qualification ignored.
_PG_REFUSED = (
    # large objects (and every lo_* below): owned by the role, they pin it
    _names("loread lowrite")
    # SET by another name
    | _names("set_config")
    # they run SQL text the guard never sees
    | _names("query_to_xml query_to_xmlschema query_to_xml_and_xmlschema cursor_to_xml")
    | _names("cursor_to_xmlschema ts_stat ts_rewrite")
    # other sessions and the server itself
    | _names("pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile")
    | _names("pg_promote pg_switch_wal pg_backup_start pg_backup_stop pg_start_backup")
    | _names("pg_stop_backup pg_log_backend_memory_contexts pg_wal_replay_pause")
    | _names("pg_wal_replay_resume pg_logical_emit_message pg_replication_slot_advance")
    | _names("pg_drop_replication_slot pg_import_system_collations pg_stat_file pg_notify")
    | _names("pg_stat_statements_reset")
    # session-level advisory locks outlive the call on a pooled connection
    | _names("pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock")
    | _names("pg_try_advisory_lock_shared")
)
_PG_REFUSED_PREFIXES = tuple(
    sorted(
        _names("lo_ dblink pg_read_ pg_ls_ pg_file_ pg_logdir_ pg_stat_reset pg_create_")
        | _names("pg_copy_ pg_logical_slot_ pg_replication_origin_")
    )
)
_MARIA_REFUSED = (
    # server files; CPU burn whose interruption by the timeout is silent
    _names("load_file benchmark")
    # named locks: held by the pooled connection, visible across tenants
    | _names("get_lock release_lock release_all_locks is_free_lock is_used_lock")
    # replication waits; UDF shells
    | _names("master_pos_wait master_gtid_wait source_pos_wait sys_exec sys_eval")
)
# Functions that write: a statement calling one is in class ``write``.
_WRITE_FUNCTIONS = _names("nextval setval")

# What a session granted ``session`` may SET: presentation and planner settings only.
_PG_SETTINGS = (
    _names("datestyle intervalstyle timezone extra_float_digits bytea_output xmlbinary")
    | _names("xmloption lc_monetary lc_numeric lc_time default_text_search_config jit")
    | _names("plan_cache_mode random_page_cost seq_page_cost cpu_tuple_cost")
    | _names("cpu_index_tuple_cost cpu_operator_cost effective_cache_size")
    | _names("from_collapse_limit join_collapse_limit")
)
_MARIA_SETTINGS = _names(
    "time_zone lc_time_names div_precision_increment default_week_format optimizer_search_depth"
)


def _function_refused(engine: Engine, name: str) -> bool:
    if engine == "postgresql":
        return name in _PG_REFUSED or name.startswith(_PG_REFUSED_PREFIXES)
    return name in _MARIA_REFUSED


def _setting_allowed(engine: Engine, name: str) -> bool:
    if engine == "postgresql":
        return name in _PG_SETTINGS or name.startswith("enable_")
    return name in _MARIA_SETTINGS


# -- PostgreSQL ---------------------------------------------------------------------------
_PG_KINDS: dict[str, str] = {
    "SelectStmt": "read",
    "VariableShowStmt": "read",
    "InsertStmt": "write",
    "UpdateStmt": "write",
    "DeleteStmt": "write",
    "MergeStmt": "write",
    "TransactionStmt": "transaction",
    "VariableSetStmt": "session",
    "DiscardStmt": "session",
    "PrepareStmt": "session",
    "ExecuteStmt": "session",
    "DeallocateStmt": "session",
    "DeclareCursorStmt": "session",
    "FetchStmt": "session",
    "ClosePortalStmt": "session",
    "ListenStmt": "session",
    "UnlistenStmt": "session",
    "CopyStmt": "copy",
    "LockStmt": "lock",
    "DoStmt": "procedural",
    "CallStmt": "procedural",
    "CreateFunctionStmt": "procedural",
    "AlterFunctionStmt": "procedural",
    "CreateTrigStmt": "procedural",
    "CreateEventTrigStmt": "procedural",
    "AlterEventTrigStmt": "procedural",
    "CreatePLangStmt": "procedural",
    "CreateTransformStmt": "procedural",
    "RuleStmt": "procedural",
    "CreateRoleStmt": "role",
    "AlterRoleStmt": "role",
    "AlterRoleSetStmt": "role",
    "DropRoleStmt": "role",
    "GrantStmt": "role",
    "GrantRoleStmt": "role",
    "AlterDefaultPrivilegesStmt": "role",
    "ReassignOwnedStmt": "role",
    "DropOwnedStmt": "role",
    "AlterOwnerStmt": "role",
    "CreateUserMappingStmt": "role",
    "AlterUserMappingStmt": "role",
    "DropUserMappingStmt": "role",
    "IndexStmt": "ddl",
    "ViewStmt": "ddl",
    "CompositeTypeStmt": "ddl",
    "DefineStmt": "ddl",
    "CommentStmt": "ddl",
    "SecLabelStmt": "ddl",
    "TruncateStmt": "ddl",
    "RenameStmt": "ddl",
    "ImportForeignSchemaStmt": "ddl",
    "RefreshMatViewStmt": "ddl",
}
_PG_NESTED_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_PG_TWO_PHASE = _names("TRANS_STMT_PREPARE TRANS_STMT_COMMIT_PREPARED TRANS_STMT_ROLLBACK_PREPARED")


def _pg_kind_class(kind: str) -> str:
    cls = _PG_KINDS.get(kind)
    if cls is not None:
        return cls
    if kind.startswith(("Create", "Alter", "Drop")):
        return "ddl"
    return "other"


def _pg_nodes(tree: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a libpg_query JSON tree as (type name, fields), iteratively."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if isinstance(value, dict) and key[:1].isupper():
                    yield key, value
                elif key == "funccall" and isinstance(value, dict):
                    yield "FuncCall", value  # CALL's typed field, not wrapped in a node
                if isinstance(value, dict | list):
                    stack.append(value)


def _pg_base(kind: str, body: dict[str, Any]) -> set[str]:
    """The classes of a top-level node; EXPLAIN, PREPARE and DECLARE add their query's."""
    if kind == "ExplainStmt":
        ((ikind, ibody),) = body["query"].items()
        return _pg_base(ikind, ibody)
    if kind == "VariableSetStmt" and body.get("name") == "TRANSACTION":
        return {"transaction"}
    if kind == "TransactionStmt" and body.get("kind") in _PG_TWO_PHASE:
        return {"other"}  # a prepared transaction outlives the session and its locks
    out = {_pg_kind_class(kind)}
    if kind in ("PrepareStmt", "DeclareCursorStmt"):
        ((ikind, ibody),) = body["query"].items()
        out |= _pg_base(ikind, ibody)
    return out


def _pg_changes_owner(node: str, fields: dict[str, Any]) -> bool:
    """``ALTER … OWNER TO`` inside ALTER TABLE, ``CREATE SCHEMA … AUTHORIZATION``."""
    if node == "AlterTableCmd":
        return bool(fields.get("subtype") == "AT_ChangeOwner")
    return node == "CreateSchemaStmt" and "authrole" in fields


def _pg_classify(sql: str) -> Statement:
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
    except pg_parser.ParseError as exc:
        raise _unparsable(str(exc)[:200]) from None
    except RecursionError:
        raise _unparsable("nested too deeply") from None
    stmts = tree.get("stmts") or []
    if not stmts:
        raise _unparsable("no statement")
    if len(stmts) > 1:
        raise _multiple()
    ((kind, body),) = stmts[0]["stmt"].items()
    classes = _pg_base(kind, body)
    functions: set[str] = set()
    settings: set[str] = set()
    params = 0
    if kind == "VariableSetStmt" and body.get("name") != "TRANSACTION":
        settings.add(str(body.get("name") or "all").lower())
    for node, fields in _pg_nodes(stmts[0]["stmt"]):
        if node == "FuncCall":
            names = fields.get("funcname") or [{}]
            functions.add(str(names[-1].get("String", {}).get("sval", "")).lower())
        elif node == "ParamRef":
            params = max(params, int(fields.get("number", 0)))
        elif node in _PG_NESTED_WRITES or node == "LockingClause":
            classes.add("write")
        elif node == "SelectStmt" and "intoClause" in fields:
            classes.add("ddl")  # SELECT … INTO makes a table
        elif _pg_changes_owner(node, fields):
            classes.add("role")
    if functions & _WRITE_FUNCTIONS:
        classes.add("write")
    if "write" in classes or "ddl" in classes:
        classes.discard("read")
    return Statement(
        "postgresql",
        sql,
        kind,
        frozenset(classes),
        frozenset(functions),
        frozenset(settings),
        params,
    )


# -- MariaDB ------------------------------------------------------------------------------
_DIALECT = MySQL()
_COMMENT_OPENERS = ("/*!", "/*m!")


class _Lexer(MySQL.Tokenizer):
    """MySQL's lexer without sqlglot's habit of swallowing the rest of some statements
    (``REPLACE``, ``EXECUTE``, ``RENAME``, ``LOCK TABLES``…) into one string token: the
    guard reads calls, placeholders and ``;`` from these tokens, so none is hidden."""

    COMMANDS: ClassVar[set[TokenType]] = set()


_SWALLOWS = frozenset(MySQL.Tokenizer.COMMANDS)


def _maria_tokens(sql: str) -> list[Token]:
    try:
        return list(_Lexer(dialect=_DIALECT).tokenize(sql))
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError) as exc:
        raise _Unlexable(str(exc)[:200]) from None


def _executable_comment(tokens: Sequence[Token]) -> bool:
    return any(
        c.lstrip().lower().startswith(("!", "m!")) for t in tokens for c in (t.comments or ())
    )


def _maria_lexical_check(sql: str) -> None:
    """What sqlglot's lexer reads differently from MariaDB's (rule 6): refused."""
    low = sql.lower()
    if any(opener in low for opener in _COMMENT_OPENERS):
        raise _unparsable("MariaDB executable comments (/*! … */) are not accepted")
    start = 0
    while (at := sql.find("--", start)) >= 0:
        nxt = sql[at + 2 : at + 3]
        if nxt and nxt.isspace() and not nxt.isascii():
            raise _unparsable("'--' followed by non-ASCII whitespace is not accepted")
        start = at + 1


def _maria_classify(sql: str) -> Statement:
    _maria_lexical_check(sql)
    try:
        raw = list(_DIALECT.tokenize(sql))
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError) as exc:
        raise _unparsable(str(exc).split("\n")[0][:200]) from None
    # The parser's tokens, unless sqlglot swallowed a statement's rest into one string.
    tokens = _maria_tokens(sql) if any(t.token_type in _SWALLOWS for t in raw) else raw
    try:
        trees = [t for t in _DIALECT.parser().parse(raw, sql) if t is not None]
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError) as exc:
        if _maria_is_copy(tokens):  # forms sqlglot does not parse, refused by class
            return Statement("mariadb", sql, "Unparsed", frozenset({"copy"}), *_empty())
        raise _unparsable(str(exc).split("\n")[0][:200]) from None
    if not trees:
        raise _unparsable("no statement")
    if len(trees) > 1 or _semicolon_inside(tokens):
        raise _multiple()
    tree = trees[0]
    settings: set[str] = set()
    classes = _maria_base(tree, tokens, settings)
    functions = _maria_calls(tokens)
    for node in tree.walk():
        if isinstance(node, exp.Insert | exp.Update | exp.Delete | exp.Merge | exp.Lock):
            classes.add("write")
    if functions & _WRITE_FUNCTIONS:
        classes.add("write")
    if "write" in classes or "ddl" in classes:
        classes.discard("read")
    spans = tuple((t.start, t.end) for t in tokens if t.token_type == TokenType.PLACEHOLDER)
    return Statement(
        "mariadb",
        sql,
        type(tree).__name__,
        frozenset(classes),
        frozenset(functions),
        frozenset(settings),
        len(spans),
        spans,
    )


def _semicolon_inside(tokens: Sequence[Token]) -> bool:
    """A ``;`` with a token after it (trailing ones end the statement harmlessly)."""
    seen = False
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            seen = True
        elif seen:
            return True
    return False


def _empty() -> tuple[frozenset[str], frozenset[str], int]:
    return frozenset(), frozenset(), 0


def _words(tokens: Sequence[Token], n: int) -> list[str]:
    """The first ``n`` tokens' words, upper-cased (``LOCK TABLES`` is one token)."""
    return [
        w for t in tokens[:n] if "STRING" not in t.token_type.name for w in t.text.upper().split()
    ]


def _maria_is_copy(tokens: Sequence[Token]) -> bool:
    words = _words(tokens, len(tokens))
    if words[:1] == ["LOAD"]:
        return True
    return any(a == "INTO" and b in ("OUTFILE", "DUMPFILE") for a, b in itertools.pairwise(words))


def _maria_calls(tokens: Sequence[Token]) -> set[str]:
    """Every name followed by ``(`` (a call, or harmlessly a table's column list)."""
    out: set[str] = set()
    for tok, nxt in itertools.pairwise(tokens):
        if nxt.token_type == TokenType.L_PAREN and "STRING" not in tok.token_type.name:
            out.add(tok.text.lower())
    return out


def _maria_base(tree: exp.Expr, tokens: Sequence[Token], settings: set[str]) -> set[str]:
    if isinstance(tree, exp.Command):
        return _maria_command(tokens, settings)
    if isinstance(tree, exp.Set):
        return _maria_set(tree, settings)
    if isinstance(tree, exp.Query):
        into = tree.args.get("into")
        if into is None:
            return {"read"}
        targets = [into.this, *into.expressions]
        targets = [t.this if isinstance(t, exp.Table) else t for t in targets if t is not None]
        # ``INTO @var`` keeps the value in the caller's variable; ``INTO t`` makes a table.
        return {"read"} if all(isinstance(t, exp.Parameter) for t in targets) else {"ddl"}
    if isinstance(tree, exp.Insert | exp.Update | exp.Delete | exp.Merge):
        return {"write"}
    if isinstance(tree, exp.Describe):  # EXPLAIN/DESCRIBE: a table's columns, or a plan
        inner = tree.this
        if isinstance(inner, exp.Query | exp.Insert | exp.Update | exp.Delete | exp.Merge):
            return _maria_base(inner, tokens, settings)
        return {"read"} if isinstance(inner, exp.Table) else {"other"}
    if isinstance(tree, exp.Show):
        # SHOW GRANTS prints the account's password hash (IDENTIFIED BY PASSWORD '*…'):
        # derived from the credential, so it is a role statement, never granted.
        return {"role"} if tree.name.upper() == "GRANTS" else {"read"}
    if isinstance(tree, exp.Use):
        settings.add("database")
        return {"session"}
    if isinstance(tree, exp.Transaction | exp.Commit | exp.Rollback):
        return {"transaction"}
    if isinstance(tree, exp.Grant | exp.Revoke):
        return {"role"}
    if isinstance(tree, exp.LoadData):
        return {"copy"}
    if isinstance(tree, exp.Create | exp.Drop | exp.Alter):
        kind = str(tree.args.get("kind") or "").upper()
        if kind in ("USER", "ROLE"):
            return {"role"}
        if kind in ("FUNCTION", "PROCEDURE", "TRIGGER", "EVENT", "PACKAGE"):
            return {"procedural"}
        return {"ddl"}
    if isinstance(tree, exp.TruncateTable):
        return {"ddl"}
    return {"other"}


_PROCEDURAL_WORDS = frozenset({"PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"})


def _maria_command(tokens: Sequence[Token], settings: set[str]) -> set[str]:
    """A statement sqlglot kept as an opaque ``Command``: classed by its leading words."""
    words = _words(tokens, 16)
    first, second = [*words, "", ""][:2]
    if first == "SET":
        if second in ("PASSWORD", "DEFAULT"):
            return {"role"}
        settings.add(second.lower() or "?")
        return {"session"}
    if first in ("GRANT", "REVOKE"):
        return {"role"}
    if first in ("CREATE", "ALTER", "DROP", "RENAME"):
        if second in ("USER", "ROLE") or "USER" in words[1:4] or "ROLE" in words[1:4]:
            return {"role"}
        if _PROCEDURAL_WORDS & set(words):
            return {"procedural"}
        return {"ddl"}
    if first in ("CALL", "DO"):
        return {"procedural"}
    if first in ("LOCK", "UNLOCK"):
        return {"lock"}
    if first in ("PREPARE", "EXECUTE", "DEALLOCATE"):
        return {"session"}
    if first == "REPLACE":
        return {"write"}
    if first in ("BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return {"transaction"}
    if first == "LOAD":
        return {"copy"}
    return {"other"}


def _maria_set(tree: exp.Set, settings: set[str]) -> set[str]:
    """``SET`` items: user variables are the caller's scratch space (read); anything
    else is a setting; ``PASSWORD`` is a credential (role)."""
    classes: set[str] = set()
    items = tree.expressions
    if not items:
        return {"other"}
    for item in items:
        kind = str(item.args.get("kind") or "").upper() if isinstance(item, exp.SetItem) else ""
        if kind == "TRANSACTION":
            classes.add("transaction")
            continue
        target = item.this if isinstance(item, exp.SetItem) else None
        if kind in ("NAMES", "CHARACTER SET", "CHARSET"):
            settings.add("names")
            classes.add("session")
            continue
        if not isinstance(target, exp.EQ | exp.PropertyEQ):
            settings.add("?")
            classes.add("session")
            continue
        var = target.this
        if isinstance(var, exp.Parameter):
            continue  # @user_variable
        if isinstance(var, exp.SessionParameter):
            name = var.name.lower()
            scope = str(var.args.get("kind") or "").upper()
        elif isinstance(var, exp.Column):
            name = var.name.lower()
            scope = kind
        else:
            settings.add("?")
            classes.add("session")
            continue
        if name == "password":
            classes.add("role")
            continue
        settings.add(f"global.{name}" if scope == "GLOBAL" else name)
        classes.add("session")
    return classes or {"read"}


def _literal_width(tokens: Sequence[Token], i: int, comments: Sequence[str]) -> int:
    """How many tokens at ``i`` make one escaped value (``'…'``, ``12``, ``-1.5``, NULL),
    carrying exactly the placeholder's ``comments`` (a value cannot bring its own)."""
    if i >= len(tokens):
        return 0
    tok = tokens[i]
    width = 0
    if tok.token_type in (TokenType.STRING, TokenType.NUMBER, TokenType.NULL):
        width = 1
    elif (
        tok.token_type == TokenType.DASH
        and i + 1 < len(tokens)
        and tokens[i + 1].token_type == TokenType.NUMBER
        and not tok.comments
    ):
        width = 2
    if width == 0 or list(tokens[i + width - 1].comments or ()) != list(comments):
        return 0
    return width
