"""The registry Redis's keeper in Kubernetes: OpenBao, and only OpenBao, knows its admin.

The same design as the local stack's ``cluster/redis_registry.py`` (ADR 0011),
for a pod whose Redis runs in another container:

1. At start the keeper makes a random admin password in its own memory and
   writes the ACL file Redis loads at start (``user default off`` and the
   admin user as a SHA-256 hash) into an in-memory volume shared with Redis.
   No Kubernetes Secret, file or environment ever holds the password.
2. Every ``poll_seconds`` it tries that password on the pod's own Redis.
   While OpenBao has rotated it, Redis refuses it and nothing happens. When
   Redis accepts it, Redis has (re)started from the ACL file: the keeper logs
   in as ``registry-keeper`` with its projected service-account token, writes
   the connection with the password and has OpenBao rotate it at once
   (``rotate-root``), then revokes its own token.
3. A restarted keeper makes a new password and a new ACL file; the running
   Redis is untouched until its own next start, which step 2 then notices.

``serve`` runs the loop; ``check`` (the startup probe) exits 0 once the ACL
file exists, so that Redis never starts without it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from clawql_secrets.cluster import redis_registry
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ClawQLError, ConfigError, OpenBaoError
from clawql_secrets.validation import load_model

log = logging.getLogger("clawql_secrets.cluster.k8s.keeper")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenBaoTarget(_Strict):
    addrs: list[str] = Field(min_length=1)
    ca_file: Path


class KeeperIdentity(_Strict):
    mount: str = "workload"
    role: str = "registry-keeper"
    jwt_file: Path


class RedisTarget(_Strict):
    # How OpenBao reaches Redis (the Service), and how the keeper does (loopback).
    host: str
    port: int = Field(ge=1, le=65535)
    ca_file: Path
    local_host: str = "127.0.0.1"


class KeeperConfig(_Strict):
    openbao: OpenBaoTarget
    identity: KeeperIdentity
    redis: RedisTarget
    acl_file: Path
    poll_seconds: float = Field(default=3.0, gt=0, le=300)


def acl_text(password: str) -> str:
    """The ACL file: anonymous connections run nothing; the admin as a hash only."""
    return "user default off resetkeys resetchannels -@all\n" + redis_registry.admin_directive(
        password
    )


def write_acl(path: Path, password: str) -> None:
    """Replace the ACL file in one rename (Redis may read it at any moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(acl_text(password))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the registry ACL file {path} ({exc.strerror})") from exc


def connection_body(config: KeeperConfig, password: str) -> dict[str, str]:
    """What ``registry-keeper`` may write (its policy pins the rest, as strings)."""
    try:
        ca = config.redis.ca_file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the registry CA {config.redis.ca_file}") from exc
    return {
        "plugin_name": "redis-database-plugin",
        "host": config.redis.host,
        "port": str(config.redis.port),
        "username": redis_registry.ADMIN_USER,
        "password": password,
        "tls": "true",
        "ca_cert": ca,
        "allowed_roles": ",".join(redis_registry.ROLES),
        "verify_connection": "true",
    }


class Vault(Protocol):
    """What the keeper asks of OpenBao (``OpenBaoClient`` in production)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = ...,
        token: str | None = ...,
        node: str | None = ...,
        retry_for: float | None = ...,
    ) -> dict[str, Any]: ...


def hand_over(bao: Vault, config: KeeperConfig, password: str) -> None:
    """Log in, give OpenBao the password, have it rotated away, revoke the login."""
    try:
        jwt = config.identity.jwt_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the keeper's token {config.identity.jwt_file}") from exc
    resp = bao.request(
        "POST",
        f"auth/{config.identity.mount}/login",
        body={"role": config.identity.role, "jwt": jwt},
        token="",
    )
    auth = resp.get("auth")
    token = str(auth.get("client_token", "")) if isinstance(auth, dict) else ""
    if not token:
        raise OpenBaoError(f"login as {config.identity.role} returned no token")
    mount, conn = redis_registry.MOUNT, redis_registry.CONNECTION
    try:
        body = connection_body(config, password)
        bao.request("POST", f"{mount}/config/{conn}", body=body, token=token)
        bao.request("POST", f"{mount}/rotate-root/{conn}", body={}, token=token)
    finally:
        with contextlib.suppress(ClawQLError):
            bao.request("POST", "auth/token/revoke-self", token=token, retry_for=1)


def redis_accepts(config: KeeperConfig, password: str) -> bool:
    """Whether this pod's Redis takes the keeper's password (it has just started).

    Loopback inside the pod: the CA is verified, the host name is not (the
    certificate names the Service).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=config.redis.local_host,
        port=config.redis.port,
        username=redis_registry.ADMIN_USER,
        password=password,
        ssl=True,
        ssl_ca_certs=str(config.redis.ca_file),
        ssl_cert_reqs="required",
        ssl_check_hostname=False,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),  # the loop is the retry
    )
    try:
        # The admin may run ACL GETUSER only; a refused AUTH raises before it.
        client.acl_getuser(redis_registry.ADMIN_USER)
        return True
    except redis.AuthenticationError:
        return False
    except redis.RedisError as exc:
        if "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
            return False
        raise ConfigError(f"the registry Redis is not answering ({type(exc).__name__})") from exc
    finally:
        client.close()


def run(
    config: KeeperConfig,
    bao: Vault,
    *,
    accepts: Callable[[KeeperConfig, str], bool] = redis_accepts,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    new_password: Callable[[], str] = lambda: secrets.token_urlsafe(32),
) -> int:
    """The loop of the module docstring; returns the number of hand-overs (for tests)."""
    password = new_password()
    write_acl(config.acl_file, password)
    handed = 0
    while not stop():
        try:
            if accepts(config, password):
                hand_over(bao, config, password)
                handed += 1
                log.info("OpenBao holds the admin password of this Redis start, rotated")
        except OpenBaoError as exc:
            # Type and status only: OpenBao's messages are not ours to print.
            log.warning("hand-over failed (%s, HTTP %s); retrying", type(exc).__name__, exc.status)
        except ClawQLError as exc:
            log.warning("keeper: %s", exc.message)
        sleep(config.poll_seconds)
    return handed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clawql_secrets.cluster.k8s.keeper")
    p.add_argument("action", choices=("serve", "check"))
    p.add_argument("--config", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_model(args.config, KeeperConfig, "keeper configuration")
        if args.action == "check":
            return 0 if config.acl_file.is_file() else 1
        with OpenBaoClient(config.openbao.addrs, config.openbao.ca_file, retry_for=5) as bao:
            run(config, bao)
    except ClawQLError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
