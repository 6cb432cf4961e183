"""Built-in anomaly rules: a hit revokes the session (``core`` acts on it).

Pure: no I/O, the clock is injected, state is per session in this object (so
per replica — a replica sees the calls it serves; see ADR 0005). Three rules,
each configurable (``AnomalySettings`` in the gateway config):

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
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass
class _State:
    calls: deque[float] = field(default_factory=deque)
    denied: deque[float] = field(default_factory=deque)


def _over(q: deque[float], now: float, window: float, limit: int) -> bool:
    q.append(now)
    while q and q[0] <= now - window:
        q.popleft()
    return len(q) > limit


class Detector:
    """Per-session counters and the rules; thread-safe; ``forget`` when a session ends."""

    def __init__(
        self, settings: AnomalySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._s: dict[str, _State] = {}

    def on_call(self, sid: str, tenant: str, tool: str, args: Mapping[str, Any]) -> Hit | None:
        """Record one call of ``tool`` (arguments already validated); a hit or None."""
        s = self.settings
        if not s.enabled:
            return None
        for fname in s.scope_fields.get(tool, []):
            value = args.get(fname)
            if isinstance(value, str):
                foreign = foreign_schemas(value, tenant, s.schema_prefix)
                if foreign:
                    return Hit(OUT_OF_SCOPE, f"{tool} argument {fname} names schema {foreign[0]}")
        with self._lock:
            st = self._s.setdefault(sid, _State())
            if _over(st.calls, self._clock(), s.rate_window, s.rate_max):
                return Hit(CALL_RATE, f"more than {s.rate_max} calls in {s.rate_window:g}s")
        return None

    def on_denied(self, sid: str) -> Hit | None:
        """Record one denied call of ``sid``; a hit or None."""
        s = self.settings
        if not s.enabled:
            return None
        with self._lock:
            st = self._s.setdefault(sid, _State())
            if _over(st.denied, self._clock(), s.denied_window, s.denied_max):
                return Hit(
                    DENIED_BURST, f"more than {s.denied_max} denied calls in {s.denied_window:g}s"
                )
        return None

    def forget(self, sid: str) -> None:
        with self._lock:
            self._s.pop(sid, None)

    def prune(self) -> None:
        """Drop sessions with no call or denial inside their windows (bounded memory)."""
        s = self.settings
        now = self._clock()
        horizon = max(s.rate_window, s.denied_window)
        with self._lock:
            stale = [
                sid
                for sid, st in self._s.items()
                if max(st.calls[-1] if st.calls else -1e18, st.denied[-1] if st.denied else -1e18)
                <= now - horizon
            ]
            for sid in stale:
                del self._s[sid]

    def tracked(self) -> int:
        with self._lock:
            return len(self._s)
