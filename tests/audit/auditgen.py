"""OpenBao-shaped audit lines for shipper and query tests, and an audit file writer.

Entries follow OpenBao 2.7's file device: HMAC'd tokens, clear path,
operation, entity id, ``jwt-<sub>`` display name, auth metadata (tenant,
role), ``policy_results.allowed`` and ``permission denied`` errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from clawql_secrets.audit.tail import entry_id


def _hmac(seed: str) -> str:
    return "hmac-sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def pair(
    i: int,
    *,
    agent: str = "agent-1",
    tenant: str = "acme",
    path: str | None = None,
    allowed: bool = True,
    minute: int = 0,
    note: str | None = None,
    kv_value: str | None = None,
) -> list[dict[str, Any]]:
    """A request and its response for one API call."""
    rid = str(uuid.UUID(int=i + 1))
    entity = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{tenant}/{agent}"))
    path = path or f"secret/data/tenants/{tenant}/agents/{agent}/apikey"
    auth = {
        "client_token": _hmac(f"tok{i}"),
        "accessor": _hmac(f"acc{i}"),
        "display_name": f"jwt-{agent}",
        "policies": ["agent-tmpl", "default"],
        "policy_results": {"allowed": allowed},
        "metadata": {"agent_role": "worker", "role": "agent-batch", "tenant": tenant},
        "entity_id": entity,
        "token_type": "batch",
        "token_ttl": 300,
    }
    request: dict[str, Any] = {
        "id": rid,
        "client_id": entity,
        "operation": "read",
        "mount_point": "secret/",
        "mount_type": "kv",
        "client_token": _hmac(f"tok{i}"),
        "namespace": {"id": "root"},
        "path": path,
        "remote_address": "127.0.0.1",
        "remote_port": 40000 + i % 20000,
    }
    if note is not None:
        request["data"] = {"note": note}
    t = f"2026-11-28T19:{minute:02d}:{i % 60:02d}.{i:09d}Z"
    req = {"time": t, "type": "request", "auth": auth, "request": request}
    resp: dict[str, Any] = {"time": t, "type": "response", "auth": auth, "request": request}
    if allowed:
        resp["response"] = {
            "mount_type": "kv",
            "data": {"data": {"apikey": kv_value or _hmac(f"v{i}")}, "metadata": {"version": 1}},
        }
    else:
        req["error"] = resp["error"] = "1 error occurred:\n\t* permission denied\n\n"
    return [req, resp]


def line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


class AuditFile:
    """Appends lines to an audit file as OpenBao does (whole lines, fsync'd)."""

    def __init__(self, path: Path, stream: str) -> None:
        self.path = path
        self.stream = stream
        self.ids: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def write(self, entries: list[dict[str, Any]]) -> None:
        data = [line(e) for e in entries]
        with open(self.path, "ab") as f:
            for d in data:
                f.write(d + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.ids.extend(entry_id(self.stream, d) for d in data)

    def write_calls(self, start: int, count: int, **kw: Any) -> None:
        entries: list[dict[str, Any]] = []
        for i in range(start, start + count):
            entries.extend(pair(i, **kw))
        self.write(entries)
