"""The gateway of the local stack: its configuration, derived from the stack's layout.

It trusts the stack's session issuer (agents) and gets its own identity from the
stack's workload issuer; its session registry is the stack's own Redis, reached
over TLS as a user OpenBao issues (``cluster/redis_registry.py``, ADR 0011); its
SQL targets are the example tenants' databases
(`examples/clawql.yaml`: `<tenant>-<role>-<connection>` dynamic roles). Role
``integrator`` may make ``http.request`` calls to the demo's HTTPS destination
only (``clawql_secrets/demo/target.py``), with a client certificate named as the
example's ``cert_sans`` and a KV secret in ``Authorization``; the gateway trusts
that destination through a per-stack "demo-target" CA and nothing else.
"""

from __future__ import annotations

from clawql_secrets.cluster import redis_registry
from clawql_secrets.cluster.layout import NODE_IDS, WORKLOAD_ISSUER_URL, StackSettings
from clawql_secrets.gateway import exchange, session_issuer, sqlguard
from clawql_secrets.gateway.anomaly import AnomalySettings, tenant_schemas_from_state
from clawql_secrets.gateway.config import (
    DatabaseTarget,
    ExchangeSettings,
    GatewayConfig,
    GatewayIdentity,
    MariaDBTarget,
    OpenBaoSettings,
    PostgresTarget,
    RegistrySettings,
    RolePolicy,
    SessionTrust,
)
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.render import db_role_name
from clawql_secrets.tlsca import LocalCA

# examples/clawql.yaml, role integrator: cert_sans (OpenBao's PKI role allows only this).
AGENT_URI_SAN = "spiffe://clawql/tenants/{tenant}/agents/{agent}"
HTTP_ROLE = "integrator"
DEMO_TARGET_CA_NAME = "ClawQL local demo-target CA"


def demo_target_ca(settings: StackSettings) -> LocalCA:
    """The CA of the demo destination's server certificate, created once per stack."""
    return LocalCA.load_or_create(settings.demo_target_ca_dir, DEMO_TARGET_CA_NAME)


def stack_gateway_config(
    settings: StackSettings, state: DesiredState | None = None
) -> GatewayConfig:
    """The local gateway's configuration, derived from the desired state ``up`` applies
    (the example unless given): the same exchange trust, roles and databases that
    OpenBao was configured with, so the gateway and OpenBao cannot disagree."""
    from clawql_secrets.provision.localstack import load_example  # it imports cluster.stack

    s = settings
    session_issuer.load_issuer(s.data_dir)  # creates the session issuer's key once
    state = state if state is not None else load_example(s)
    target_ca = demo_target_ca(s)  # likewise the demo destination's CA (key 0600)
    x = state.exchange
    return GatewayConfig(
        host=s.host,
        port=s.gateway_port,
        openbao=OpenBaoSettings(
            addrs=[s.api_addr(n) for n in NODE_IDS], ca_file=s.node_ca_dir / "ca.pem"
        ),
        sessions=SessionTrust(
            jwks_file=session_issuer.issuer_dir(s.data_dir) / "jwks.json",
            audience=s.gateway_addr,
            mount=x.mount,
        ),
        exchange=ExchangeSettings(
            key_file=exchange.stack_key_dir(s.data_dir) / exchange.KEY_FILE,
            issuer=x.issuer,
            audience=x.audience,
            actor=x.actor,
        ),
        roles={r.name: RolePolicy(tools=list(r.tools)) for r in state.roles},
        identity=GatewayIdentity(
            local_issuer_dir=s.issuer_dir, local_issuer_url=WORKLOAD_ISSUER_URL
        ),
        registry=RegistrySettings(
            host=s.host,
            port=s.registry_port,
            ca_file=redis_registry.ca_file(s),
            creds_path=redis_registry.CREDS_PATH,
            prefix=redis_registry.KEY_PREFIX,
        ),
        # The out-of-scope rule knows the real tenants' schemas and databases.
        anomaly=AnomalySettings(tenant_schemas=tenant_schemas_from_state(state)),
        databases=sql_targets(state),
        tools={
            "http.request": {
                "ca_file": str(target_ca.cert_path),
                "uri_san_template": AGENT_URI_SAN,
                "roles": {
                    HTTP_ROLE: {
                        "allow": [f"https://{s.host}:{s.demo_target_port}"],
                        "client_cert": True,
                        "inject_headers": ["Authorization"],
                    }
                },
            }
        },
    )


def sql_targets(state: DesiredState) -> dict[str, DatabaseTarget]:
    """One ``sql.query`` target per database of the desired state, named like it, reading
    ``database/creds/<tenant>-<role>-<connection>`` (``provision.render``)."""
    out: dict[str, DatabaseTarget] = {}
    for db in state.databases:
        template = db_role_name("{agent_role}", "{tenant}", db.name)
        # What each role's statements may be, from its grants: SELECT → read-only
        # queries; INSERT/UPDATE/DELETE add writes; nothing else (sqlguard).
        classes = {
            r.name: tuple(sorted(sqlguard.classes_for_privileges(g.privileges)))
            for r in state.roles
            for g in r.databases
            if g.connection == db.name
        }
        if db.engine == "postgresql":
            out[db.name] = PostgresTarget(
                host=db.host,
                port=db.port,
                dbname=db.database,
                creds_role_template=template,
                statement_classes=classes,
            )
        else:
            # One database per tenant on MariaDB, named like the tenant's schema.
            out[db.name] = MariaDBTarget(
                kind="mariadb",
                host=db.host,
                port=db.port,
                dbname="{tenant}",
                creds_role_template=template,
                statement_classes=classes,
            )
    return out
