"""Pure diffing: desired objects vs a fake live state."""

from __future__ import annotations

from clawql_secrets.cluster.kv import KV_MAX_VERSIONS
from clawql_secrets.provision import loader
from clawql_secrets.provision.diff import LiveState, diff
from clawql_secrets.provision.render import CLAIM_MAPPINGS, KV_MOUNT, render
from tests.provision.conftest import valid_yaml


def _desired() -> list:  # type: ignore[type-arg]
    return render(loader.parse(valid_yaml()), "auth_jwt_123")


def _live_from(desired: list) -> LiveState:  # type: ignore[type-arg]
    return LiveState({o.path: dict(o.compare) for o in desired})


def test_empty_live_creates_everything_in_order() -> None:
    desired = _desired()
    plan = diff(desired, LiveState({}))
    assert [c.action for c in plan.changes] == ["create"] * len(desired)
    assert plan.changes[0].kind == "auth-mount"
    assert plan.pending


def test_matching_live_is_a_noop() -> None:
    desired = _desired()
    plan = diff(desired, _live_from(desired))
    assert not plan.pending
    assert "No changes" in plan.render()


def test_drift_shows_as_update_with_the_field() -> None:
    desired = _desired()
    live = _live_from(desired)
    path = "auth/agents/role/analyst"
    objects = dict(live.objects)
    objects[path] = {**objects[path], "token_ttl": 99999}  # type: ignore[dict-item]
    plan = diff(desired, LiveState(objects))
    (change,) = plan.changes
    assert change.action == "update" and change.path == path
    assert change.fields[0].name == "token_ttl"


def test_undeclared_live_object_is_deleted() -> None:
    desired = _desired()
    live = _live_from(desired)
    listed = {"db-role": frozenset({"database/roles/acme-analyst-pg", "database/roles/old-x-pg"})}
    plan = diff(desired, LiveState(live.objects, listed))
    assert [(c.action, c.path) for c in plan.changes] == [("delete", "database/roles/old-x-pg")]


def test_mount_of_another_type_is_refused_not_replaced() -> None:
    desired = _desired()
    objects = dict(_live_from(desired).objects)
    objects["sys/mounts/database"] = {"type": "kv"}
    plan = diff(desired, LiveState(objects))
    assert [c.action for c in plan.changes] == ["replace-refused"]


def test_kv_mount_keeps_one_version_and_is_configured_after_it_exists() -> None:
    desired = _desired()
    paths = [o.path for o in desired]
    (cfg,) = [o for o in desired if o.kind == "kv-config"]
    assert KV_MAX_VERSIONS == 1
    assert cfg.path == f"{KV_MOUNT}/config"
    assert dict(cfg.body) == dict(cfg.compare) == {"max_versions": 1}
    assert not cfg.create_only
    assert paths.index(f"sys/mounts/{KV_MOUNT}") < paths.index(cfg.path)


def test_kv_mount_keeping_older_versions_is_updated() -> None:
    # 0 is what OpenBao reports on a mount never configured (it then keeps 10).
    desired = _desired()
    for live_value in (0, 10):
        objects = dict(_live_from(desired).objects)
        objects[f"{KV_MOUNT}/config"] = {"max_versions": live_value}
        (change,) = diff(desired, LiveState(objects)).changes
        assert (change.action, change.path) == ("update", f"{KV_MOUNT}/config")
        assert [(f.name, f.live, f.desired) for f in change.fields] == [
            ("max_versions", live_value, 1)
        ]


def test_every_jwt_role_has_the_same_claim_mappings_and_unique_user_claim() -> None:
    roles = [o for o in _desired() if o.kind == "jwt-role"]
    assert roles
    for r in roles:
        # The anchor role adds the session id; tenant, agent, role, actor everywhere.
        assert CLAIM_MAPPINGS.items() <= r.body["claim_mappings"].items()
        assert ("sid" in r.body["claim_mappings"]) == r.path.endswith(".session")
        assert r.body["user_claim"] == "sub"
        name = r.path.rsplit("/", 1)[1]
        assert r.body["bound_claims"]["agent_role"] == [name.removesuffix(".session")]


def test_agent_roles_take_only_the_gateways_assertions_and_bound_their_tokens() -> None:
    """ADR 0010: per agent role a per-call batch role and a session anchor role, both
    bound to the gateway as actor, the exchange audience, no expiry leeway."""
    state = loader.parse(valid_yaml(), "t.yaml")
    roles = {o.path.rsplit("/", 1)[1]: o.body for o in render(state) if o.kind == "jwt-role"}
    assert sorted(roles) == ["analyst", "analyst.session"]
    for body in roles.values():
        assert body["bound_audiences"] == ["openbao-agent-exchange"]
        assert body["bound_claims"]["/act/sub"] == ["clawql-gateway"]
        assert body["claim_mappings"]["/act/sub"] == "actor"
        assert body["expiration_leeway"] == -1
    call, anchor = roles["analyst"], roles["analyst.session"]
    assert anchor["claim_mappings"]["sid"] == "sid" and "sid" not in call["claim_mappings"]
    assert call["token_type"] == "batch" and call["token_ttl"] == call["token_max_ttl"] == 15
    assert anchor["token_type"] == "service" and anchor["token_ttl"] == 10
    assert anchor["token_max_ttl"] == state.roles[0].max_session
    cfg = next(o for o in render(state) if o.kind == "jwt-config")
    assert cfg.body["bound_issuer"] == "https://gateway.example/exchange"


