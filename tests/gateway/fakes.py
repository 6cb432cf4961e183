"""Test doubles for pure unit tests of the layers above OpenBao (never for live tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.gateway.config import GatewayConfig

Handler = Callable[[httpx.Request], httpx.Response]


def mock_openbao(handler: Handler) -> OpenBaoClient:
    """An ``OpenBaoClient`` whose transport is ``handler``: no TLS context, no retries."""
    bao = OpenBaoClient.__new__(OpenBaoClient)
    bao.addrs, bao.token, bao.retry_for, bao._preferred = ["https://127.0.0.1:1"], None, 0, 0
    bao._http = httpx.Client(transport=httpx.MockTransport(handler))
    return bao


def unit_config(tmp_path: Path, **extra: Any) -> GatewayConfig:
    """A ``GatewayConfig`` for unit tests under ``tmp_path``: an empty CA file (never
    loaded), the session issuer's JWKS path, a workload JWT path, plus ``extra``."""
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    return GatewayConfig.model_validate(
        {
            "openbao": {"addrs": ["https://127.0.0.1:1"], "ca_file": str(ca)},
            "sessions": {"jwks_file": str(tmp_path / "sessions-issuer" / "jwks.json")},
            "identity": {"jwt_file": str(tmp_path / "none.jwt")},
            **extra,
        }
    )
