"""Agent tokens as the gateway gets them, for live tests below the gateway.

OpenBao's agents mount takes nothing but the gateway's exchange assertions (ADR
0010). Tests of provisioning and policies that need an agent's token sign one
with the stack's exchange key, exactly as ``Gateway._login`` does, instead of
presenting a session JWT (which OpenBao refuses).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.gateway import exchange

EXCHANGE_ISSUER = "https://gateway.clawql.local/exchange"
EXCHANGE_AUDIENCE = "openbao-agent-exchange"
ACTOR = "clawql-gateway"


def exchange_pem(data_dir: Path) -> str:
    """The stack's exchange public key (created once), as the desired state lists it."""
    return exchange.public_pem(exchange.load_or_create(exchange.stack_key_dir(data_dir)))


def exchange_yaml(data_dir: Path, mount: str = "agents") -> str:
    """An ``exchange:`` section trusting the stack's exchange key."""
    pem = "\n".join("      " + ln for ln in exchange_pem(data_dir).strip().splitlines())
    return (
        f"exchange:\n  issuer: {EXCHANGE_ISSUER}\n  audience: {EXCHANGE_AUDIENCE}\n"
        f"  mount: {mount}\n  public_keys:\n    - |\n{pem}\n"
    )


def assertion(data_dir: Path, *, tenant: str, agent: str, role: str, **claims: Any) -> str:
    mint = exchange.minter(exchange.stack_key_dir(data_dir) / exchange.KEY_FILE, EXCHANGE_ISSUER)
    fields: dict[str, Any] = {
        "tenant": tenant,
        "agent": agent,
        "agent_role": role,
        "sid": secrets.token_urlsafe(18),
        "act": {"sub": ACTOR},
        **claims,
    }
    return mint(f"{tenant}/{agent}", EXCHANGE_AUDIENCE, ttl=60, **fields)


def agent_login(
    client: OpenBaoClient,
    data_dir: Path,
    *,
    tenant: str,
    agent: str,
    role: str,
    anchor: bool = False,
    mount: str = "agents",
) -> dict[str, Any]:
    """The ``auth`` block of an agent login through the gateway's exchange."""
    jwt = assertion(
        data_dir, tenant=tenant, agent=agent, role=role, use="session" if anchor else "call"
    )
    login_role = role + (".session" if anchor else "")
    resp = client.request(
        "POST", f"auth/{mount}/login", body={"role": login_role, "jwt": jwt}, token=""
    )
    return dict(resp["auth"])
