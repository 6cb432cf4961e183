"""Test doubles for pure unit tests of the layers above OpenBao (never for live tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.gateway import exchange
from clawql_secrets.gateway.config import GatewayConfig

Handler = Callable[[httpx.Request], httpx.Response]


def mock_openbao(handler: Handler) -> OpenBaoClient:
    """An ``OpenBaoClient`` whose transport is ``handler``: no TLS context, no retries."""
    bao = OpenBaoClient.__new__(OpenBaoClient)
    bao.addrs, bao.token, bao.retry_for, bao._preferred = ["https://127.0.0.1:1"], None, 0, 0
    bao._http = httpx.Client(transport=httpx.MockTransport(handler))
    return bao


# The built-in tools and the unit tests' own stand-ins.
ALL_TOOLS = ["sql.query", "http.request", "redis.command", "cloud.aws", "echo", "crash"]
LOGIN_PATH = "/v1/auth/agents/login"


def unit_config(tmp_path: Path, **extra: Any) -> GatewayConfig:
    """A ``GatewayConfig`` for unit tests under ``tmp_path``: an empty CA file (never
    loaded; also the registry's, whose Redis unit tests never reach), the session
    issuer's JWKS path, a workload JWT path, a fresh exchange key,
    role ``analyst`` allowed every built-in tool, plus ``extra``."""
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    exchange.load_or_create(tmp_path / "gateway-exchange")
    return GatewayConfig.model_validate(
        {
            "openbao": {"addrs": ["https://127.0.0.1:1"], "ca_file": str(ca)},
            "sessions": {"jwks_file": str(tmp_path / "sessions-issuer" / "jwks.json")},
            "identity": {"jwt_file": str(tmp_path / "none.jwt")},
            "exchange": {"key_file": str(tmp_path / "gateway-exchange" / exchange.KEY_FILE)},
            "registry": {"host": "127.0.0.1", "port": 6380, "ca_file": str(ca)},
            "roles": {"analyst": {"tools": ALL_TOOLS}},
            **extra,
        }
    )


def assertion_claims(request: httpx.Request) -> dict[str, Any]:
    """The claims of the exchange assertion in a fake login request (unverified: the
    fake stands in for OpenBao, whose checks the live tests exercise)."""
    body = json.loads(request.content)
    claims: dict[str, Any] = jwt.decode(body["jwt"], options={"verify_signature": False})
    return claims


def login_response(request: httpx.Request, token: str, accessor: str = "") -> httpx.Response:
    """What OpenBao's agents mount answers: the token and the mapped claims."""
    c = assertion_claims(request)
    meta = {k: c[k] for k in ("tenant", "agent", "agent_role", "sid")}
    meta["actor"] = c["act"]["sub"]
    auth: dict[str, Any] = {"client_token": token, "metadata": meta}
    if accessor:
        auth["accessor"] = accessor
    return httpx.Response(200, json={"auth": auth})
