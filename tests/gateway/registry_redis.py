"""A private registry Redis for tests that need no OpenBao, started as the stack starts it
(``cluster/redis_registry.start``: TLS only, ``default`` off, the admin on stdin), and users
made the way OpenBao's redis-database-plugin makes them (``ACL SETUSER <name> ON
>password`` + the role's ``creation_statements``), deleted the way it revokes them
(``ACL DELUSER``, which also kills the user's connections).

``AclIssuer`` stands in for OpenBao behind ``RegistryConnection`` (its ``Issuer``
interface); ``Fixed`` is a ``ClientSource`` over one client that never changes.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from clawql_secrets.cluster import redis_registry, stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.gateway.config import RegistrySettings
from clawql_secrets.gateway.registry_creds import Credential


@dataclass
class PrivateRedis:
    settings: StackSettings
    proc: subprocess.Popen[bytes]
    admin: redis.Redis

    @property
    def ca_file(self) -> Path:
        return redis_registry.ca_file(self.settings)

    def registry_settings(self, prefix: str = redis_registry.KEY_PREFIX) -> RegistrySettings:
        s = self.settings
        return RegistrySettings(
            host=s.host, port=s.registry_port, ca_file=self.ca_file, prefix=prefix
        )

    def client(self, username: str | None = None, password: str | None = None) -> redis.Redis:
        s = self.settings
        return redis.Redis(
            host=s.host,
            port=s.registry_port,
            username=username,
            password=password,
            ssl=True,
            ssl_ca_certs=str(self.ca_file),
            decode_responses=True,
            socket_timeout=5,
            protocol=2,
            driver_info=None,
        )

    def make_user(self, commands: tuple[str, ...] = redis_registry.REGISTRY_COMMANDS) -> Credential:
        """As the plugin's ``NewUser``; ``accessor`` names the user (for ``delete_user``)."""
        name = f"V_TEST_GATEWAY_{secrets.token_hex(6).upper()}"
        password = secrets.token_urlsafe(24)
        rules = redis_registry.acl_rules(commands)
        self.admin.execute_command("ACL", "SETUSER", name, "ON", f">{password}", *rules)  # type: ignore[no-untyped-call]
        return Credential(name, password, f"test/{name}", 600, name)

    def reader(self) -> redis.Redis:
        """A client of a read-only user of the registry's keys (the inspector role's)."""
        c = self.make_user((*redis_registry.INSPECTOR_COMMANDS, "exists"))
        return self.client(c.username, c.password)

    def delete_user(self, name: str) -> None:
        """As the plugin's ``DeleteUser`` (a lease revoked or expired)."""
        self.admin.execute_command("ACL", "DELUSER", name)  # type: ignore[no-untyped-call]

    def user_exists(self, name: str) -> bool:
        return self.admin.execute_command("ACL", "GETUSER", name) is not None  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    """The stack's registry Redis, alone, with a test-held admin (an ``ACL``-only user, as
    OpenBao's; its password lives in this process's memory only)."""
    s = stack.free_settings(directory)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    redis_registry.prepare(s)
    admin_password = secrets.token_urlsafe(24)
    with (s.registry_dir / "redis.log").open("wb") as log:
        proc = redis_registry.start(s, admin_password, stdout=log)
    admin = redis.Redis(
        host=s.host,
        port=s.registry_port,
        username=redis_registry.ADMIN_USER,
        password=admin_password,
        ssl=True,
        ssl_ca_certs=str(redis_registry.ca_file(s)),
        decode_responses=True,
        protocol=2,
        driver_info=None,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.execute_command("ACL", "GETUSER", "default")  # type: ignore[no-untyped-call]
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield PrivateRedis(s, proc, admin)
    finally:
        admin.close()
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class AclIssuer:
    """``Issuer`` as OpenBao would be one: a new user per ``issue``, deleted on ``retire``."""

    redis: PrivateRedis
    lease_duration: int = 600
    fail: bool = False
    attempts: int = 0
    issued: list[Credential] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self) -> Credential:
        from clawql_secrets.errors import OpenBaoError

        with self.lock:
            self.attempts += 1
        if self.fail:
            raise OpenBaoError("OpenBao is down (test)", status=503)
        c = self.redis.make_user()
        c = Credential(c.username, c.password, c.lease_id, self.lease_duration, c.accessor)
        with self.lock:
            self.issued.append(c)
        return c

    def retire(self, cred: Credential) -> None:
        self.redis.delete_user(cred.username)
        with self.lock:
            self.retired.append(cred.username)


class Fixed:
    """A ``ClientSource`` over one client: what a stolen credential would give."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def client(self) -> redis.Redis:
        return self._client

    def replace(self, stale: redis.Redis) -> redis.Redis:
        return self._client

    def close(self) -> None:
        self._client.close()
