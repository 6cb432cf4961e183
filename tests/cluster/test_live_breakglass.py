"""Break-glass on a live cluster: HSM key rotation, key ceremony + restore into a new
token after the old one is destroyed, and root-token generation from recovery shares.

HSM operations run as the operator would run them: the CLI in its own process
(one PKCS#11 configuration per process), against the stack's bridge config.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest

from clawql_secrets.audit.key_transition import load_keyset
from clawql_secrets.audit.shipper import stored_ids
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.witness import localstack as witness_localstack

pytestmark = pytest.mark.cluster


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "clawql_secrets", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if ok and proc.returncode != 0:
        raise AssertionError(f"clawql-secrets {' '.join(args)} failed: {proc.stderr}")
    return proc


def operator_token(s: StackSettings) -> tuple[stack.OpenBaoClient, str]:
    issuer = LocalIssuer.load_or_create(s.issuer_dir, stack.ISSUER_URL)
    client = stack.client_for(s, retry_for=30)
    return client, bootstrap.operator_login(client, issuer)


def bridge_version(s: StackSettings) -> int:
    return int(stack.bridge_health(s)["key_version"])


def restart(s: StackSettings) -> None:
    stack.down(s)
    stack.up(s)
    st = stack.status(s)
    assert all(n["sealed"] is False and n["voter"] for n in st["nodes"].values()), st


def tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_rotation_new_version_used_and_cluster_unseals_after_restart(
    live_stack: StackSettings,
) -> None:
    before = bridge_version(live_stack)
    cli("hsm", "rotate", "--config", str(live_stack.bridge_config))
    # The running bridge picks the new version up without a restart.
    assert bridge_version(live_stack) == before + 1
    restart(live_stack)
    log = (live_stack.log_dir / "bridge.log").read_text()
    assert "encrypt by spiffe://clawql.local/openbao/" in log
    assert f"with clawql-unseal v{before + 1}" in log


def test_ceremony_destroy_token_restore_from_three_shares_cluster_unseals(
    live_stack: StackSettings, tmp_path: Path
) -> None:
    s = live_stack
    client, token = operator_token(s)
    with client:
        client.write("secret/data/ops/before-hsm-loss", {"data": {"v": 42}}, token=token)
    holders = [(s.holders_dir / f"holder-{i}.pub").read_text().strip() for i in range(1, 6)]
    out = tmp_path / "ceremony"
    args = [
        "hsm",
        "ceremony",
        "--config",
        str(s.bridge_config),
        "--threshold",
        "3",
        "--out",
        str(out),
    ]
    for h in holders:
        args += ["--holder", h]
    cli(*args)
    escrowed = bridge_version(s)
    old_keys = load_keyset(s.audit_dir / "verifier.txt")
    # Restart so the active node re-wraps its stored keys with the escrowed version
    # (OpenBao upgrades seal-wrapped keys when the key id changes).
    restart(s)

    # Each holder decrypts their own share with their own identity.
    plain = []
    for i in range(1, 6):
        p = tmp_path / f"share-{i}.json"
        cli(
            "hsm",
            "share-decrypt",
            "--identity",
            str(s.holders_dir / f"holder-{i}.key"),
            str(out / f"share-{i}.age"),
            "--out",
            str(p),
        )
        plain.append(p)

    # The HSM is lost.
    stack.down(s)
    shutil.rmtree(s.hsm_dir / "tokens")
    cli("hsm", "init-token", "--hsm-dir", str(s.hsm_dir))
    tokens = s.hsm_dir / "tokens"
    empty_token = tree_digest(tokens)

    # Two shares: refused, nothing written.
    two = cli(
        "hsm",
        "restore",
        "--config",
        str(s.bridge_config),
        "--manifest",
        str(out / "manifest.json"),
        "--share",
        str(plain[0]),
        "--share",
        str(plain[1]),
        ok=False,
    )
    assert two.returncode != 0 and "3" in two.stderr
    assert tree_digest(tokens) == empty_token

    # One tampered share among three: detected and named, nothing written.
    doc = json.loads(plain[2].read_text())
    tampered = tmp_path / "share-3-tampered.json"
    raw = bytearray(base64.b64decode(doc["share"]))
    raw[0] ^= 0x01  # one bit of the Shamir share
    doc["share"] = base64.b64encode(bytes(raw)).decode()
    tampered.write_text(json.dumps(doc))
    bad = cli(
        "hsm",
        "restore",
        "--config",
        str(s.bridge_config),
        "--manifest",
        str(out / "manifest.json"),
        "--share",
        str(plain[0]),
        "--share",
        str(plain[1]),
        "--share",
        str(tampered),
        ok=False,
    )
    assert bad.returncode != 0 and tampered.name in bad.stderr
    assert tree_digest(tokens) == empty_token

    # Three good shares: restored; the cluster unseals with the new token.
    cli(
        "hsm",
        "restore",
        "--config",
        str(s.bridge_config),
        "--manifest",
        str(out / "manifest.json"),
        "--share",
        str(plain[0]),
        "--share",
        str(plain[2]),
        "--share",
        str(plain[4]),
    )
    stack.up(s)
    st = stack.status(s)
    assert all(n["sealed"] is False for n in st["nodes"].values()), st
    assert st["bridge"]["key_version"] == escrowed
    client, token = operator_token(s)
    with client:
        got = client.read("secret/data/ops/before-hsm-loss", token=token)
        client.write("secret/data/ops/after-hsm-loss", {"data": {"v": 43}}, token=token)
    assert got["data"]["data"] == {"v": 42}

    # The audit trail survived too. The checkpoint key was in the lost token: the
    # shipper signs with a new one, which took over after the old key's last
    # checkpoint of every stream (a key transition, ADR 0012).
    stack.down(s)  # the shipper stops last: it drains every node's file and publishes
    keys = load_keyset(s.audit_dir / "verifier.txt")
    assert len(keys.epochs) == 2 and keys.epochs[0].key == old_keys.newest
    assert set(keys.epochs[1].after) == set(stack.NODE_IDS)
    # The witness (its own process and key) cosigned across the transition: the newest
    # checkpoint of every stream, signed by the new key, extends what it saw before.
    proc = cli(
        "audit",
        "verify",
        "--store",
        str(s.audit_dir / "store"),
        "--pubkey-file",
        str(s.audit_dir / "verifier.txt"),
        "--witness-key",
        str(witness_localstack.witness_key(s)),
        "--json",
    )
    result = json.loads(proc.stdout)
    assert result["ok"], result
    assert all(
        r["cosigned_by"] == {witness_localstack.WITNESS_NAME: ANY} for r in result["streams"]
    )
    store = LocalWormStore(s.audit_dir / "store")
    for report in result["streams"]:
        node = report["stream"]
        # every line of the node's audit files is in the log, once
        lines = sum(
            p.read_bytes().count(b"\n") for p in (s.node_dir(node) / "audit").glob("audit.log*")
        )
        ids = stored_ids(store, node, 0)
        assert report["entries"] == lines == len(ids), (node, report, lines)
        # and both keys signed part of it: entries before and after the loss
        assert 0 < keys.epochs[1].after[node] < report["latest_size"]
    stack.up(s)


def test_break_glass_root_token_used_once_then_revoked(
    live_stack: StackSettings, tmp_path: Path
) -> None:
    s = live_stack
    shares = []
    for i in (1, 3, 5):
        proc = cli(
            "break-glass",
            "decrypt-share",
            "--identity",
            str(s.holders_dir / f"holder-{i}.key"),
            str(s.recovery_dir / f"recovery-share-{i}.age"),
        )
        p = tmp_path / f"recovery-{i}.txt"
        p.write_text(proc.stdout)
        shares.append(p)
    share_args = [a for p in shares for a in ("--share", str(p))]
    # The one operation: read the auth mounts (root-only here).
    proc = cli(
        "break-glass", "root-token", "--data-dir", str(s.data_dir), *share_args, "GET", "sys/auth"
    )
    assert "workload/" in json.loads(proc.stdout)["data"]
    # Two shares: refused.
    few = cli(
        "break-glass",
        "root-token",
        "--data-dir",
        str(s.data_dir),
        *share_args[:4],
        "GET",
        "sys/auth",
        ok=False,
    )
    assert few.returncode == 1 and "3 required" in few.stderr
    # --print-token: a short-lived token, printed once; the root token itself is revoked.
    proc = cli(
        "break-glass",
        "root-token",
        "--data-dir",
        str(s.data_dir),
        *share_args,
        "--print-token",
        "2m",
    )
    printed = json.loads(proc.stdout)["token"]
    with stack.client_for(s, retry_for=10) as client:
        info = client.read("auth/token/lookup-self", token=printed)["data"]
        assert 0 < info["ttl"] <= 120 and info["policies"] == ["root"]
        client.request("POST", "auth/token/revoke-self", token=printed)
        with pytest.raises(OpenBaoError) as err:
            client.read("auth/token/lookup-self", token=printed)
        assert err.value.status == 403
