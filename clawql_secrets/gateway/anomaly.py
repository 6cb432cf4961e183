"""Built-in anomaly rules: a hit revokes the session (``core`` acts on it).

Pure: no I/O and no state. The counts the rate rules judge are kept in the
shared session registry (``registry.Registry.open`` counts a session's calls,
``count_denied`` its denied calls, each in a sliding window on the registry's
clock), so every replica judges a session by the calls of all replicas: an
agent spreading its calls over N replicas does not get N times the bound.
Three rules, each configurable (``AnomalySettings`` in the gateway config):

- ``denied_burst``: more than ``denied_max`` denied calls (OpenBao or the
  database refused) within ``denied_window`` seconds;
- ``call_rate``: more than ``rate_max`` calls within ``rate_window`` seconds;
- ``out_of_scope``: a tool argument names a schema (or MariaDB database) that
  belongs to another tenant. ``tenant_schemas`` is the desired state's map
  (``tenant_schemas_from_state``: each tenant's ``owned_schemas()``, which are
  also its MariaDB databases); empty, the rule never fires. The SQL fields of
  the tools in ``scope_fields`` (``sql.query`` → ``sql``) are read the way the
  servers read them (``foreign_schemas``). A heuristic that flags intent: the
  database grants and OpenBao's policies are what actually confine a session.

A ``Hit`` names the rule and what was seen in terms that carry no secret
(the rule, the tool, a schema name) — never the SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from clawql_secrets.names import NAME_RE

if TYPE_CHECKING:
    from clawql_secrets.provision.model import DesiredState

DENIED_BURST, CALL_RATE, OUT_OF_SCOPE = "denied_burst", "call_rate", "out_of_scope"
RULES = (DENIED_BURST, CALL_RATE, OUT_OF_SCOPE)

_Name = Annotated[str, StringConstraints(pattern=NAME_RE)]


class AnomalySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    denied_max: int = Field(default=5, ge=1, le=10_000)
    denied_window: float = Field(default=30.0, gt=0, le=3600)
    rate_max: int = Field(default=600, ge=1, le=1_000_000)
    rate_window: float = Field(default=60.0, gt=0, le=3600)
    # tenant -> the schema and MariaDB database names it owns (tenant_schemas_from_state).
    tenant_schemas: dict[_Name, list[_Name]] = {}
    scope_fields: dict[str, list[str]] = {"sql.query": ["sql"]}

    @model_validator(mode="before")
    @classmethod
    def _no_schema_prefix(cls, data: object) -> object:
        if isinstance(data, dict) and "schema_prefix" in data:
            raise ValueError(
                "schema_prefix: removed; the out_of_scope rule now reads tenant_schemas "
                "(tenant -> the schema and database names it owns), which the gateway's "
                "config builder derives from the desired state "
                "(anomaly.tenant_schemas_from_state); drop the key"
            )
        return data

    @model_validator(mode="after")
    def _one_owner(self) -> AnomalySettings:
        owner: dict[str, str] = {}
        for tenant, schemas in self.tenant_schemas.items():
            for schema in schemas:
                if owner.setdefault(schema, tenant) != tenant:
                    raise ValueError(
                        f"tenant_schemas: schema {schema!r} belongs to both "
                        f"{owner[schema]!r} and {tenant!r}"
                    )
        return self


def tenant_schemas_from_state(state: DesiredState) -> dict[str, list[str]]:
    """``AnomalySettings.tenant_schemas`` of a desired state.

    A tenant's ``owned_schemas()`` are its PostgreSQL schemas and, named alike,
    its MariaDB databases (``provision.render`` grants ``<schema>.*`` there).
    """
    return {t.name: list(t.owned_schemas()) for t in state.tenants}


@dataclass(frozen=True)
class Hit:
    rule: str
    detail: str


# -- out_of_scope: reading SQL as the servers do ------------------------------
# Each text is tokenised twice, as PostgreSQL and as MariaDB read it, and a name
# found by either counts: the dialects disagree on what is a comment (``#``,
# ``--x``, nested and ``/*! executable */`` comments), a string (``"…"``,
# backslash escapes, ``$tag$…$tag$``) or an identifier, and an agent could hide a
# reference from a reader of the wrong dialect. Names fold as the servers fold
# them: unquoted to lower case (ASCII only), ``"Quoted"`` exact (PostgreSQL),
# backquoted to lower case (MariaDB's ``lower_case_table_names`` may fold it);
# ``U&"\0067…"`` and ``E'\x67…'`` escapes are decoded. A name is a reference when
# it is
#   1. the qualifier of a dotted name in a FROM/JOIN/INTO/UPDATE list, of a call
#      (``other.f()``), or of a three-part name (``other.t.c``, ``db.other.t``);
#   2. the qualifier of any other dotted name, unless the statement also uses it
#      bare, as a table or alias (``SELECT globex.id FROM partners globex``);
#   3. after ``SCHEMA``/``DATABASE`` (``GRANT … ON SCHEMA other``), ``USE``, or
#      ``SHOW … FROM/IN``;
#   4. any name or string item in a statement that mentions ``search_path`` or
#      is ``SET SCHEMA``.
# String literals are data otherwise (``'%@globex.com'`` is no reference), and
# computed names (``'glo' || 'bex'``, SQL run from a string by ``query_to_xml`` or
# ``EXECUTE``) are not evaluated: those are for the statement guard and the grants.

_PG, _MARIA = "postgresql", "mariadb"
_LEX = re.compile(
    r"\s*(?:(?P<word>[A-Za-z0-9_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)"
    r"|(?P<punct>[^-/*#'\"`$\s]))|\s+"
)
_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_DOLLAR_WORD = re.compile(r"\$[A-Za-z0-9_$\u0080-\U0010ffff]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MARIA_EXEC = re.compile(r"/\*M?!\d{0,6}")
_UESCAPE = re.compile(r"\s*uescape\s*'([^'])'", re.IGNORECASE)

_FROM_START = frozenset({"from", "join", "into", "update", "table", "using", "only", "lateral"})
_FROM_END = frozenset(
    {"where", "group", "order", "having", "window", "limit", "offset", "fetch", "union"}
    | {"intersect", "except", "on", "set", "values", "returning", "for", "select"}
)
_SUBQUERY = frozenset({"select", "with", "values", "table"})
_SCHEMA_WORDS = frozenset({"schema", "schemas", "database", "databases"})


class _Tok(NamedTuple):
    kind: Literal["word", "quoted", "string", "punct"]
    text: str  # a name as the server resolves it; a string's content; a character


def _fold(text: str) -> str:
    """Lower case as both servers fold names: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def _read_quoted(
    sql: str, i: int, quote: str, backslash: bool, keep: bool = False
) -> tuple[str, int]:
    """The content of a quoted token starting at ``sql[i] == quote`` and the index after it.

    ``backslash``: a backslash escapes the next character (dropped, or ``keep``).
    """
    out: list[str] = []
    j, n = i + 1, len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            out.append(sql[j : j + 2] if keep else sql[j + 1 : j + 2])
            j += 2
        elif c == quote:
            if sql.startswith(quote, j + 1):  # doubled: the quote itself
                out.append(quote)
                j += 2
            else:
                return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    return "".join(out), n  # unterminated: the server refuses it; read it all


