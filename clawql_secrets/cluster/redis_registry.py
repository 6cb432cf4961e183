"""The local stack's session registry: a Redis that speaks TLS only and knows no static password.

Whoever can write the gateway's registry (``gateway/registry.py``) can mark an
ended session active again, so this Redis is reached the way the project's
other backends are (ADR 0011):

- TLS only (``port 0``, ``tls-port``) on loopback, its server certificate from a
  CA of its own (``registry-ca``) that the gateway and OpenBao verify it with.
  The server's key is made at every start and reaches redis-server through an
  anonymous memory file: it is never on disk. No client certificate is asked
  for: OpenBao's redis-database-plugin cannot present one, and a key file per
  client would be one more static credential. Clients authenticate as ACL users.
- ``user default off``: a connection that has not authenticated runs nothing.
- One admin ACL user for OpenBao's redis-database-plugin, allowed the three ACL
  subcommands that create, look up and delete users. Its password is made by
  this process at every start of Redis and reaches Redis on stdin as a SHA-256
  hash (never a file, an argument or the environment); the registry keeper
  identity gives it to OpenBao once, and OpenBao rotates it at once
  (``rotate-root``): from then on only OpenBao knows it. A restarted Redis
  reloads its configuration and would forget a rotated password, hence a new
  one per start rather than one at ``prepare``.
- Every other user is made by OpenBao: the gateway's (``clawql-registry/creds/gateway``,
  one per replica, minutes-lived, confined to ``clawql:gw:*`` and the commands
  the registry runs) and the read-only inspector's (break-glass only: no policy
  grants it).
- Persistence (an RDB snapshot a second, and at shutdown): a restart must not
  forget that a session ended. ACL users are not in it (they live in memory;
  OpenBao makes new ones).

Run as a supervised child: ``python -m clawql_secrets.cluster.redis_registry
--data-dir D`` (``serve``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, WORKLOAD_ISSUER_URL, StackSettings
from clawql_secrets.errors import ClawQLError, ConfigError, OpenBaoError
from clawql_secrets.tlsca import LocalCA

# What OpenBao holds for the registry (``bootstrap`` makes the mount and the roles;
# the keeper, this process, the connection).
MOUNT = "clawql-registry"
CONNECTION = "registry"
GATEWAY_ROLE = "gateway"
INSPECTOR_ROLE = "inspector"
CREDS_PATH = f"{MOUNT}/creds/{GATEWAY_ROLE}"
ADMIN_USER = "clawql-bao-admin"
# The registry's keys: the gateway's ``registry.prefix`` is this or below it.
KEY_PREFIX = "clawql:gw"
CA_NAME = "ClawQL local registry-Redis CA"

# Every command the registry runs (``gateway/registry.py``), directly or inside its
# Lua scripts: Redis checks each ``redis.call`` of a script against the caller's ACL.
REGISTRY_COMMANDS = (
    "ping",
    "evalsha",
    "script|load",
    "time",
    "hget",
    "hset",
    "hgetall",
    "expireat",
    "expiretime",
    "pexpire",
    "sadd",
    "srem",
    "smembers",
    "scard",
    "srandmember",
    "zadd",
    "zrem",
    "zcard",
    "zrangebyscore",
    "zremrangebyscore",
    "zremrangebyrank",
)
# Break-glass reading of the registry (root only): SCAN names every key, so only here.
INSPECTOR_COMMANDS = (
    "ping",
    "scan",
    "type",
    "ttl",
    "pttl",
    "get",
    "hgetall",
    "smembers",
    "zrange",
    "lrange",
)
ADMIN_COMMANDS = ("acl|setuser", "acl|getuser", "acl|deluser")
# Role -> (commands, default TTL, max TTL). The gateway's credential is re-issued at
# half its life (``gateway/registry_creds.py``), so a leaked one is worth minutes.
ROLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    GATEWAY_ROLE: (REGISTRY_COMMANDS, "10m", "15m"),
    INSPECTOR_ROLE: (INSPECTOR_COMMANDS, "5m", "15m"),
}
# Snapshots, not an append-only file: Redis 7.0 replays a script's effects from the AOF
# as MULTI/EXEC and refuses them at load when ``default`` is off (measured: every
# registry write lost at restart). A snapshot a second while anything changes, and one
# at every shutdown.
_PERSISTENCE = ("appendonly no", "save 1 1", "dbfilename registry.rdb")


def acl_rules(commands: tuple[str, ...], keys: str = f"{KEY_PREFIX}:*") -> list[str]:
    """``ACL SETUSER`` arguments, one per item (the plugin's ``creation_statements``)."""
    return ["resetkeys", f"~{keys}", "resetchannels", "-@all", *(f"+{c}" for c in commands)]


def role_bodies() -> dict[str, dict[str, Any]]:
    """``<MOUNT>/roles/<role>`` bodies, written once by ``bootstrap``."""
    return {
        role: {
            "db_name": CONNECTION,
            "creation_statements": acl_rules(commands),
            "default_ttl": ttl,
            "max_ttl": max_ttl,
        }
        for role, (commands, ttl, max_ttl) in ROLES.items()
    }


# -- files (``prepare``) -----------------------------------------------------------------
def config_path(settings: StackSettings) -> Path:
    return settings.registry_dir / "redis.conf"


def marker_path(settings: StackSettings) -> Path:
    """Written once OpenBao holds (and has rotated) this start's admin password."""
    return settings.run_dir / "registry.keyed"


def ca_file(settings: StackSettings) -> Path:
    return settings.registry_ca_dir / "ca.pem"


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ConfigError(
            "redis-server is not installed: the local stack runs its own Redis for the "
            "gateway's session registry",
            fix="run scripts/bootstrap.sh (or install the redis-server package)",
        )
    return path


def render_config(settings: StackSettings) -> str:
    """``redis.conf``: nothing secret in it. The TLS files and the admin user come on
    stdin at each start (``start``)."""
    s = settings
    lines = [
        "# The gateway's session registry (clawql_secrets/cluster/redis_registry.py, ADR 0011).",
        "# No password here: the admin user is handed to redis-server on stdin at each start.",
        f"bind {s.host}",
        "protected-mode yes",
        "port 0",
        f"tls-port {s.registry_port}",
        "tls-auth-clients no",
        'tls-protocols "TLSv1.2 TLSv1.3"',
        "daemonize no",
        'logfile ""',
        f"dir {s.registry_dir / 'data'}",
        *_PERSISTENCE,
        "acl-pubsub-default resetchannels",
        "enable-debug-command no",
        "enable-module-command no",
        "user default off resetkeys resetchannels -@all",
    ]
    return "\n".join(lines) + "\n"


def prepare(settings: StackSettings) -> LocalCA:
    """The registry's CA and configuration. Idempotent."""
    redis_server()
    s = settings
    ca = LocalCA.load_or_create(s.registry_ca_dir, CA_NAME)
    (s.registry_dir / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path(s).write_text(render_config(s))
    return ca


def admin_directive(password: str) -> str:
    """The admin user, its password as a SHA-256 hash (Redis's ``#<hash>`` form)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = " ".join(f"+{c}" for c in ADMIN_COMMANDS)
    return f"user {ADMIN_USER} on #{digest} resetkeys resetchannels -@all {rules}\n"


def _death_signal() -> Callable[[], None] | None:
    """For redis-server, before exec: SIGTERM when its parent thread dies (even by
    SIGKILL), so a killed keeper leaves no Redis holding the port. ``prctl`` is looked
    up here, before the fork: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sig = int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return die_with_parent


def _memory_fd(data: bytes, name: str) -> int:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        raise ConfigError("keeping the registry's TLS key off disk needs Linux memfd")
    fd: int = memfd_create(name)
    os.write(fd, data)
    return fd


def start(
    settings: StackSettings, password: str, *, stdout: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """redis-server with ``redis.conf`` plus, on stdin, this start's TLS certificate and
    key (anonymous memory files: a new key per start, never on disk) and the admin
    user (a hash of ``password``). SIGTERM reaches it when the calling thread dies: call
    it from a thread that lives as long as Redis should."""
    s = settings
    ca = LocalCA.load_or_create(s.registry_ca_dir, CA_NAME)
    chain, key = ca.issue_pem("registry", dns=("localhost",), ips=(s.host,), server=True)
    cert_fd, key_fd = _memory_fd(chain, "registry-cert"), _memory_fd(key, "registry-key")
    try:
        proc = subprocess.Popen(
            [redis_server(), str(config_path(s)), "-"],
            cwd=s.registry_dir,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            pass_fds=(cert_fd, key_fd),
            preexec_fn=_death_signal(),
        )
    finally:
        os.close(cert_fd)
        os.close(key_fd)
    if proc.stdin is None:  # pragma: no cover - stdin=PIPE
        raise ConfigError("redis-server took no stdin")
    proc.stdin.write(
        f"tls-cert-file /dev/fd/{cert_fd}\ntls-key-file /dev/fd/{key_fd}\n".encode()
        + admin_directive(password).encode()
    )
    proc.stdin.close()
    return proc


def keyed(settings: StackSettings, pid: int | None) -> bool:
    """Whether the registry child ``pid`` has handed its admin password to OpenBao."""
    if pid is None:
        return False
    try:
        data = json.loads(marker_path(settings).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("pid") == pid


# -- OpenBao --------------------------------------------------------------------------
def connection_body(settings: StackSettings, password: str) -> dict[str, str]:
    """``<MOUNT>/config/<CONNECTION>``. Strings throughout: the keeper's policy pins
    values, and OpenBao compares pinned parameters as strings (measured)."""
    return {
        "plugin_name": "redis-database-plugin",
        "host": settings.host,
        "port": str(settings.registry_port),
        "username": ADMIN_USER,
        "password": password,
        "tls": "true",
        "ca_cert": ca_file(settings).read_text(),
        "allowed_roles": ",".join(ROLES),
        "verify_connection": "true",
    }


def hand_over(client: OpenBaoClient, token: str, settings: StackSettings, password: str) -> None:
    """Give OpenBao this start's admin password, then have it rotated away."""
    client.write(f"{MOUNT}/config/{CONNECTION}", connection_body(settings, password), token=token)
    client.write(f"{MOUNT}/rotate-root/{CONNECTION}", {}, token=token)


# -- the supervised child --------------------------------------------------------------
def _log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} registry: {msg}", file=sys.stderr, flush=True)


class _Child:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.stopping = False
        self.proc: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def alive(self) -> bool:
        return not self.stopping and self.proc is not None and self.proc.poll() is None

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self.alive() and time.monotonic() < end:
            time.sleep(0.05)

    def start(self, password: str) -> None:
        self.proc = start(self.settings, password)

    def listening(self, timeout: float = 20.0) -> bool:
        """Until Redis completes a TLS handshake (a plain connect would make it log a
        failed TLS accept)."""
        s, deadline = self.settings, time.monotonic() + timeout
        ctx = ssl.create_default_context(cafile=str(ca_file(s)))
        while self.alive() and time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((s.host, s.registry_port), timeout=0.5) as sock,
                ctx.wrap_socket(sock, server_hostname=s.host) as tls,
            ):
                tls.do_handshake()
                return True
            self.sleep(0.05)
        return False

    def hand_over(self, password: str) -> bool:
        """Log in as the registry keeper until OpenBao takes the password (it waits for
        ``up`` to initialise the cluster on a first start). False if Redis died."""
        from clawql_secrets.cluster import bootstrap  # it imports this module
        from clawql_secrets.issuer import LocalIssuer

        s = self.settings
        issuer = LocalIssuer.load(s.issuer_dir, WORKLOAD_ISSUER_URL)
        delay, last = 0.25, ""
        addrs = [s.api_addr(n) for n in NODE_IDS]
        with OpenBaoClient(addrs, s.node_ca_dir / "ca.pem", retry_for=2) as client:
            while self.alive():
                stage = "login"
                try:
                    token = bootstrap.login(client, issuer, bootstrap.REGISTRY_KEEPER)
                    stage = "hand-over"
                    try:
                        hand_over(client, token, s, password)
                    finally:
                        with contextlib.suppress(ClawQLError):
                            client.request(
                                "POST", "auth/token/revoke-self", token=token, retry_for=2
                            )
                    return True
                except ClawQLError as exc:
                    # Type and status only: OpenBao's messages are not ours to print.
                    status = exc.status if isinstance(exc, OpenBaoError) else None
                    what = f"{stage} failed ({type(exc).__name__}, HTTP {status})"
                    if what != last:
                        _log(f"{what}; retrying until OpenBao takes the admin password")
                        last = what
                    if stage == "hand-over" and status == 400:
                        # OpenBao could not use the password (a half-done rotation):
                        # a new start of Redis brings a new one.
                        _log("OpenBao refused the admin password; restarting Redis")
                        return False
                self.sleep(delay)
                delay = min(delay * 1.5, 2.0)
        return False


def serve(settings: StackSettings) -> int:
    """Run redis-server with a fresh admin password, hand it to OpenBao, wait.

    Exits with Redis's status when Redis exits or on SIGTERM; with 75 when OpenBao
    would not take the password (the supervisor restarts this with a new one).
    """
    child = _Child(settings)
    signal.signal(signal.SIGTERM, child.on_signal)
    signal.signal(signal.SIGINT, child.on_signal)
    password = secrets.token_urlsafe(32)
    child.start(password)
    proc = child.proc
    if proc is None:
        return 1
    ok = child.listening() and child.hand_over(password)
    del password  # the only copy left is OpenBao's, rotated already
    if not ok:
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait()
        return rc if child.stopping else 75
    marker = marker_path(settings)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "redis_pid": proc.pid, "at": time.time()}))
    os.replace(tmp, marker)
    _log(f"OpenBao holds the admin password of redis-server {proc.pid}, rotated")
    try:
        return proc.wait()
    finally:
        if keyed(settings, os.getpid()):
            with contextlib.suppress(OSError):
                marker.unlink()


def main(argv: list[str] | None = None) -> int:
    from clawql_secrets.cluster.stack import load_settings

    p = argparse.ArgumentParser(prog="python -m clawql_secrets.cluster.redis_registry")
    p.add_argument("--data-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        return serve(load_settings(args.data_dir.resolve()))
    except ClawQLError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
