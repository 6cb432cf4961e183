"""Helpers for the gateway's live tests: replicas, a recording transport, an agent client.

OpenBao is configured as ``up`` configures it (``tests.shipped``: the example
desired state applied by the provisioner, its policies approved four-eyes), and
the gateway's configuration is the one ``up`` derives from that state
(``config_for`` adds only the knobs a test turns: port, sweep interval, SQL
timeout, an admin identity).

Replica A runs in this process (uvicorn in a thread) so that a recording
httpx transport under its OpenBao client can collect every credential it sends
or receives — the canaries: OpenBao tokens (per-call batch tokens and session
anchor tokens), accessors, the gateway's exchange assertions, database
passwords, private keys, identity tokens, and its own registry Redis users'
passwords (issued to it through that same client). Replica B is a separate
``clawql-secrets gateway serve`` process sharing the Redis registry.

Every replica reaches the stack's registry Redis as ``up`` configures it: TLS
only, as a Redis user OpenBao issues to that replica (ADR 0011). Tests read the
registry with a credential OpenBao issues too: the gateway's role
(``registry_reader``), or the break-glass inspector's (``redis_text``, with a
root token from the dev holders' recovery shares).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import uvicorn
import yaml
from psycopg import sql as pgsql

from clawql_secrets import holders
from clawql_secrets.cluster import bootstrap, breakglass, redis_registry, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.gateway import registry_creds
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import RedisRegistry
from clawql_secrets.gateway.tools import load_tools
from clawql_secrets.issuer import LocalIssuer
from tests.shipped import Shipped

ADMIN_SUBJECT = "clawql-admin"
ADMIN_AUDIENCE = "clawql-gateway-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Canaries:
    """Every credential seen: OpenBao tokens (responses and request headers), accessors,
    exchange assertions and JWTs sent to log in, DB passwords, keys, identity tokens."""

    values: set[str] = field(default_factory=set)
    db_users: dict[str, str] = field(default_factory=dict)
    identity_tokens: list[str] = field(default_factory=list)
    # (login role, assertion) of every exchange login, in order; the anchor tokens.
    assertions: list[tuple[str, str]] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)
    # Anchor token accessors: the registry keeps them by design (ADR 0010), so they
    # are searched for everywhere but there.
    accessors: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, value: object) -> None:
        if isinstance(value, str) and len(value) >= 8:
            with self.lock:
                self.values.add(value)

    def found_in(self, text: str, *, accessors: bool = True) -> list[str]:
        """The canaries in ``text``, each shortened to a harmless prefix."""
        with self.lock:
            values = self.values if accessors else self.values - self.accessors
            return [c[:4] + "…" for c in values if c in text]


class RecordingTransport(httpx.BaseTransport):
    def __init__(
        self, inner: httpx.BaseTransport, canaries: Canaries, exchange_mount: str = "agents"
    ) -> None:
        self._inner = inner
        self._c = canaries
        self._login_path = f"/v1/auth/{exchange_mount}/login"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._c.add(request.headers.get("x-vault-token"))
        role = self._sent_login(request)
        resp = self._inner.handle_request(request)
        resp.read()
        with contextlib.suppress(ValueError):
            body = json.loads(resp.content or b"null")
            if isinstance(body, dict):
                auth = body.get("auth") or {}
                token, accessor = auth.get("client_token"), auth.get("accessor")
                self._c.add(token)
                self._c.add(accessor)
                anchor = role is not None and role.endswith(".session")
                if anchor and isinstance(token, str) and isinstance(accessor, str):
                    with self._c.lock:
                        self._c.anchors.append(token)
                        self._c.accessors.add(accessor)
                data = body.get("data") or {}
                if isinstance(data, dict) and isinstance(data.get("private_key"), str):
                    key = data["private_key"]
                    self._c.add(key)
                    for line in key.splitlines():
                        if not line.startswith("-----"):
                            self._c.add(line)
                if isinstance(data, dict) and isinstance(data.get("token"), str):
                    self._c.add(data["token"])  # identity (OIDC) tokens
                    with self._c.lock:
                        self._c.identity_tokens.append(data["token"])
                if isinstance(data, dict) and "password" in data:
                    self._c.add(data["password"])
                    with self._c.lock:
                        self._c.db_users[str(data.get("username"))] = str(data["password"])
        return resp

    def _sent_login(self, request: httpx.Request) -> str | None:
        """A login's JWT (the exchange assertion, or the gateway's workload JWT) joins the
        canaries; returns the role of an exchange login."""
        if not request.url.path.endswith("/login"):
            return None
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        jwt, role = body.get("jwt"), str(body.get("role", ""))
        self._c.add(jwt)
        if request.url.path != self._login_path or not isinstance(jwt, str):
            return None
        with self._c.lock:
            self._c.assertions.append((role, jwt))
        return role

    def close(self) -> None:
        self._inner.close()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def config_for(sh: Shipped, port: int, **update: Any) -> GatewayConfig:
    """The gateway configuration ``up`` writes for ``sh``'s state, served on ``port``, with
    the knobs the live tests turn: a fast sweeper, a 300 ms statement timeout (a
    ``pg_sleep`` fails fast) and the stack's workload issuer as admin identity (for
    ``POST /v1/sessions/{sid}/revoke``). ``update`` replaces top-level sections."""
    s = sh.settings
    raw = sh.gateway_config(port).model_dump(mode="json")
    raw["sweep_interval"] = 0.3
    raw["sql"]["statement_timeout_ms"] = 300
    raw["admin"] = {
        "jwks_file": str(s.issuer_dir / "jwks.json"),
        "issuer": stack.ISSUER_URL,
        "audience": ADMIN_AUDIENCE,
        "subjects": [ADMIN_SUBJECT],
    }
    raw.update(update)
    return GatewayConfig.model_validate(raw)


def write_config(path: Path, cfg: GatewayConfig | dict[str, Any]) -> Path:
    raw = cfg.model_dump(mode="json") if isinstance(cfg, GatewayConfig) else cfg
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class InProcessReplica:
    url: str
    gateway: Gateway
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.gateway.close()  # its registry too: this replica's Redis users are revoked
        self.gateway.bao.close()


def recording_client(cfg: GatewayConfig, canaries: Canaries) -> OpenBaoClient:
    """An OpenBao client as the gateway builds one, whose traffic feeds ``canaries``."""
    inner = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cfg.openbao.ca_file)))
    return OpenBaoClient(
        cfg.openbao.addrs,
        cfg.openbao.ca_file,
        retry_for=cfg.openbao.retry_for,
        transport=RecordingTransport(inner, canaries, cfg.sessions.mount),
    )


def registry_for(cfg: GatewayConfig, bao: OpenBaoClient) -> RedisRegistry:
    """The registry as a replica of ``cfg`` reaches it (``server.build``): its own Redis
    user, issued through ``bao`` with the gateway's identity, kept fresh."""
    return RedisRegistry(
        registry_creds.connect(cfg.registry, bao, cfg.identity), cfg.registry.prefix
    )


