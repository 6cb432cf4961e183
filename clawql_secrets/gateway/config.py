"""The gateway's configuration file (YAML or JSON), validated at the boundary.

Nothing in it is a secret: OpenBao is reached with per-call tokens from JWT
logins, databases with per-session dynamic users, the session registry's Redis
over TLS as a user OpenBao issues to this replica, and the gateway's own
identity comes from a workload JWT (a Kubernetes service-account token file in
production, the stack's local issuer in development).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.anomaly import AnomalySettings
from clawql_secrets.gateway.edge_settings import EdgeLimits
from clawql_secrets.gateway.session_issuer import SESSION_AUDIENCE, SESSIONS_ISSUER_URL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenBaoSettings(_Strict):
    addrs: list[str] = Field(min_length=1)
    ca_file: Path
    timeout: float = Field(default=5.0, gt=0)
    retry_for: float = Field(default=5.0, ge=0)


class SessionTrust(_Strict):
    """Who may open sessions: the platform's session issuer, and where OpenBao trusts it."""

    jwks_file: Path
    issuer: str = SESSIONS_ISSUER_URL
    # The gateway's canonical URI (RFC 8707 resource indicator): session JWTs carry it
    # as ``aud``, and it names this resource in its RFC 9728 metadata.
    audience: str = SESSION_AUDIENCE
    mount: str = "agents"
    role_template: str = "{agent_role}"
    max_token_bytes: int = Field(default=4096, ge=512, le=65536)
    clock_skew: int = Field(default=30, ge=0, le=300)
    max_lifetime: int = Field(default=3600, ge=60, le=86400)


class ExchangeSettings(_Strict):
    """How the gateway proves to OpenBao that it acts for an agent (ADR 0010).

    Per call the gateway signs a seconds-lived exchange assertion with its own
    key: subject = the agent (tenant, agent, role, sid), ``act.sub`` = the
    gateway. OpenBao's agents mount trusts this key and no other, for an
    audience no session JWT carries, so an agent's own bearer opens nothing
    there. The key is bootstrap trust (docs/threat-model.md).
    """

    key_file: Path
    issuer: str = "https://gateway.clawql.local/exchange"
    audience: str = "openbao-agent-exchange"
    actor: str = "clawql-gateway"
    # The assertion's own life: long enough for one login, never more.
    ttl: int = Field(default=30, ge=5, le=300)
    # The agents' JWT roles: ``<role>`` issues per-call batch tokens, ``<role>.session``
    # the session's service token that anchors its credentials' leases.
    session_role_suffix: str = ".session"


class RolePolicy(_Strict):
    """What the gateway lets a session of one agent role call (from the desired state)."""

    tools: list[str] = []


class GatewayIdentity(_Strict):
    """The gateway's own OpenBao identity, from a workload JWT: revocations, anomaly
    records and its session registry's Redis user (ADR 0011)."""

    mount: str = "workload"
    role: str = "gateway"
    subject: str = "clawql-gateway"
    audience: str = "openbao"
    jwt_file: Path | None = None
    local_issuer_dir: Path | None = None
    local_issuer_url: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> GatewayIdentity:
        if (self.jwt_file is None) == (self.local_issuer_dir is None):
            raise ValueError("set exactly one of jwt_file or local_issuer_dir")
        if self.local_issuer_dir is not None and not self.local_issuer_url:
            raise ValueError("local_issuer_dir needs local_issuer_url")
        return self


class AdminTrust(_Strict):
    """The platform's admin identity: JWTs of ``issuer`` for ``audience`` with these subjects."""

    jwks_file: Path
    issuer: str
    audience: str = "clawql-gateway-admin"
    subjects: list[str] = Field(min_length=1)


class RegistrySettings(_Strict):
    """The shared session registry: a Redis reached over TLS only, as a user OpenBao
    issues to this replica (ADR 0011). There is no password and no plaintext option
    here: the credential is read from ``creds_path`` with the gateway's identity,
    re-issued at ``reissue_at`` of its lease, and lives in memory only."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    # The CA that verifies the Redis server's certificate, issued for ``host``.
    ca_file: Path
    creds_path: str = Field(
        default="clawql-registry/creds/gateway", pattern=r"^[a-z0-9_-]+(/[a-z0-9_-]+)*$"
    )
    prefix: str = Field(default="clawql:gw", pattern=r"^[A-Za-z0-9:_-]{1,64}$")
    # Fraction of the credential's lease after which a new one replaces it.
    reissue_at: float = Field(default=0.5, ge=0.1, le=0.9)


class _SQLTarget(_Strict):
    host: str
    dbname: str
    mount: str = "database"
    creds_role_template: str = "{agent_role}-{tenant}"
    pool_size: int = Field(default=2, ge=1, le=16)
    connect_timeout: int = Field(default=5, ge=1, le=60)
    # Agent role -> statement classes its sessions may run here (``gateway/sqlguard.py``);
    # a role not listed gets ("read",).
    statement_classes: dict[str, tuple[str, ...]] = {}


class PostgresTarget(_SQLTarget):
    kind: Literal["postgresql"] = "postgresql"
    port: int = 5432


class MariaDBTarget(_SQLTarget):
    """A MariaDB server; ``dbname`` may name the tenant (``app_{tenant}``): one database
    per tenant is MariaDB's equivalent of a PostgreSQL schema."""

    kind: Literal["mariadb"]
    port: int = 3306


DatabaseTarget = PostgresTarget | MariaDBTarget


class SQLLimits(_Strict):
    max_rows: int = Field(default=1000, ge=1, le=100_000)
    max_bytes: int = Field(default=1_000_000, ge=1024, le=64_000_000)
    max_sql_bytes: int = Field(default=65_536, ge=64, le=1_000_000)
    max_params: int = Field(default=256, ge=0, le=10_000)
    statement_timeout_ms: int = Field(default=5000, ge=10, le=600_000)


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8200, ge=0, le=65535)
    openbao: OpenBaoSettings
    sessions: SessionTrust
    identity: GatewayIdentity
    exchange: ExchangeSettings
    # Agent role -> what its sessions may call; a role not listed may call nothing.
    roles: dict[str, RolePolicy] = {}
    admin: AdminTrust | None = None
    registry: RegistrySettings
    databases: dict[str, DatabaseTarget] = {}
    sql: SQLLimits = SQLLimits()
    anomaly: AnomalySettings = AnomalySettings()
    # Fair shares of tool calls, body read timeout, JSON depth (the HTTP edge).
    edge: EdgeLimits = EdgeLimits()
    # Each tool plugin's own settings, by tool name; the plugin validates its entry.
    tools: dict[str, dict[str, Any]] = {}
    max_body_bytes: int = Field(default=65_536, ge=1024, le=16_000_000)
    sweep_interval: float = Field(default=1.0, gt=0, le=300)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load(path: Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"gateway config {path} cannot be read ({type(exc).__name__})",
            fix="point --config at a YAML file",
        ) from exc
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"gateway config {path} is invalid at {where}: {first['msg']}",
            fix="see docs: gateway configuration",
        ) from exc
