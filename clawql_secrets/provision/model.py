"""The desired state in ``clawql.yaml``: a pydantic model at the config boundary.

Names that end up in OpenBao paths, SQL identifiers and certificate names are
restricted to ``[a-z][a-z0-9_]*`` (at most 31 characters): no character in them
can end a path segment, a quoted identifier or a glob, and ``-`` is free to
join them into unambiguous object names (``<tenant>-<role>-<connection>``).
Cross-field rules (references, tenant ownership of schemas) are checked in one
validator whose messages start with the dotted field path, so the loader can
name the line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from clawql_secrets import names
from clawql_secrets.certs.config import DEFAULT_TTL, MAX_TTL, MIN_TTL
from clawql_secrets.names import NAME_RE as NAME_RE  # the one grammar, and why

Name = Annotated[str, StringConstraints(pattern=NAME_RE)]
SecretName = Annotated[str, StringConstraints(pattern=names.SECRET_PATTERN)]
PersonName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]{0,63}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]
Url = Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.:/_-]{1,400}$")]
Audience = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:/_-]{1,200}$")]
CommonName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 .,_-]{1,64}$")]

_DNS_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
# spiffe:// or https://, a host, an optional plain path: no query, no template,
# no glob character (OpenBao matches allowed_uri_sans as globs).
_URI_SAN_RE = re.compile(r"(spiffe|https)://" + _DNS_RE.pattern + r"(/[A-Za-z0-9._~-]+)*")


def dns_name(value: str) -> str:
    """A certificate DNS name matched exactly: no wildcard, no IP address."""
    if "*" in value:
        raise ValueError("no wildcard: a service's certificate names are matched exactly")
    if len(value) > 253 or not _DNS_RE.fullmatch(value) or value.rsplit(".", 1)[-1].isdigit():
        raise ValueError("a lower-case DNS name such as orders.svc.example (not an IP address)")
    return value


def uri_san(value: str) -> str:
    if "*" in value:
        raise ValueError("no wildcard: a service's certificate names are matched exactly")
    if len(value) > 400 or not _URI_SAN_RE.fullmatch(value):
        raise ValueError(
            "a spiffe:// or https:// URI with a lower-case host and a plain path "
            "(no query, fragment or placeholder), such as spiffe://example/svc/orders"
        )
    return value


DnsName = Annotated[str, AfterValidator(dns_name)]
UriSan = Annotated[str, AfterValidator(uri_san)]

# The services' PKI roles are svc-<service>: the certificate renewer may sign for
# every role with this prefix (cluster/bootstrap.py CERTS_RENEWER).
SERVICE_ROLE_PREFIX = "svc-"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_APPROVAL_THRESHOLD = 2


def parse_duration(value: object) -> int:
    """``90s``/``5m``/``1h``/``7d`` (or a number of seconds) to seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 5m or 1h is required")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := re.fullmatch(r"(\d{1,7})([smhd])", value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("a duration such as 5m or 1h is required")
    if not 1 <= seconds <= 10 * 365 * 86400:
        raise ValueError("duration out of range")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _cidr(value: str) -> str:
    """A CIDR block in OpenBao's own spelling (a single address without ``/32``)."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block such as 10.0.4.0/24") from exc
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


Cidr = Annotated[str, AfterValidator(_cidr)]


class Exchange(_Strict):
    """The gateway's exchange assertions: the only JWTs the agents' auth mount trusts.

    Not the platform's session issuer: an agent's own session JWT must open
    nothing in OpenBao (ADR 0010). The gateway signs a seconds-lived assertion
    per call naming the agent (subject) and itself (``act.sub``); each agent
    role gets two JWT roles: ``<role>`` (per-call batch tokens living
    ``call_token_ttl``) and ``<role>.session`` (the session's anchor service
    token, created with ``anchor_ttl`` and set by the gateway to the session's
    remaining life at once).
    """

    issuer: Url = "https://gateway.clawql.local/exchange"
    audience: Audience = "openbao-agent-exchange"
    actor: Audience = "clawql-gateway"
    jwks_url: Url | None = None
    public_keys: tuple[str, ...] | None = None
    algorithms: tuple[Literal["EdDSA", "ES256"], ...] = ("EdDSA",)
    # Must be globally unique per agent (``<tenant>/<agent>``): it is the alias name.
    user_claim: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")] = "sub"
    mount: Name = "agents"
    call_token_ttl: Annotated[Duration, Field(ge=2, le=300)] = 15
    anchor_ttl: Annotated[Duration, Field(ge=2, le=60)] = 10
    # The gateway's addresses: agent tokens are usable from there only.
    bound_cidrs: tuple[Cidr, ...] = ()

    @model_validator(mode="after")
    def _one_trust_source(self) -> Exchange:
        if (self.jwks_url is None) == (self.public_keys is None):
            raise ValueError("give exactly one of jwks_url or public_keys")
        for pem in self.public_keys or ():
            if not pem.strip().startswith("-----BEGIN PUBLIC KEY-----"):
                raise ValueError("public_keys must be PEM public keys")
        return self


class Tenant(_Strict):
    name: Name
    schemas: tuple[Name, ...] = ()

    def owned_schemas(self) -> tuple[str, ...]:
        return self.schemas or (self.name,)


class Database(_Strict):
    """A database the engine manages; its admin password comes from the environment.

    The password is only read when the connection is (re)written; ``rotate-root``
    follows at once, after which nobody knows the engine's password.
    """

    name: Name
    engine: Literal["postgresql", "mariadb"]
    host: HostName
    port: int = Field(ge=1, le=65535)
    database: Name = "postgres"
    username: Name
    password_env: EnvName
    sslmode: Literal["disable", "require", "verify-full"] = "disable"
    credential_ttl: Duration = 900
    credential_max_ttl: Duration = 3600


class DbGrant(_Strict):
    connection: Name
    # ``{tenant}`` (the default) or ``{tenant}_suffix``: rendered per tenant.
    schema_: Annotated[str, StringConstraints(pattern=r"^[a-z{}][a-z0-9_{}]{0,40}$")] = Field(
        "{tenant}", alias="schema"
    )
    privileges: tuple[Literal["SELECT", "INSERT", "UPDATE", "DELETE"], ...] = Field(min_length=1)

    def schema_for(self, tenant: str) -> str:
        return self.schema_.replace("{tenant}", tenant)


class AgentRole(_Strict):
    name: Name
    tenants: tuple[Name, ...] = Field(min_length=1)
    tools: tuple[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")], ...] = ()
    max_session: Duration = 3600
    databases: tuple[DbGrant, ...] = ()
    cert_sans: tuple[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9.:/_{}-]{1,200}$")], ...
    ] = ()
    secrets: tuple[SecretName, ...] = ()
    cloud_role: Name | None = None

    @property
    def policy_name(self) -> str:
        return f"agent-{self.name}"


class Pki(_Strict):
    root_common_name: CommonName = "ClawQL Root CA"
    intermediate_common_name: CommonName = "ClawQL Agents Intermediate CA"
    root_ttl: Duration = 10 * 365 * 86400
    intermediate_ttl: Duration = 5 * 365 * 86400
    client_ttl: Duration = 300
    client_max_ttl: Duration = 900


class Service(_Strict):
    """An internal service with mTLS certificates: the names its PKI role allows."""

    name: Name
    common_name: DnsName
    dns_sans: tuple[DnsName, ...] = ()
    uri_sans: tuple[UriSan, ...] = ()
    # The renewer's bounds and default (certs/config.py).
    ttl: Annotated[Duration, Field(ge=MIN_TTL, le=MAX_TTL)] = DEFAULT_TTL

    @field_validator("common_name")
    @classmethod
    def _short_common_name(cls, v: str) -> str:
        if len(v) > 64:
            raise ValueError("at most 64 characters (X.509's limit for a common name)")
        return v

    @field_validator("name")
    @classmethod
    def _no_underscore(cls, v: str) -> str:
        if "_" in v:
            raise ValueError(
                f"no '_' in a service name: certs.yaml names the role {SERVICE_ROLE_PREFIX}{v} "
                "as pki_role, which allows only [a-z0-9-]"
            )
        return v

    @property
    def pki_role(self) -> str:
        return f"{SERVICE_ROLE_PREFIX}{self.name}"


class CloudRole(_Strict):
    name: Name
    audience: Audience
    ttl: Duration = 900


class Cloud(_Strict):
    issuer: Url
    key: Name = "clawql"
    roles: tuple[CloudRole, ...] = ()


class Approvals(_Strict):
    approvers: tuple[PersonName, ...] = Field(min_length=2)
    threshold: int = Field(ge=MIN_APPROVAL_THRESHOLD)
    proposal_ttl: Duration = 86400


class DesiredState(_Strict):
    version: Literal[1]
    exchange: Exchange
    tenants: tuple[Tenant, ...] = Field(min_length=1)
    databases: tuple[Database, ...] = ()
    roles: tuple[AgentRole, ...] = ()
    pki: Pki | None = None
    services: tuple[Service, ...] = ()
    cloud: Cloud | None = None
    approvals: Approvals

    @model_validator(mode="before")
    @classmethod
    def _no_session_issuer(cls, data: object) -> object:
        if isinstance(data, dict) and "session_issuer" in data:
            raise ValueError(
                "session_issuer: replaced by exchange: OpenBao no longer trusts the session "
                "issuer, only the gateway's exchange key (docs/adr/0010-exchange-assertion.md)"
            )
        return data

    @model_validator(mode="after")
    def _references(self) -> DesiredState:
        problems = cross_check(self)
        if problems:
            raise ValueError("\n".join(f"{path}: {msg}" for path, msg in problems))
        return self

    def tenant(self, name: str) -> Tenant:
        return next(t for t in self.tenants if t.name == name)

    def database(self, name: str) -> Database:
        return next(d for d in self.databases if d.name == name)


def _dupes(names: list[str]) -> dict[int, str]:
    seen: set[str] = set()
    out = {}
    for i, n in enumerate(names):
        if n in seen:
            out[i] = n
        seen.add(n)
    return out


def cross_check(s: DesiredState) -> list[tuple[str, str]]:
    """Every rule spanning fields, as ``(dotted path, message)``; empty when valid."""
    out: list[tuple[str, str]] = []
    for i, n in _dupes([t.name for t in s.tenants]).items():
        out.append((f"tenants.{i}.name", f"duplicate tenant {n!r}"))
    for i, n in _dupes([r.name for r in s.roles]).items():
        out.append((f"roles.{i}.name", f"duplicate role {n!r}"))
    for i, n in _dupes([d.name for d in s.databases]).items():
        out.append((f"databases.{i}.name", f"duplicate database {n!r}"))
    owner: dict[str, str] = {}
    for i, t in enumerate(s.tenants):
        for schema in t.owned_schemas():
            try:
                names.check_schema(schema)
            except ValueError as exc:  # a tenant named mysql or public: never
                out.append((f"tenants.{i}.schemas" if t.schemas else f"tenants.{i}.name", str(exc)))
            if schema in owner and owner[schema] != t.name:
                out.append(
                    (
                        f"tenants.{i}.schemas",
                        f"schema {schema!r} already belongs to {owner[schema]!r}",
                    )
                )
            owner.setdefault(schema, t.name)
    tenants = {t.name: t for t in s.tenants}
    dbs = {d.name for d in s.databases}
    cloud_roles = {r.name for r in s.cloud.roles} if s.cloud else set()
    for i, r in enumerate(s.roles):
        for j, tn in enumerate(r.tenants):
            if tn not in tenants:
                out.append((f"roles.{i}.tenants.{j}", f"unknown tenant {tn!r}"))
        for j, g in enumerate(r.databases):
            if g.connection not in dbs:
                out.append((f"roles.{i}.databases.{j}.connection", f"unknown {g.connection!r}"))
            if "{tenant}" not in g.schema_:
                out.append(
                    (
                        f"roles.{i}.databases.{j}.schema",
                        "must contain {tenant}: a grant is always to the agent's own tenant",
                    )
                )
            for tn in r.tenants:
                if tn not in tenants:
                    continue
                schema = g.schema_for(tn)
                if not re.fullmatch(NAME_RE, schema):
                    out.append((f"roles.{i}.databases.{j}.schema", f"bad schema name {schema!r}"))
                elif owner.get(schema, tn) != tn:
                    out.append(
                        (
                            f"roles.{i}.databases.{j}.schema",
                            f"grants tenant {owner[schema]!r}'s schema {schema!r} to tenant {tn!r}",
                        )
                    )
                elif schema not in tenants[tn].owned_schemas():
                    out.append(
                        (
                            f"roles.{i}.databases.{j}.schema",
                            f"schema {schema!r} is not declared by tenant {tn!r}",
                        )
                    )
        for j, san in enumerate(r.cert_sans):
            rest = san.replace("{tenant}", "").replace("{agent}", "")
            if "{tenant}" not in san or "{agent}" not in san or "{" in rest or "}" in rest:
                out.append(
                    (
                        f"roles.{i}.cert_sans.{j}",
                        "must contain {tenant} and {agent} and no other placeholder",
                    )
                )
        if r.cert_sans and s.pki is None:
            out.append((f"roles.{i}.cert_sans", "cert_sans need a pki section"))
        if r.cert_sans:
            for j, tn in enumerate(r.tenants):
                # Its PKI roles would be svc-<role>: signable by the certificate renewer.
                if f"{tn}-".startswith(SERVICE_ROLE_PREFIX):
                    out.append(
                        (
                            f"roles.{i}.tenants.{j}",
                            f"tenant {tn!r} cannot have client certificates: its PKI roles "
                            f"would be named {SERVICE_ROLE_PREFIX}*, which the certificate "
                            "renewer may sign for",
                        )
                    )
        if r.cloud_role is not None and r.cloud_role not in cloud_roles:
            out.append((f"roles.{i}.cloud_role", f"unknown cloud role {r.cloud_role!r}"))
    for i, n in _dupes([v.name for v in s.services]).items():
        out.append((f"services.{i}.name", f"duplicate service {n!r}"))
    if s.services and s.pki is None:
        out.append(("services", "services need a pki section"))
    # One service's certificate must not be able to pass as another's.
    claimed: dict[str, str] = {}
    for i, v in enumerate(s.services):
        for san in dict.fromkeys((v.common_name, *v.dns_sans, *v.uri_sans)):
            if claimed.setdefault(san, v.name) != v.name:
                out.append((f"services.{i}", f"{san!r} is already a name of {claimed[san]!r}"))
    if s.cloud:
        for i, n in _dupes([c.name for c in s.cloud.roles]).items():
            out.append((f"cloud.roles.{i}.name", f"duplicate cloud role {n!r}"))
    a = s.approvals
    for i, n in _dupes(list(a.approvers)).items():
        out.append((f"approvals.approvers.{i}", f"duplicate approver {n!r}"))
    if a.threshold > len(set(a.approvers)):
        out.append(("approvals.threshold", "higher than the number of distinct approvers"))
    return out
