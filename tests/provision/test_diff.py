"""Pure diffing: desired objects vs a fake live state."""

from __future__ import annotations

from clawql_secrets.provision import loader
from clawql_secrets.provision.diff import LiveState, diff
from clawql_secrets.provision.render import CLAIM_MAPPINGS, KV_MAX_VERSIONS, KV_MOUNT, render
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
        assert r.body["claim_mappings"] == CLAIM_MAPPINGS
        assert r.body["user_claim"] == "sub"
        assert r.body["bound_claims"]["agent_role"] == [r.path.rsplit("/", 1)[1]]


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