@contextlib.contextmanager
def registry_reader(cfg: GatewayConfig) -> Iterator[RedisRegistry]:
    """A registry client for a test that reads what the gateway wrote (its own user, the
    gateway's role; revoked at the end)."""
    with OpenBaoClient(cfg.openbao.addrs, cfg.openbao.ca_file, retry_for=20) as bao:
        reg = registry_for(cfg, bao)
        try:
            yield reg
        finally:
            reg.close()


def start_in_process(cfg: GatewayConfig | dict[str, Any], canaries: Canaries) -> InProcessReplica:
    if not isinstance(cfg, GatewayConfig):
        cfg = GatewayConfig.model_validate(cfg)
    bao = recording_client(cfg, canaries)
    gw = Gateway(cfg, bao=bao, registry=registry_for(cfg, bao), tools=load_tools(cfg))
    server = uvicorn.Server(
        uvicorn.Config(build_app(gw), host=cfg.host, port=cfg.port, log_level="info", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{cfg.host}:{cfg.port}"
    wait_ready(url)
    return InProcessReplica(url, gw, server, thread)


@dataclass
class ProcessReplica:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_process(config_path: Path, port: int, log_path: Path) -> ProcessReplica:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawql_secrets", "gateway", "serve", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    rep = ProcessReplica(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(rep.url, proc=proc)
    except RuntimeError as exc:
        rep.stop()
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{exc}; the end of its log:\n" + "\n".join(tail)) from None
    except BaseException:
        rep.stop()
        raise
    return rep


def wait_ready(
    url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {url} not ready after {timeout}s")


class Agent:
    """An HTTP client that keeps every response body (for the canary search)."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=30)
        self.bodies: list[str] = []

    def call(self, base: str, jwt: str, tool: str, args: dict[str, Any]) -> httpx.Response:
        return self._keep(
            self.http.post(
                f"{base}/v1/tools/{tool}", json=args, headers={"Authorization": f"Bearer {jwt}"}
            )
        )

    def send(self, method: str, url: str, jwt: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {jwt}"} if jwt else {}
        return self._keep(self.http.request(method, url, headers=headers))

    def _keep(self, resp: httpx.Response) -> httpx.Response:
        self.bodies.append(resp.text)
        return resp

    def close(self) -> None:
        self.http.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Seconds until ``predicate()`` held; raises after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def claims(jwt: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the test made it)."""
    seg = jwt.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    return value


def sid(jwt: str) -> str:
    return str(claims(jwt)["sid"])


def _superuser() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)


def role_exists(name: str) -> bool:
    with _superuser() as c:
        return c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is not None


def backends_of(name: str) -> int:
    with _superuser() as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [name]
        ).fetchone()
        return int(row[0]) if row else 0


def seed_items(sh: Shipped, schemas: tuple[str, ...] = ("acme", "globex")) -> None:
    """Test data in the run's own database: ``<schema>.items``, 50 rows named after the
    schema, owned by the engine's admin like the seeded tables. Made before any
    session, so the example's grants (``ON ALL TABLES IN SCHEMA``, at user creation)
    cover it."""
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname=sh.pg_database, autocommit=True
    ) as c:
        for schema in schemas:
            table = pgsql.Identifier(schema, "items")
            c.execute(
                pgsql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, name text)").format(
                    table
                )
            )
            c.execute(
                pgsql.SQL(
                    "INSERT INTO {} SELECT g, {} || g FROM generate_series(1, 50) g "
                    "ON CONFLICT DO NOTHING"
                ).format(table, pgsql.Literal(f"{schema}-row-"))
            )
            # The engine's admin grants on it at user creation: it owns the schema's tables.
            c.execute(
                pgsql.SQL("ALTER TABLE {} OWNER TO {}").format(table, pgsql.Identifier(sh.admin))
            )