def _unicode_escapes(text: str, escape: str) -> str:
    """PostgreSQL's ``U&"…"`` escapes: ``\\XXXX``, ``\\+XXXXXX`` and a doubled escape."""
    e = re.escape(escape)

    def one(m: re.Match[str]) -> str:
        code = m.group(1) or m.group(2)
        if code is None:
            return escape
        try:
            return chr(int(code, 16))
        except (ValueError, OverflowError):
            return ""

    return re.sub(rf"{e}(?:([0-9A-Fa-f]{{4}})|\+([0-9A-Fa-f]{{6}})|{e})", one, text)


def _c_escapes(text: str) -> str:
    """PostgreSQL's ``E'…'`` escapes (``\\x67``, ``\\147``, ``\\u0067``, ``\\U…``)."""

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        try:
            if body[0] in "xuU" and len(body) > 1:
                return chr(int(body[1:], 16))
            if body[0] in "01234567":
                return chr(int(body, 8))
        except (ValueError, OverflowError):
            return ""
        return body  # an escaped quote, backslash or letter: the character itself

    return re.sub(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3}|.)", one, text)


def _tokens(sql: str, dialect: str) -> Iterator[_Tok]:
    i, n, executable = 0, len(sql), 0
    while i < n:
        # the common tokens in one match; the characters that may open a comment,
        # a quote or a dollar quote go on below
        if m := _LEX.match(sql, i):
            i = m.end()
            if m.lastgroup == "word":
                word = _fold(m.group("word"))
                if dialect == _PG and word in ("e", "u"):
                    if word == "e" and sql.startswith("'", i):  # E'…': backslash escapes
                        text, i = _read_quoted(sql, i, "'", backslash=True, keep=True)
                        yield _Tok("string", _c_escapes(text))
                        continue
                    if word == "u" and sql.startswith('&"', i):  # U&"…": unicode escapes
                        text, i = _read_quoted(sql, i + 1, '"', backslash=False)
                        escape = "\\"
                        if u := _UESCAPE.match(sql, i):
                            escape, i = u.group(1), u.end()
                        yield _Tok("quoted", _unicode_escapes(text, escape))
                        continue
                yield _Tok("word", word)
            elif m.lastgroup == "punct":
                yield _Tok("punct", m.group("punct"))
            continue
        c = sql[i]
        line_comment = sql.startswith("--", i) and (
            dialect == _PG or i + 2 >= n or sql[i + 2] in " \t\r\n\f\v"
        )
        if line_comment or (dialect == _MARIA and c == "#"):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            if dialect == _MARIA:
                if m := _MARIA_EXEC.match(sql, i):  # executed by MariaDB: code
                    executable += 1
                    i = m.end()
                else:
                    j = sql.find("*/", i + 2)
                    i = n if j < 0 else j + 2
                continue
            depth, j = 1, i + 2  # PostgreSQL's block comments nest
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
        elif executable and sql.startswith("*/", i):
            executable -= 1
            i += 2
        elif c == "$" and dialect == _PG and (m := _DOLLAR.match(sql, i)):
            j = sql.find(m.group(0), m.end())
            yield _Tok("string", sql[m.end() : n if j < 0 else j])
            i = n if j < 0 else j + len(m.group(0))
        elif c == "$":  # a parameter ($1) or, in MariaDB, a name
            m = _DOLLAR_WORD.match(sql, i)
            yield _Tok("word", _fold(m.group(0)) if m else c)
            i = m.end() if m else i + 1
        elif c == "'":
            text, i = _read_quoted(sql, i, "'", backslash=dialect == _MARIA)
            yield _Tok("string", text)
        elif c == '"' and dialect == _PG:
            text, i = _read_quoted(sql, i, '"', backslash=False)
            yield _Tok("quoted", text)
        elif c == '"':  # a MariaDB string (with ANSI_QUOTES a name: read as PostgreSQL does)
            text, i = _read_quoted(sql, i, '"', backslash=True)
            yield _Tok("string", text)
        elif c == "`":
            text, i = _read_quoted(sql, i, "`", backslash=False)
            yield _Tok("quoted", _fold(text))
        else:
            yield _Tok("punct", c)
            i += 1


