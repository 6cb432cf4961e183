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
- ``out_of_scope``: a tool argument names another tenant's schema. Tenant
  schemas are ``<schema_prefix><tenant>`` (``t_acme``); the SQL fields of the
  tools listed in ``scope_fields`` (``sql.query`` → ``sql``) are scanned,
  after stripping comments, for a schema-qualified name (``t_globex.items``,
  ``"t_globex" . items``) or any prefixed name in a statement that mentions
  ``search_path``. A heuristic that flags intent: the database grants and
  OpenBao's policies are what actually confine a session.

A ``Hit`` names the rule and what was seen in terms that carry no secret
(the rule, the tool, a schema name) — never the SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DENIED_BURST, CALL_RATE, OUT_OF_SCOPE = "denied_burst", "call_rate", "out_of_scope"
RULES = (DENIED_BURST, CALL_RATE, OUT_OF_SCOPE)


class AnomalySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    denied_max: int = Field(default=5, ge=1, le=10_000)
    denied_window: float = Field(default=30.0, gt=0, le=3600)
    rate_max: int = Field(default=600, ge=1, le=1_000_000)
    rate_window: float = Field(default=60.0, gt=0, le=3600)
    schema_prefix: str = Field(default="t_", pattern=r"^[a-z][a-z0-9_]{0,15}$")
    scope_fields: dict[str, list[str]] = {"sql.query": ["sql"]}


@dataclass(frozen=True)
class Hit:
    rule: str
    detail: str


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def foreign_schemas(sql: str, tenant: str, prefix: str) -> list[str]:
    """Schemas of the form ``<prefix><x>`` named in ``sql`` that are not ``tenant``'s."""
    text = _COMMENTS.sub(" ", sql)
    p = re.escape(prefix)
    name = rf'(?:"({p}[^"]+)"|\b({p}[A-Za-z0-9_$]+))'
    own = f"{prefix}{tenant}"
    found: list[str] = []
    patterns = [re.compile(name + r"\s*\.", re.IGNORECASE)]
    if re.search(r"search_path", text, re.IGNORECASE):
        # SET search_path TO t_x / set_config('search_path', 't_x', ...)
        patterns.append(re.compile(rf"(?:'|\b)({p}[A-Za-z0-9_$-]+)", re.IGNORECASE))
        patterns.append(re.compile(name, re.IGNORECASE))
    for pat in patterns:
        for m in pat.finditer(text):
            quoted = next((g for g in m.groups() if g), "")
            # Unquoted identifiers fold to lower case in PostgreSQL; quoted ones do not.
            schema = quoted if m.group(0).startswith('"') else quoted.lower()
            if schema != own and schema not in found:
                found.append(schema)
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

    def scope(self, tenant: str, tool: str, args: Mapping[str, Any]) -> Hit | None:
        """``out_of_scope``: a scanned argument of ``tool`` names another tenant's schema."""
        s = self.settings
        if not s.enabled:
            return None
        for fname in s.scope_fields.get(tool, []):
            value = args.get(fname)
            if isinstance(value, str):
                foreign = foreign_schemas(value, tenant, s.schema_prefix)
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
