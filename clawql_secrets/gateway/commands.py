"""CLI: ``gateway serve --config F`` and ``session issue``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from clawql_secrets.gateway import config as gwconfig
from clawql_secrets.gateway import session_issuer

DEFAULT_DATA_DIR = Path(".clawql")


def register(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="the agent-facing gateway")
    gsub = gw.add_subparsers(dest="gateway_command", metavar="ACTION")
    gsub.required = True
    p = gsub.add_parser("serve", help="serve the gateway (uvicorn) until interrupted")
    p.add_argument("--config", type=Path, required=True, help="gateway YAML config")
    p.add_argument("--port", type=int, default=None, help="override the config's port")
    p.set_defaults(func=_serve)

    sess = sub.add_parser("session", help="agent sessions")
    ssub = sess.add_subparsers(dest="session_command", metavar="ACTION")
    ssub.required = True
    p = ssub.add_parser("issue", help="print a signed session JWT from the local session issuer")
    p.add_argument("--tenant", required=True)
    p.add_argument("--agent", required=True)
    p.add_argument("--role", required=True, help="the agent role (clawql.yaml roles[].name)")
    p.add_argument("--ttl", default="15m", help="lifetime: 90s, 15m, 1h (at most 1h)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.set_defaults(func=_issue)


def _issue(args: argparse.Namespace) -> int:
    from clawql_secrets.cluster.stack import load_settings

    ttl = session_issuer.parse_ttl(args.ttl)
    issuer = session_issuer.load_issuer(args.data_dir)
    audience = load_settings(args.data_dir).gateway_addr  # the stack's gateway, RFC 8707
    print(
        session_issuer.issue(
            issuer, tenant=args.tenant, agent=args.agent, role=args.role, ttl=ttl, audience=audience
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from clawql_secrets.gateway.server import build

    cfg = gwconfig.load(args.config)
    if args.port is not None:
        cfg = cfg.model_copy(update={"port": args.port})
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    app, gw = build(cfg)
    try:
        uvicorn.Server(
            uvicorn.Config(
                app,
                host=cfg.host,
                port=cfg.port,
                log_level=cfg.log_level,
                # Per-request access lines cost CPU on every call; the gateway logs
                # its own line per tool call (core.call_tool) at info level.
                access_log=False,
                lifespan="on",
                server_header=False,
                proxy_headers=False,
            )
        ).run()
    finally:
        gw.close()
    return 0
