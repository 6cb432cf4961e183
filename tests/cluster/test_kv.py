"""Configuring a just-enabled KV v2 mount, against an in-memory transport."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from clawql_secrets.cluster import kv
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.kv import KV_MAX_VERSIONS, KV_MOUNT
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.tlsca import LocalCA

UPGRADING = {
    "errors": [
        "Upgrading from non-versioned to versioned data. This backend will be "
        "unavailable for a brief period and will resume service shortly."
    ]
}


def _client(tmp_path: Path, answers: list[httpx.Response], seen: list[str]) -> OpenBaoClient:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(f"{req.method} {req.url.path} {req.content.decode()}")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    ca = LocalCA.load_or_create(tmp_path / "ca", "test").cert_path
    return OpenBaoClient(["https://a:1"], ca, transport=httpx.MockTransport(handler))


def test_kv_config_write_waits_out_the_new_mount_upgrade(tmp_path: Path) -> None:
    seen: list[str] = []
    answers = [httpx.Response(400, json=UPGRADING)] * 2 + [httpx.Response(204)]
    with _client(tmp_path, answers, seen) as client:
        kv.write_config(client, "t", {"max_versions": KV_MAX_VERSIONS})
    assert seen == [f'POST /v1/{KV_MOUNT}/config {{"max_versions":1}}'] * 3


def test_kv_config_write_gives_up_after_the_wait(tmp_path: Path) -> None:
    seen: list[str] = []
    with (
        _client(tmp_path, [httpx.Response(400, json=UPGRADING)], seen) as client,
        pytest.raises(OpenBaoError) as err,
    ):
        kv.write_config(client, "t", {"max_versions": 1}, wait=0.5)
    assert err.value.status == 400 and len(seen) >= 2


def test_kv_config_write_does_not_retry_a_refusal(tmp_path: Path) -> None:
    seen: list[str] = []
    with (
        _client(
            tmp_path, [httpx.Response(403, json={"errors": ["permission denied"]})], seen
        ) as client,
        pytest.raises(OpenBaoError) as err,
    ):
        kv.write_config(client, "t", {"max_versions": 1})
    assert err.value.status == 403 and len(seen) == 1


def test_kv_config_write_does_not_retry_another_bad_request(tmp_path: Path) -> None:
    seen: list[str] = []
    with (
        _client(
            tmp_path, [httpx.Response(400, json={"errors": ["bad max_versions"]})], seen
        ) as client,
        pytest.raises(OpenBaoError) as err,
    ):
        kv.write_config(client, "t", {"max_versions": 1})
    assert err.value.status == 400 and len(seen) == 1
