"""The gateway's own OpenBao identity: a login with its workload JWT.

Two things need it: ending sessions (``core``: revocations by lease id and
accessor, anomaly records) and obtaining the session registry's Redis user
(``registry_creds``). The JWT is read from the configured file before every
login (kubelet refreshes a projected service-account token) or, in the local
stack, minted for a minute by the stack's workload issuer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ConfigError, OpenBaoError
from clawql_secrets.gateway.config import GatewayIdentity
from clawql_secrets.gateway.errors import BackendUnavailable
from clawql_secrets.issuer import LocalIssuer


@dataclass(frozen=True)
class Login:
    """A service token of the gateway identity; ``token`` never prints."""

    token: str = field(repr=False)
    accessor: str


def workload_jwt(ident: GatewayIdentity) -> str:
    if ident.jwt_file is not None:
        try:
            return ident.jwt_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the gateway's workload JWT {ident.jwt_file}") from exc
    if ident.local_issuer_dir is None or ident.local_issuer_url is None:
        raise ConfigError("the gateway identity has no source")
    issuer = LocalIssuer.load_or_create(ident.local_issuer_dir, ident.local_issuer_url)
    return issuer.mint(ident.subject, ident.audience, ttl=60)


def login(bao: OpenBaoClient, ident: GatewayIdentity) -> Login:
    """``auth/<mount>/login`` as the gateway; OpenBao's refusal → ``BackendUnavailable``."""
    try:
        resp = bao.request(
            "POST",
            f"auth/{ident.mount}/login",
            body={"role": ident.role, "jwt": workload_jwt(ident)},
            token="",
        )
    except OpenBaoError as exc:
        raise BackendUnavailable(
            "gateway_identity_failed", "the gateway could not log in to OpenBao"
        ) from exc
    auth = resp.pop("auth", None) or {}
    out = Login(str(auth.pop("client_token", "") or ""), str(auth.get("accessor", "") or ""))
    auth.clear()
    if not out.token:
        raise BackendUnavailable("gateway_identity_failed", "gateway login returned no token")
    return out