def test_db_role_statements_grant_only_own_schema_and_terminate_on_revoke() -> None:
    for o in _desired():
        if o.kind != "db-role":
            continue
        tenant = o.path.rsplit("/", 1)[1].split("-")[0]
        other = {"acme": "globex", "globex": "acme"}[tenant]
        create = " ".join(o.body["creation_statements"])
        assert f'SCHEMA "{tenant}"' in create and other not in create
        revoke = " ".join(o.body["revocation_statements"])
        assert "pg_terminate_backend" in revoke and "DROP ROLE" in revoke


def test_no_secret_in_rendered_objects() -> None:
    for o in _desired():
        assert "password" not in o.body


SERVICES = """\
pki: {}
services:
  - name: orders
    common_name: orders.svc.clawql.internal
    dns_sans: [orders.internal, orders.svc.clawql.internal]
    uri_sans: [spiffe://clawql.internal/svc/orders]
    ttl: 10m
  - name: billing
    common_name: billing.internal
approvals:
"""


def _with_services() -> list:  # type: ignore[type-arg]
    return render(loader.parse(valid_yaml(**{"approvals:\n": SERVICES})), "auth_jwt_123")


def test_service_role_allows_exactly_its_names_for_server_and_client_certs() -> None:
    roles = {o.path: o for o in _with_services() if o.path.startswith("pki_int/roles/")}
    assert set(roles) == {"pki_int/roles/svc-orders", "pki_int/roles/svc-billing"}
    orders = roles["pki_int/roles/svc-orders"]
    assert orders.kind == "pki-role" and not orders.create_only
    body = orders.body
    assert body["allowed_domains"] == ["orders.svc.clawql.internal", "orders.internal"]
    assert body["allowed_uri_sans"] == ["spiffe://clawql.internal/svc/orders"]
    # Exactly those names: every way OpenBao has of allowing more is off.
    wider = (
        "allow_subdomains",
        "allow_glob_domains",
        "allow_wildcard_certificates",
        "allow_any_name",
        "allow_localhost",
        "allow_ip_sans",
        "allowed_uri_sans_template",
    )
    assert {k: body[k] for k in wider} == dict.fromkeys(wider, False)
    assert body["allow_bare_domains"] is True and body["enforce_hostnames"] is True
    # Server and client certificates, for keys made on the service's host, not stored.
    assert (body["server_flag"], body["client_flag"], body["no_store"]) == (True, True, True)
    assert (body["key_type"], body["key_bits"]) == ("ec", 256)
    assert (body["ttl"], body["max_ttl"]) == (600, 600)
    assert len(body) == len(wider) + 11
    # Every field is compared, so a widened role is drift.
    assert set(orders.compare) == set(orders.body)
    billing = roles["pki_int/roles/svc-billing"]
    assert billing.body["allowed_domains"] == ["billing.internal"]
    assert billing.body["allowed_uri_sans"] == []
    assert (billing.body["ttl"], billing.body["max_ttl"]) == (900, 900)


def test_service_roles_come_after_the_pki_mounts_and_cas() -> None:
    paths = [o.path for o in _with_services()]
    for before in ("sys/mounts/pki", "sys/mounts/pki_int", "pki/cert/ca", "pki_int/cert/ca"):
        assert paths.index(before) < paths.index("pki_int/roles/svc-orders")
    plan = diff(_with_services(), LiveState({}))
    created = [c.path for c in plan.changes]
    assert created.index("pki_int/cert/ca") < created.index("pki_int/roles/svc-billing")


def test_no_services_no_service_roles() -> None:
    assert not [o for o in _desired() if o.path.startswith("pki_int/")]


def test_service_role_names_in_another_order_are_no_drift_but_a_widened_role_is() -> None:
    desired = _with_services()
    objects = dict(_live_from(desired).objects)
    path = "pki_int/roles/svc-orders"
    live_role = dict(objects[path] or {})
    live_role["allowed_domains"] = ["orders.internal", "orders.svc.clawql.internal"]
    assert not diff(desired, LiveState({**objects, path: live_role})).pending
    live_role["allow_subdomains"] = True
    (change,) = diff(desired, LiveState({**objects, path: live_role})).changes
    assert (change.action, change.path) == ("update", path)
    assert [f.name for f in change.fields] == ["allow_subdomains"]


def test_stale_service_role_is_deleted() -> None:
    desired = _with_services()
    listed = {
        "pki-role": frozenset(
            {"pki_int/roles/svc-orders", "pki_int/roles/svc-billing", "pki_int/roles/svc-gone"}
        )
    }
    plan = diff(desired, LiveState(_live_from(desired).objects, listed))
    assert [(c.action, c.path) for c in plan.changes] == [("delete", "pki_int/roles/svc-gone")]
