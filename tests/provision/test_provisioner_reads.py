"""The provisioner's reads against an in-memory OpenBao (no cluster).

A cluster initialised before the provisioner's policy named ``secret/config``
refuses it that path: planning must stop with a fix, not report "no changes"
while rotated secrets keep their older versions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ConfigError
from clawql_secrets.provision import loader
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.render import KV_MOUNT
from clawql_secrets.tlsca import LocalCA
from tests.provision.conftest import valid_yaml

KV_ENTRY = {"type": "kv", "options": {"version": "2"}}


def _provisioner(
    tmp_path: Path, mounts: dict[str, object], config: Callable[[], httpx.Response]
) -> tuple[Provisioner, list[str]]:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        path = req.url.path.removeprefix("/v1/")
        seen.append(f"{req.method} {path}")
        if path == "sys/auth":
            return httpx.Response(200, json={"data": {}})
        if path == "sys/mounts":
            return httpx.Response(200, json={"data": mounts})
        if path == f"{KV_MOUNT}/config":
            return config()
        return httpx.Response(404, json={"errors": []})

    ca = LocalCA.load_or_create(tmp_path / "ca", "test").cert_path
    client = OpenBaoClient(["https://a:1"], ca, transport=httpx.MockTransport(handler))
    return Provisioner(client, "provisioner-token-stand-in"), seen


def test_kv_config_refused_to_the_provisioner_stops_the_plan_with_a_fix(tmp_path: Path) -> None:
    def refused() -> httpx.Response:
        return httpx.Response(403, json={"errors": ["1 error occurred:\n\t* permission denied\n"]})

    prov, _ = _provisioner(tmp_path, {f"{KV_MOUNT}/": KV_ENTRY}, refused)
    with pytest.raises(ConfigError) as err:
        prov.plan(loader.parse(valid_yaml()))
    text = err.value.diagnostics()
    assert f"may not read {KV_MOUNT}/config" in text
    assert "clawql-provisioner" in text and "break-glass root-token" in text


def test_kv_config_is_not_read_before_the_kv_mount_exists(tmp_path: Path) -> None:
    def unexpected() -> httpx.Response:
        raise AssertionError("secret/config read with no KV mount")

    prov, seen = _provisioner(tmp_path, {}, unexpected)
    _, plan = prov.plan(loader.parse(valid_yaml()))
    created = [(c.kind, c.path) for c in plan.changes if c.action == "create"]
    assert ("kv-config", f"{KV_MOUNT}/config") in created
    assert f"GET {KV_MOUNT}/config" not in seen


def test_kv_config_keeping_older_versions_is_planned_as_an_update(tmp_path: Path) -> None:
    def fresh_mount() -> httpx.Response:
        # What OpenBao 2.7.2 answers on a KV v2 mount nobody configured.
        data = {
            "cas_required": False,
            "delete_version_after": "0s",
            "max_versions": 0,
            "metadata_cas_required": False,
        }
        return httpx.Response(200, json={"data": data})

    prov, _ = _provisioner(tmp_path, {f"{KV_MOUNT}/": KV_ENTRY}, fresh_mount)
    _, plan = prov.plan(loader.parse(valid_yaml()))
    (change,) = [c for c in plan.changes if c.kind == "kv-config"]
    assert change.action == "update"
    assert [(f.name, f.live, f.desired) for f in change.fields] == [("max_versions", 0, 1)]
