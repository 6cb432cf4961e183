"""Helpers for the gateway's live tests: replicas, a recording transport, an agent client.

Replica A runs in this process (uvicorn in a thread) so that a recording
httpx transport under its OpenBao client can collect every credential OpenBao
hands it — the canaries. Replica B is a separate ``clawql-secrets gateway
serve`` process sharing the Redis registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
import uvicorn
import yaml

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.registry import RedisRegistry
from clawql_secrets.gateway.tools import load_tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Canaries:
    """Every credential seen: OpenBao tokens (responses and request headers), DB passwords."""

    values: set[str] = field(default_factory=set)
    db_users: dict[str, str] = field(default_factory=dict)
    identity_tokens: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, value: object) -> None:
        if isinstance(value, str) and len(value) >= 8:
            with self.lock:
                self.values.add(value)


class RecordingTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, canaries: Canaries) -> None:
        self._inner = inner
        self._c = canaries

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._c.add(request.headers.get("x-vault-token"))
        resp = self._inner.handle_request(request)
        resp.read()
        with contextlib.suppress(ValueError):
            body = json.loads(resp.content or b"null")
            if isinstance(body, dict):
                auth = body.get("auth") or {}
                self._c.add(auth.get("client_token"))
                self._c.add(auth.get("accessor"))
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

    def close(self) -> None:
        self._inner.close()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
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
        self.gateway.close()
        self.gateway.bao.close()
        reg = self.gateway.registry
        if isinstance(reg, RedisRegistry):
            reg.close()


def start_in_process(cfg_dict: dict[str, Any], canaries: Canaries) -> InProcessReplica:
    cfg = GatewayConfig.model_validate(cfg_dict)
    inner = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cfg.openbao.ca_file)))
    bao = OpenBaoClient(
        cfg.openbao.addrs,
        cfg.openbao.ca_file,
        retry_for=cfg.openbao.retry_for,
        transport=RecordingTransport(inner, canaries),
    )
    gw = Gateway(
        cfg,
        bao=bao,
        registry=RedisRegistry(cfg.registry.redis_url, cfg.registry.prefix),
        tools=load_tools(cfg),
    )
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
