"""The Kubernetes registry keeper: OpenBao gets the admin password at each Redis start only.

The loop is driven with an in-memory OpenBao (the ``Vault`` interface); the
assumption it rests on — a Redis started from the keeper's ACL file takes
the keeper's password until the admin's password is changed, and takes it
again after a restart — is checked against a real redis-server over TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.cluster import redis_registry
from clawql_secrets.cluster.k8s import keeper
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.tlsca import LocalCA


def _config(tmp_path: Path, port: int = 6379) -> keeper.KeeperConfig:
    ca = tmp_path / "ca.pem"
    if not ca.exists():
        ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    jwt = tmp_path / "token"
    jwt.write_text("eyJ.projected.token\n")
    return keeper.KeeperConfig.model_validate(
        {
            "openbao": {"addrs": ["https://openbao.clawql.svc:8200"], "ca_file": str(ca)},
            "identity": {"jwt_file": str(jwt)},
            "redis": {"host": "clawql-redis.clawql.svc", "port": port, "ca_file": str(ca)},
            "acl_file": str(tmp_path / "users.acl"),
            "poll_seconds": 0.01,
        }
    )


class FakeOpenBao:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.fail = fail

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
        node: str | None = None,
        retry_for: float | None = None,
    ) -> dict[str, Any]:
        self.calls.append((method, path, None if body is None else dict(body), token))
        if path.endswith("/login"):
            if self.fail:
                self.fail -= 1
                raise OpenBaoError("unavailable", status=503)
            return {"auth": {"client_token": "s.keeper", "accessor": "a"}}
        return {}


def _loop(config: keeper.KeeperConfig, bao: FakeOpenBao, answers: list[bool]) -> int:
    it = iter(answers)
    seen: list[str] = []

    def accepts(_: keeper.KeeperConfig, password: str) -> bool:
        seen.append(password)
        return next(it)

    rounds = iter(range(len(answers)))
    return keeper.run(
        config,
        bao,
        accepts=accepts,
        stop=lambda: next(rounds, None) is None,
        sleep=lambda _: None,
        new_password=lambda: "pw-" + "x" * 30,
    )


def test_acl_file_holds_the_hash_only_and_denies_anonymous(tmp_path: Path) -> None:
    config = _config(tmp_path)
    keeper.write_acl(config.acl_file, "pw-secret-value")
    text = config.acl_file.read_text()
    assert text.startswith("user default off resetkeys resetchannels -@all\n")
    assert "pw-secret-value" not in text
    assert "#" + hashlib.sha256(b"pw-secret-value").hexdigest() in text
    assert f"user {redis_registry.ADMIN_USER} on " in text
    assert config.acl_file.stat().st_mode & 0o777 == 0o640


def test_nothing_is_handed_over_while_redis_refuses_the_password(tmp_path: Path) -> None:
    bao = FakeOpenBao()
    assert _loop(_config(tmp_path), bao, [False, False, False]) == 0
    assert bao.calls == []


def test_a_redis_start_is_handed_over_and_rotated_then_the_login_revoked(tmp_path: Path) -> None:
    bao = FakeOpenBao()
    assert _loop(_config(tmp_path), bao, [False, True, False]) == 1
    assert [(m, p) for m, p, _, _ in bao.calls] == [
        ("POST", "auth/workload/login"),
        ("POST", f"{redis_registry.MOUNT}/config/{redis_registry.CONNECTION}"),
        ("POST", f"{redis_registry.MOUNT}/rotate-root/{redis_registry.CONNECTION}"),
        ("POST", "auth/token/revoke-self"),
    ]
    login, config, _, _ = bao.calls
    assert login[2] == {"role": "registry-keeper", "jwt": "eyJ.projected.token"}
    body = config[2]
    assert body is not None
    assert body["password"] == "pw-" + "x" * 30
    assert body["username"] == redis_registry.ADMIN_USER
    assert body["host"] == "clawql-redis.clawql.svc" and body["tls"] == "true"
    assert all(t == "s.keeper" for _, _, _, t in bao.calls[1:])


def test_openbao_down_is_retried_at_the_next_poll(tmp_path: Path) -> None:
    bao = FakeOpenBao(fail=1)
    assert _loop(_config(tmp_path), bao, [True, True]) == 1


# -- the assumption, against a real Redis ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(port: int, ca: Path, user: str | None = None, password: str | None = None) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca),
        ssl_check_hostname=False,
        username=user,
        password=password,
        retry=Retry(NoBackoff(), 0),
    )


@contextlib.contextmanager
def _redis(tmp_path: Path, port: int) -> Iterator[None]:
    conf = tmp_path / "redis.conf"
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="scripts/bootstrap.sh installs it")
def test_redis_takes_the_password_again_only_after_a_restart(tmp_path: Path) -> None:
    import redis

    port = _free_port()
    ca = LocalCA.load_or_create(tmp_path / "ca", "keeper test CA")
    cert = ca.issue(tmp_path / "tls", "server", dns=("clawql-redis.clawql.svc",), server=True)
    config = _config(tmp_path, port)
    config = config.model_copy(
        update={"redis": config.redis.model_copy(update={"ca_file": ca.cert_path})}
    )
    # The rendered redis.conf's TLS and ACL lines, on loopback and a temporary directory.
    (tmp_path / "redis.conf").write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {cert.cert_path}",
                f"tls-key-file {cert.key_path}",
                f"tls-ca-cert-file {ca.cert_path}",
                "tls-auth-clients no",
                f"dir {tmp_path}",
                'save ""',
                f"aclfile {config.acl_file}",
            ]
        )
        + "\n"
    )
    keeper.write_acl(config.acl_file, "first-password-0123456789")
    with _redis(tmp_path, port):
        assert keeper.redis_accepts(config, "first-password-0123456789")
        assert not keeper.redis_accepts(config, "wrong-password")
        # What rotate-root does: the admin changes its own password.
        admin = _client(port, ca.cert_path, redis_registry.ADMIN_USER, "first-password-0123456789")
        admin.execute_command(
            "ACL", "SETUSER", redis_registry.ADMIN_USER, "resetpass", ">rotated-by-openbao"
        )
        admin.close()
        assert not keeper.redis_accepts(config, "first-password-0123456789")
        anonymous = _client(port, ca.cert_path)
        with pytest.raises(redis.RedisError):
            anonymous.get("clawql:gw:x")
        anonymous.close()
    with _redis(tmp_path, port):
        # A restart reloads the ACL file: the keeper's password works again.
        assert keeper.redis_accepts(config, "first-password-0123456789")