def _statements(sql: str, dialect: str) -> Iterator[list[_Tok]]:
    stmt: list[_Tok] = []
    for t in _tokens(sql, dialect):
        if t.kind == "punct" and t.text == ";":
            if stmt:
                yield stmt
            stmt = []
        else:
            stmt.append(t)
    if stmt:
        yield stmt


def _search_path_items(text: str) -> Iterator[str]:
    """The schemas of a ``search_path`` value: ``'"$user", Globex'`` → ``$user``, ``globex``."""
    for item in re.split(r"[\s,]+", text):
        if len(item) >= 2 and item[0] == item[-1] == '"':
            yield item[1:-1]
        elif item:
            yield _fold(item)


def _named(stmt: list[_Tok], schemas: frozenset[str]) -> Iterator[str]:
    """Every name ``stmt`` (non-empty) uses as a schema or database: rules 1-4 above."""
    size = len(stmt)
    texts = [t.text for t in stmt]
    words = [t.text if t.kind == "word" else "" for t in stmt]
    puncts = [t.text if t.kind == "punct" else "" for t in stmt]
    ident = [t.kind in ("word", "quoted") for t in stmt]
    # 4. search_path (SET [LOCAL] search_path, set_config(...)) and SET SCHEMA
    mentions = any(_fold(t.text) == "search_path" for t in stmt if t.kind != "punct")
    if mentions or words[:2] == ["set", "schema"]:
        for t, is_name in zip(stmt, ident, strict=True):
            if is_name:
                yield t.text
            elif t.kind == "string":
                yield from _search_path_items(t.text)
    # 3. USE other; SHOW TABLES FROM other; ... SCHEMA [IF [NOT] EXISTS] a, b
    if words[0] == "use" and size > 1 and ident[1]:
        yield texts[1]
    for k, w in enumerate(words):
        if words[0] == "show" and w in ("from", "in") and k + 1 < size and ident[k + 1]:
            yield texts[k + 1]
        if w in _SCHEMA_WORDS:
            j = k + 1
            while j < size and words[j] in ("if", "not", "exists"):
                j += 1
            while j < size and ident[j]:
                yield texts[j]
                if not (j + 2 < size and puncts[j + 1] == ","):
                    break
                j += 2
    # 1-2. dotted names, and whether each stands in a FROM list
    chains: list[tuple[list[str], bool]] = []  # parts, in a position only a schema fits
    tables: set[str] = set()  # the names FROM-list tables go by (``acme.globex``: globex)
    in_chain = [False] * size
    frames = [[True, False]]  # per parenthesis: [holds a query, in its FROM list]
    k = 0
    while k < size:
        if puncts[k] == "(":
            frames.append([k + 1 < size and words[k + 1] in _SUBQUERY, False])
        elif puncts[k] == ")" and len(frames) > 1:
            frames.pop()
        elif words[k] in _FROM_START and frames[-1][0]:
            frames[-1][1] = not (words[k] == "from" and k > 0 and words[k - 1] == "distinct")
        elif words[k] in _FROM_END:
            frames[-1][1] = False
        j = k
        while (
            j + 2 < size
            and ident[j]
            and puncts[j + 1] == "."
            and (ident[j + 2] or puncts[j + 2] == "*")
        ):
            j += 2
        if j == k:
            k += 1
            continue
        parts = texts[k : j + 1 : 2]
        in_from = frames[-1][1]
        call = j + 1 < size and puncts[j + 1] == "("
        chains.append((parts, in_from or call or len(parts) > 2))
        if in_from:
            tables.add(parts[-1])
        in_chain[k : j + 1] = [True] * (j + 1 - k)
        k = j + 1
    bare = tables | {
        texts[x]
        for x in range(size)
        if ident[x] and not in_chain[x] and not (x + 1 < size and puncts[x + 1] == "(")
    }
    for parts, strong in chains:
        if strong or parts[0] not in bare:
            yield parts[0]
        if len(parts) > 2 and parts[0] not in schemas:  # catalog.schema.table
            yield parts[1]


