"""``secrets-writer`` on a live cluster: it writes agents' secrets and can do nothing else.

It stores a new version of ``secret/data/tenants/<t>/agents/<a>/<name>`` (as the
library and as ``clawql-secrets agent-secret put`` with the value on stdin), and
is refused reading any value back, listing, deleting, destroying, metadata,
every other KV path and ``sys/``. Values are random per run and never printed.
"""

from __future__ import annotations

import io
import json
import secrets
import ssl
import sys
from collections.abc import Iterator

import httpx
import pytest

from clawql_secrets import cli
from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.provision import agent_secrets
from clawql_secrets.provision.agent_secrets import AgentSecretRef

pytestmark = pytest.mark.cluster

REF = AgentSecretRef("acme", "bot-w", "github_token")


def _value() -> str:
    return "tok_" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def bao(live_stack: StackSettings) -> Iterator[tuple[OpenBaoClient, LocalIssuer]]:
    issuer = LocalIssuer.load(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=20) as client:
        yield client, issuer


def _current_version(client: OpenBaoClient, issuer: LocalIssuer, ref: AgentSecretRef) -> int:
    """From the metadata, as the provisioner (who may read metadata, never data)."""
    token = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
    meta = client.read(ref.path.replace("/data/", "/metadata/", 1), token=token)
    client.request("POST", "auth/token/revoke-self", token=token)
    return int(meta["data"]["current_version"])


def test_writer_stores_new_versions_it_cannot_read_back(
    live_stack: StackSettings, bao: tuple[OpenBaoClient, LocalIssuer]
) -> None:
    client, issuer = bao
    v1 = agent_secrets.put_on_stack(live_stack, REF, _value())
    v2 = agent_secrets.put_on_stack(live_stack, REF, _value())
    assert v2 == v1 + 1
    assert _current_version(client, issuer, REF) == v2
    token = agent_secrets.writer_login(client, issuer)
    try:
        with pytest.raises(OpenBaoError) as err:
            client.read(REF.path, token=token)
        assert err.value.status == 403
    finally:
        client.request("POST", "auth/token/revoke-self", token=token)


def test_a_stack_that_never_ran_apply_keeps_no_older_version(
    live_stack: StackSettings, bao: tuple[OpenBaoClient, LocalIssuer]
) -> None:
    """Bootstrap itself configures the KV mount: no ``provision apply`` runs here."""
    client, issuer = bao
    ref = AgentSecretRef("acme", "bot-r", "api_key")
    agent_secrets.put_on_stack(live_stack, ref, _value())
    assert agent_secrets.put_on_stack(live_stack, ref, _value()) == 2
    token = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
    try:
        assert client.read("secret/config", token=token)["data"]["max_versions"] == 1
        meta = client.read(ref.path.replace("/data/", "/metadata/", 1), token=token)["data"]
        assert (meta["oldest_version"], list(meta["versions"])) == (2, ["2"])
    finally:
        client.request("POST", "auth/token/revoke-self", token=token)


def test_the_provisioner_cannot_raise_a_keys_version_limit(
    bao: tuple[OpenBaoClient, LocalIssuer],
) -> None:
    """A key's own ``max_versions`` overrides the mount's upwards; the provisioner, which
    manages KV metadata, may not set it (and may still write other metadata)."""
    client, issuer = bao
    ref = AgentSecretRef("acme", "bot-m", "api_key")
    meta = ref.path.replace("/data/", "/metadata/", 1)
    token = bootstrap.login(client, issuer, bootstrap.PROVISIONER)
    try:
        with pytest.raises(OpenBaoError) as exc:
            client.write(meta, {"max_versions": 5}, token=token)
        assert exc.value.status == 403
        client.write(meta, {"custom_metadata": {"owner": "acme"}}, token=token)
        got = client.read(meta, token=token)["data"]
        assert (got["max_versions"], got["custom_metadata"]) == (0, {"owner": "acme"})
    finally:
        client.request("POST", "auth/token/revoke-self", token=token)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "secret/data/tenants/acme/agents/bot-w/github_token"),
        ("GET", "secret/data/tenants/acme/agents/bot-w/github_token?version=1"),
        ("GET", "secret/metadata/tenants/acme/agents/bot-w/github_token"),
        ("LIST", "secret/metadata/tenants/acme/agents/bot-w"),
        ("DELETE", "secret/data/tenants/acme/agents/bot-w/github_token"),
        ("DELETE", "secret/metadata/tenants/acme/agents/bot-w/github_token"),
        ("POST", "secret/delete/tenants/acme/agents/bot-w/github_token"),
        ("POST", "secret/destroy/tenants/acme/agents/bot-w/github_token"),
        ("POST", "secret/undelete/tenants/acme/agents/bot-w/github_token"),
        ("POST", "secret/metadata/tenants/acme/agents/bot-w/github_token"),
        ("POST", "secret/data/tenants/acme/agents/bot-w/deeper/path"),
        ("POST", "secret/data/tenants/acme/other/bot-w/github_token"),
        ("POST", "secret/data/tenants/acme/agents/bot-w"),
        ("POST", "secret/data/ops/static"),
        ("POST", "secret/data/clawql-change/applied/x"),
        ("POST", "secret/data/clawql-anomalies/x"),
        ("POST", "secret/config"),
        ("POST", "sys/policies/acl/agent-x"),
        ("POST", "sys/mounts/kv2"),
        ("GET", "sys/policies/acl/clawql-secrets-writer"),
        ("POST", "auth/workload/role/secrets-writer"),
    ],
)
def test_writer_can_do_nothing_else(
    bao: tuple[OpenBaoClient, LocalIssuer], method: str, path: str
) -> None:
    client, issuer = bao
    token = agent_secrets.writer_login(client, issuer)
    try:
        body = {"data": {"value": _value()}} if method == "POST" else None
        with pytest.raises(OpenBaoError) as err:
            client.request(method, path, body=body, token=token)
        assert err.value.status == 403, err.value
    finally:
        client.request("POST", "auth/token/revoke-self", token=token)


def test_cli_put_reads_stdin_and_never_prints_the_value(
    live_stack: StackSettings,
    bao: tuple[OpenBaoClient, LocalIssuer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, issuer = bao
    ref = AgentSecretRef("globex", "bot-c", "api_key", "token")
    value = _value()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(value.encode() + b"\n")))
    code = cli.main(
        ["agent-secret", "put", "--tenant", "globex", "--agent", "bot-c", "--name", "api_key",
         "--field", "token", "--data-dir", str(live_stack.data_dir)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "version 1 of secret/data/tenants/globex/agents/bot-c/api_key" in out
    assert value not in out + err
    assert _current_version(client, issuer, ref) == 1


def test_writer_cannot_patch_a_secret(
    live_stack: StackSettings, bao: tuple[OpenBaoClient, LocalIssuer]
) -> None:
    """A merge-patch would keep the other fields: it needs ``patch``, which it lacks."""
    client, issuer = bao
    token = agent_secrets.writer_login(client, issuer)
    ctx = ssl.create_default_context(cafile=str(live_stack.node_ca_dir / "ca.pem"))
    try:
        with httpx.Client(verify=ctx, trust_env=False, timeout=10) as raw:
            resp = raw.patch(
                f"{live_stack.api_addr(NODE_IDS[0])}/v1/{REF.path}",
                headers={
                    "X-Vault-Token": token,
                    "Content-Type": "application/merge-patch+json",
                },
                content=json.dumps({"data": {"other": _value()}}),
            )
        assert resp.status_code == 403, resp.text
    finally:
        client.request("POST", "auth/token/revoke-self", token=token)
