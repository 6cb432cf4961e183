"""The local session issuer: signs agent session JWTs for the stack and tests.

In production the platform's own issuer does this and publishes its JWKS;
OpenBao's ``sessions`` JWT mount and the gateway both trust that JWKS. Locally
a ``LocalIssuer`` with its own key directory plays the part, distinct from the
workload issuer so that a service identity's JWT can never pass as a session
and vice versa.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from clawql_secrets.errors import InputError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.names import check_agent, check_role, check_tenant

SESSIONS_ISSUER_URL = "https://sessions.clawql.local"
# The default canonical URI of a gateway (the local stack's sets its own address).
SESSION_AUDIENCE = "http://127.0.0.1:18270"
MAX_SESSION_TTL = 3600
_TTL_RE = re.compile(r"^(\d+)([smh]?)$")


def issuer_dir(data_dir: Path) -> Path:
    return data_dir / "sessions-issuer"


def load_issuer(data_dir: Path) -> LocalIssuer:
    return LocalIssuer.load_or_create(issuer_dir(data_dir), SESSIONS_ISSUER_URL)


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h`` → seconds, within (0, MAX_SESSION_TTL]."""
    m = _TTL_RE.fullmatch(text.strip())
    if not m:
        raise InputError(f"invalid TTL {text!r}", fix="use seconds or a unit: 90s, 15m, 1h")
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not 0 < seconds <= MAX_SESSION_TTL:
        raise InputError(
            f"session TTL {text!r} is outside 1s..{MAX_SESSION_TTL}s",
            fix="sessions are short-lived; the platform re-issues a JWT for a long agent run",
        )
    return seconds


def issue(
    issuer: LocalIssuer,
    *,
    tenant: str,
    agent: str,
    role: str,
    ttl: int,
    audience: str = SESSION_AUDIENCE,
) -> str:
    """A signed session JWT with a fresh ``sid``; ``sub`` is ``tenant/agent``.

    ``audience`` is the gateway's canonical URI (RFC 8707): the token opens that
    gateway and nothing else (OpenBao trusts only the gateway's exchange key).
    """
    # The grammar the gateway checks and the desired state declares (``names``).
    for check, value in ((check_tenant, tenant), (check_agent, agent), (check_role, role)):
        try:
            check(value)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    if not 0 < ttl <= MAX_SESSION_TTL:
        raise InputError(f"session TTL {ttl}s is outside 1s..{MAX_SESSION_TTL}s")
    return issuer.mint(
        f"{tenant}/{agent}",
        audience,
        ttl=ttl,
        sid=secrets.token_urlsafe(18),
        tenant=tenant,
        agent=agent,
        agent_role=role,
    )