def foreign_schemas(
    sql: str, tenant: str, tenant_schemas: Mapping[str, Sequence[str]]
) -> list[str]:
    """The schemas of tenants other than ``tenant`` that ``sql`` names, first seen first."""
    every = frozenset(s for owned in tenant_schemas.values() for s in owned)
    return _foreign(sql, every - frozenset(tenant_schemas.get(tenant, ())), every)


def _foreign(sql: str, others: frozenset[str], every: frozenset[str]) -> list[str]:
    found: list[str] = []
    if not others:
        return found
    folded = _fold(sql)
    # Only escapes (``U&"\\0067…"``, ``E'\\x67…'``) spell a name not in the text.
    if not any(o in folded for o in others) and "\\" not in sql and "uescape" not in folded:
        return found
    for dialect in (_PG, _MARIA):
        for stmt in _statements(sql, dialect):
            for name in _named(stmt, every):
                if name in others and name not in found:
                    found.append(name)
    return found


@dataclass(frozen=True)
class Window:
    """A sliding window to count in: ``seconds`` long (0: do not count), at most ``cap``
    entries kept (enough to see a bound exceeded; memory stays bounded)."""

    seconds: float = 0.0
    cap: int = 1

    @property
    def ms(self) -> int:
        return max(0, int(self.seconds * 1000))


class Detector:
    """The rules; the counts come from the shared registry (see the module docstring).

    ``calls_window`` and ``denied_window`` are what the registry counts in: zero-length
    (nothing counted) when the rules are off, and one entry past each bound, enough to
    see it exceeded.
    """

    def __init__(self, settings: AnomalySettings) -> None:
        self.settings = s = settings
        self.calls_window = Window(s.rate_window if s.enabled else 0.0, s.rate_max + 1)
        self.denied_window = Window(s.denied_window if s.enabled else 0.0, s.denied_max + 1)
        # out_of_scope's name sets, derived once here rather than on every call.
        self._every = frozenset(x for owned in s.tenant_schemas.values() for x in owned)
        self._others = {t: self._every - frozenset(o) for t, o in s.tenant_schemas.items()}

    def scope(self, tenant: str, tool: str, args: Mapping[str, Any]) -> Hit | None:
        """``out_of_scope``: a scanned argument of ``tool`` names another tenant's schema."""
        s = self.settings
        if not s.enabled:
            return None
        for fname in s.scope_fields.get(tool, []):
            value = args.get(fname)
            if isinstance(value, str):
                others = self._others.get(tenant, self._every)
                foreign = _foreign(value, others, self._every)
                if foreign:
                    return Hit(OUT_OF_SCOPE, f"{tool} argument {fname} names schema {foreign[0]}")
        return None

    def rate(self, calls: int) -> Hit | None:
        """``call_rate``: ``calls`` (this one included) within the window exceed the bound."""
        s = self.settings
        if s.enabled and calls > s.rate_max:
            return Hit(CALL_RATE, f"more than {s.rate_max} calls in {s.rate_window:g}s")
        return None

    def denied(self, count: int) -> Hit | None:
        """``denied_burst``: ``count`` denied calls (this one included) exceed the bound."""
        s = self.settings
        if s.enabled and count > s.denied_max:
            return Hit(
                DENIED_BURST, f"more than {s.denied_max} denied calls in {s.denied_window:g}s"
            )
        return None
