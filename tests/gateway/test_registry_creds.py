"""The registry under credentials that come and go (``gateway/registry_creds.py``, ADR 0011).

A private registry Redis configured as the stack's (TLS only, ``default`` off), users
made and deleted as OpenBao's plugin does (``tests/gateway/registry_redis.py``): every
registry operation runs under the gateway role's ACL; a user deleted under load (a
revoked or expired lease) is replaced without failing a call; credentials are
re-issued before their lease ends and the old user is deleted after a grace; with
OpenBao down the current user keeps serving, and without one the registry fails
closed and does not hammer OpenBao. The live path (OpenBao issuing) is
``test_live_registry.py``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.anomaly import Window
from clawql_secrets.gateway.config import GatewayConfig, RegistrySettings
from clawql_secrets.gateway.errors import BackendUnavailable
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import ACTIVE, ENDED, RedisRegistry
from clawql_secrets.gateway.registry_creds import RegistryConnection
from clawql_secrets.tlsca import LocalCA
from tests.gateway.fakes import unit_config
from tests.gateway.registry_redis import AclIssuer, PrivateRedis


def _claims(sid: str, ttl: int = 600) -> SessionClaims:
    now = int(time.time())
    return SessionClaims(
        sid=sid,
        tenant="acme",
        agent="bot",
        agent_role="analyst",
        sub="acme/bot",
        exp=now + ttl,
        iat=now,
        jti="j",
    )


class Env:
    def __init__(self, redis_: PrivateRedis, **issuer: int) -> None:
        self.redis = redis_
        self.issuer = AclIssuer(redis_, **issuer)
        self.prefix = f"clawql:gw:t{secrets.token_hex(4)}"

    def connection(self, *, reissue_at: float = 0.5, grace: float = 5.0) -> RegistryConnection:
        settings = self.redis.registry_settings(self.prefix)
        settings = settings.model_copy(update={"reissue_at": reissue_at})
        return RegistryConnection(settings, self.issuer, grace=grace)


@pytest.fixture
def env(registry_redis: PrivateRedis) -> Iterator[Env]:
    yield Env(registry_redis)


def _hammer(reg: RedisRegistry, stop: threading.Event, errors: list[str], n: int) -> None:
    """Calls as the tool path makes them, until ``stop``; every failure is recorded."""
    w = Window(60, 1000)
    while not stop.is_set():
        try:
            assert reg.open(_claims(f"s{n}"), w).state == ACTIVE
            reg.add_lease(f"s{n}", f"database/creds/x/{secrets.token_hex(4)}")
            reg.get(f"s{n}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")


def test_every_registry_operation_runs_under_the_gateway_roles_acl(env: Env) -> None:
    """The scripts (EVALSHA, a first SCRIPT LOAD on a fresh server, TIME and the sorted
    sets inside them) and the direct reads: all within ``REGISTRY_COMMANDS``."""
    conn = env.connection()
    reg = RedisRegistry(conn, env.prefix)
    try:
        assert reg.ping()
        w = Window(60, 3)
        assert [reg.open(_claims("s1"), w).calls for _ in range(4)] == [1, 2, 3, 3]
        assert reg.count_denied("s1", Window(30, 10)) == 1
        assert reg.add_lease("s1", "database/creds/r/abc")
        assert reg.leases("s1") == ["database/creds/r/abc"]
        rec = reg.get("s1")
        assert rec is not None and rec.state == ACTIVE and rec.leases == {"database/creds/r/abc"}
        assert reg.count_active() == 1
        assert reg.open(_claims("old", ttl=-5)).state == ACTIVE
        assert reg.expired(time.time()) == ["old"]
        end = reg.end("s1", _claims("s1").exp, "ended")
        assert end.transitioned and end.leases == ("database/creds/r/abc",)
        assert not reg.add_lease("s1", "database/creds/r/def")
        assert reg.pending() == ["s1"] and reg.count_pending() == 1
        reg.lease_revoked("s1", "database/creds/r/abc")
        assert reg.pending() == []
        reg.end("old", _claims("old").exp, "expired")
        reg.clear_pending("old")
        assert reg.open(_claims("s1")).state == ENDED
        assert reg.get("never") is None
    finally:
        reg.close()


def test_a_user_deleted_under_load_is_replaced_without_failing_a_call(env: Env) -> None:
    """What a revoked or expired lease does in Redis (``ACL DELUSER``: the user is gone and
    its connections are killed mid-command): one new user, and every call still answers."""
    conn = env.connection()
    reg = RedisRegistry(conn, env.prefix)
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=_hammer, args=(reg, stop, errors, i)) for i in range(4)]
    try:
        reg.ping()
        for t in threads:
            t.start()
        deleted = []
        for _ in range(3):
            time.sleep(0.3)
            name = conn.username
            assert name is not None
            env.redis.delete_user(name)
            deleted.append(name)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors[:5]
        # One issuance per deletion, however many threads saw it.
        assert len(env.issuer.issued) == 1 + len(deleted), [c.username for c in env.issuer.issued]
        assert conn.username not in deleted and not any(env.redis.user_exists(n) for n in deleted)
    finally:
        stop.set()
        reg.close()


def test_credentials_are_reissued_before_expiry_and_old_users_deleted(env: Env) -> None:
    """Lease 2 s, re-issue at half of it, grace 0.3 s: under load the user changes about
    every second, no call fails, and each replaced user is deleted after its grace."""
    env.issuer.lease_duration = 2
    conn = env.connection(grace=0.3)
    reg = RedisRegistry(conn, env.prefix)
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=_hammer, args=(reg, stop, errors, i)) for i in range(2)]
    try:
        reg.ping()
        for t in threads:
            t.start()
        time.sleep(3.6)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors[:5]
        assert len(env.issuer.issued) >= 3, env.issuer.issued
        # Rotation goes on: at some moment outside a grace, only the current user is left.
        deadline = time.monotonic() + 5
        while True:
            issued = [c.username for c in env.issuer.issued]
            if set(env.issuer.retired) == set(issued) - {conn.username}:
                break
            assert time.monotonic() < deadline, (issued, env.issuer.retired)
            time.sleep(0.02)
        assert [n for n in issued[:-1] if env.redis.user_exists(n)] == []
    finally:
        stop.set()
        reg.close()
    issued = [c.username for c in env.issuer.issued]
    assert set(env.issuer.retired) == set(issued)  # close retires the current one too
    assert not any(env.redis.user_exists(n) for n in issued)


def test_openbao_down_keeps_the_current_user_and_fails_closed_without_one(env: Env) -> None:
    env.issuer.lease_duration = 1  # re-issue due after 0.5 s
    conn = env.connection()
    reg = RedisRegistry(conn, env.prefix)
    try:
        assert reg.ping()
        first = conn.username
        assert first is not None
        env.issuer.fail = True
        time.sleep(1.0)  # re-issue attempts fail: the current user keeps serving
        assert env.issuer.attempts > 1 and conn.username == first
        assert reg.open(_claims("s1")).state == ACTIVE
        env.redis.delete_user(first)  # and now it is gone too (expired meanwhile)
        with pytest.raises(BackendUnavailable) as err:
            reg.open(_claims("s1"))
        assert err.value.code == "registry_unavailable"
        assert not reg.ping()
        # Calls fail fast: at most one issuance attempt per RETRY_FLOOR second.
        before = env.issuer.attempts
        for _ in range(20):
            with pytest.raises(BackendUnavailable):
                reg.get("s1")
        assert env.issuer.attempts - before <= 2
        env.issuer.fail = False
        time.sleep(1.1)
        assert reg.open(_claims("s1")).state == ACTIVE  # OpenBao is back: a new user
        assert conn.username not in (None, first)
    finally:
        reg.close()


def test_a_server_whose_certificate_the_ca_does_not_sign_is_refused(
    env: Env, tmp_path: Path
) -> None:
    """Clients verify the registry: another CA's file, and the user just issued is
    retired at once rather than left to its TTL."""
    other = LocalCA.load_or_create(tmp_path / "other-ca", "some other CA")
    settings = env.redis.registry_settings(env.prefix).model_copy(
        update={"ca_file": other.cert_path}
    )
    conn = RegistryConnection(settings, env.issuer)
    reg = RedisRegistry(conn, env.prefix)
    try:
        with pytest.raises(BackendUnavailable):
            reg.open(_claims("s1"))
        assert [c.username for c in env.issuer.issued] == env.issuer.retired
    finally:
        reg.close()


def test_a_missing_ca_file_is_a_configuration_error(env: Env, tmp_path: Path) -> None:
    settings = env.redis.registry_settings().model_copy(update={"ca_file": tmp_path / "absent.pem"})
    with pytest.raises(ConfigError, match="verifies the session registry"):
        RegistryConnection(settings, env.issuer)


@pytest.mark.parametrize(
    ("case", "registry"),
    [
        ("a plaintext url", {"redis_url": "redis://127.0.0.1:6379/0"}),
        ("a password", {"host": "h", "port": 1, "ca_file": "/x", "password": "p"}),
        ("no ca", {"host": "h", "port": 1}),
        ("a path outside OpenBao's grammar", {"host": "h", "port": 1, "ca_file": "/x",
                                              "creds_path": "../sys/raw"}),
    ],
)  # fmt: skip
def test_the_registry_section_names_no_secret_and_no_plaintext(
    tmp_path: Path, case: str, registry: dict[str, object]
) -> None:
    """Secure is not an option: there is no field for a password, a URL or plain TCP."""
    base = unit_config(tmp_path).model_dump(mode="json")
    base["registry"] = registry
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate(base)
    assert set(RegistrySettings.model_fields) == {
        "host", "port", "ca_file", "creds_path", "prefix", "reissue_at",
    }  # fmt: skip
