"""Wiring: a ``GatewayConfig`` → the ASGI app with its OpenBao client, registry and tools.

Nothing here connects: the registry's Redis user is issued on first use
(``registry_creds``), so a gateway starts while OpenBao or Redis is still coming up
and reports not ready (``/readyz``) until both answer.
"""

from __future__ import annotations

from starlette.applications import Starlette

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.bao_login import LoginClient
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import RedisRegistry
from clawql_secrets.gateway.registry_creds import connect
from clawql_secrets.gateway.tools import load_tools


def build(cfg: GatewayConfig) -> tuple[Starlette, Gateway]:
    bao = OpenBaoClient(
        cfg.openbao.addrs,
        cfg.openbao.ca_file,
        timeout=cfg.openbao.timeout,
        retry_for=cfg.openbao.retry_for,
    )
    registry = RedisRegistry(connect(cfg.registry, bao, cfg.identity), cfg.registry.prefix)
    login = LoginClient(
        cfg.openbao.addrs,
        cfg.openbao.ca_file,
        timeout=cfg.openbao.timeout,
        retry_for=cfg.openbao.retry_for,
    )
    gw = Gateway(cfg, bao=bao, registry=registry, tools=load_tools(cfg), login_client=login)
    return build_app(gw), gw