def audit_text(settings: StackSettings) -> str:
    """Every node's OpenBao audit file."""
    parts = []
    for node in NODE_IDS:
        with contextlib.suppress(FileNotFoundError):
            parts.append(settings.audit_log(node).read_text(errors="replace"))
    return "\n".join(parts)


def root_token(s: StackSettings, client: OpenBaoClient) -> str:
    """Break-glass: a quorum of the dev holders decrypt their recovery shares."""
    shares = []
    for i in range(1, s.recovery_threshold + 1):
        ident = holders.load_identity(s.holders_dir / f"holder-{i}.key")
        blob = (s.recovery_dir / f"recovery-share-{i}.age").read_bytes()
        shares.append(base64.b64encode(holders.decrypt_with(ident, blob, f"share {i}")).decode())
    issuer = LocalIssuer.load(s.issuer_dir, stack.ISSUER_URL)
    bg = bootstrap.login(client, issuer, bootstrap.BREAKGLASS)
    try:
        return breakglass.generate_root(client, shares, bg)
    finally:
        client.request("POST", "auth/token/revoke-self", token=bg, retry_for=10)


def registry_client(
    s: StackSettings, username: str | None = None, password: str | None = None
) -> redis.Redis:
    """A client of the stack's registry Redis over TLS, verified with its CA."""
    return redis.Redis(
        host=s.host,
        port=s.registry_port,
        username=username,
        password=password,
        ssl=True,
        ssl_ca_certs=str(redis_registry.ca_file(s)),
        decode_responses=True,
        socket_timeout=5,
        protocol=2,
        driver_info=None,
    )


@contextlib.contextmanager
def registry_inspector(s: StackSettings) -> Iterator[redis.Redis]:
    """The registry read as an operator in an incident would: a break-glass root token
    reads the read-only inspector role's credential (no policy grants it); the lease
    and the root token are revoked at the end."""
    with stack.client_for(s, retry_for=20) as bao:
        root = root_token(s, bao)
        try:
            resp = bao.read(
                f"{redis_registry.MOUNT}/creds/{redis_registry.INSPECTOR_ROLE}", token=root
            )
            r = registry_client(s, resp["data"]["username"], resp["data"]["password"])
            try:
                yield r
            finally:
                r.close()
                bao.write("sys/leases/revoke", {"lease_id": resp["lease_id"]}, token=root)
        finally:
            bao.request("POST", "auth/token/revoke-self", token=root, retry_for=10)


def redis_text(s: StackSettings, prefix: str) -> str:
    """Every key and value of the registry under ``prefix``, whatever its type."""
    out: list[str] = []
    with registry_inspector(s) as r:
        for key in r.scan_iter(f"{prefix}:*"):
            kind = r.type(key)
            if kind == "hash":
                value: object = r.hgetall(key)
            elif kind == "set":
                value = r.smembers(key)
            elif kind == "zset":
                value = r.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = r.lrange(key, 0, -1)
            else:
                value = r.get(key)
            out.append(f"{key} {value}")
    return "\n".join(out)


def registry_prefix(name: str) -> str:
    """A test's own namespace in the stack's registry (within the role's ``clawql:gw:*``)."""
    return f"{redis_registry.KEY_PREFIX}:{name}{secrets.token_hex(3)}"


@contextlib.contextmanager
def captured_logs() -> Iterator[LogCapture]:
    cap = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    try:
        yield cap
    finally:
        root.removeHandler(cap)
        root.setLevel(old)
