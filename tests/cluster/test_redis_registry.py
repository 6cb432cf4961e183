"""The registry Redis's files and OpenBao configuration (pure; ``cluster/redis_registry.py``).

The live side (the stack's child, OpenBao's keeper hand-over, the gateway's users) is
``tests/gateway/test_live_registry.py``; the ACL under load ``test_registry_creds.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from clawql_secrets.cluster import bootstrap, redis_registry
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.policy import hcl
from clawql_secrets.policy.lint import matches


def _settings(tmp_path: Path) -> StackSettings:
    return StackSettings(data_dir=tmp_path / "stack", base_port=23400, bridge_port=23450)


def _caps(policy: str, path: str) -> set[str]:
    """The capabilities OpenBao would grant on ``path``: the most specific match."""
    rules = [r for r in hcl.parse(policy, "test") if matches(r.pattern, path)]
    if not rules:
        return set()
    if any("deny" in r.capabilities for r in rules):
        return {"deny"}
    return set(max(rules, key=lambda r: len(r.pattern.rstrip("*"))).capabilities)


def test_redis_conf_is_tls_only_on_loopback_and_names_no_password(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    redis_registry.prepare(s)
    conf = redis_registry.config_path(s).read_text()
    lines = set(conf.splitlines())
    assert {
        "port 0",
        f"tls-port {s.base_port + 40}",
        "bind 127.0.0.1",
        "protected-mode yes",
    } <= lines
    assert "tls-auth-clients no" in lines  # clients verify the server; users authenticate
    assert "user default off resetkeys resetchannels -@all" in lines
    assert "save 1 1" in lines  # a restart must not forget an ended session
    # No password of any form, and no user but the disabled default.
    directives = [ln for ln in lines if ln and not ln.startswith("#")]
    assert not [ln for ln in directives if ">" in ln or "#" in ln]
    assert [ln for ln in lines if ln.startswith("user ")] == [
        "user default off resetkeys resetchannels -@all"
    ]
    assert not [ln for ln in lines if ln.startswith(("tls-cert-file", "tls-key-file"))]
    # The only key on disk is the CA's (bootstrap trust); the server's is made per start.
    assert sorted(s.data_dir.rglob("*.key")) == [s.registry_ca_dir / "ca.key"]
    assert (s.registry_ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    # Idempotent: the same CA on a second prepare.
    before = redis_registry.ca_file(s).read_bytes()
    redis_registry.prepare(s)
    assert redis_registry.ca_file(s).read_bytes() == before


def test_the_admin_password_reaches_redis_as_a_hash_only() -> None:
    line = redis_registry.admin_directive("correct horse battery staple")
    assert "correct horse" not in line
    digest = hashlib.sha256(b"correct horse battery staple").hexdigest()
    assert line == (
        f"user {redis_registry.ADMIN_USER} on #{digest} resetkeys resetchannels -@all "
        "+acl|setuser +acl|getuser +acl|deluser\n"
    )


def test_roles_confine_users_to_the_registry_keys_and_commands() -> None:
    bodies = redis_registry.role_bodies()
    assert set(bodies) == {"gateway", "inspector"}
    gw = bodies["gateway"]
    assert gw["db_name"] == redis_registry.CONNECTION
    rules = gw["creation_statements"]
    # One ACL SETUSER argument per item (a single string would fail only at issue time).
    assert all(" " not in r for r in rules)
    assert rules[:4] == ["resetkeys", "~clawql:gw:*", "resetchannels", "-@all"]
    allowed = {r[1:] for r in rules[4:]}
    assert all(r.startswith("+") for r in rules[4:])
    for dangerous in ("keys", "scan", "eval", "config", "acl", "flushall", "del", "multi"):
        assert dangerous not in allowed
    assert {"evalsha", "script|load", "time", "expiretime"} <= allowed
    assert "scan" in {r[1:] for r in bodies["inspector"]["creation_statements"][4:]}
    assert (gw["default_ttl"], gw["max_ttl"]) == ("10m", "15m")


def test_registry_creds_are_the_gateways_alone() -> None:
    """Only the gateway's policy reads the registry's creds: the provisioner may neither
    reach the mount nor tune, remount or delete it, and no other identity is granted it."""
    creds = redis_registry.CREDS_PATH
    inspector = f"{redis_registry.MOUNT}/creds/{redis_registry.INSPECTOR_ROLE}"
    assert _caps(bootstrap.GATEWAY.hcl, creds) == {"read"}
    assert _caps(bootstrap.GATEWAY.hcl, inspector) == set()
    prov = bootstrap.PROVISIONER.hcl
    for path in (
        creds,
        inspector,
        f"{redis_registry.MOUNT}/config/{redis_registry.CONNECTION}",
        f"{redis_registry.MOUNT}/roles/gateway",
        f"sys/mounts/{redis_registry.MOUNT}",
        f"sys/mounts/{redis_registry.MOUNT}/tune",
    ):
        assert _caps(prov, path) == {"deny"}, path
    for ident in bootstrap.IDENTITIES:
        if ident not in (bootstrap.GATEWAY, bootstrap.PROVISIONER):
            assert not {"read", "update", "create"} & _caps(ident.hcl, creds), ident.role


def test_the_keeper_sets_the_connection_and_rotates_it_nothing_else(tmp_path: Path) -> None:
    keeper = bootstrap.REGISTRY_KEEPER.hcl
    mount = redis_registry.MOUNT
    assert _caps(keeper, f"{mount}/config/{redis_registry.CONNECTION}") == {"create", "update"}
    assert _caps(keeper, f"{mount}/rotate-root/{redis_registry.CONNECTION}") == {"update"}
    for path in (redis_registry.CREDS_PATH, f"{mount}/roles/gateway", f"{mount}/config/other"):
        assert _caps(keeper, path) == set(), path
    # What it sends is within its allowed parameters: pinned values exactly, the rest free.
    s = _settings(tmp_path)
    redis_registry.prepare(s)
    body = redis_registry.connection_body(s, "pw")
    for key, value in body.items():
        pinned, free = f'"{key}" = ["{value}"]', f'"{key}" = []'
        assert pinned in keeper or free in keeper, key
    for key in ("plugin_name", "username", "tls", "allowed_roles", "verify_connection"):
        assert f'"{key}" = ["{body[key]}"]' in keeper, key
