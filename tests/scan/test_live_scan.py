"""The scanner on the project's own local stack and generated deployment files, and on live KV.

One live stack for the module (~16 s to start): the data directory and the
``cluster render-k8s`` output hold nothing beyond the named bootstrap trust,
all correctly protected; a static secret planted under ``secret/ops/`` is
found by ``--openbao``, an allow-listed one is not; no output holds a value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clawql_secrets.cluster import bootstrap, manifests, stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.scan import bootstrap as trust
from tests.scan.conftest import RunScan, leaks
from tests.scan.corpus import ALNUM, rand

pytestmark = pytest.mark.cluster

EXPECTED_BOOTSTRAP = {
    "hsm_pin": 1,
    "hsm_pin_verifier": 1,
    "node_tls_key": 6,
    "ca_key": 4,  # openbao-ca, seal-client-ca, demo-target-ca, registry-ca (ADR 0011)
    "bridge_tls_key": 1,
    "issuer_key": 1,
    "session_issuer_key": 1,
    "gateway_exchange_key": 1,
    "witness_key": 1,  # the audit witness's own key (ADR 0014)
    "holder_identity": 5,
}


def test_stack_and_rendered_manifests_hold_only_protected_bootstrap_trust(
    live_stack: StackSettings, run_scan: RunScan, tmp_path: Path
) -> None:
    out_dir = tmp_path / "k8s"
    written = manifests.write(manifests.K8sSpec(), out_dir)
    assert {p.suffix for p in written} == {".yaml", ".hcl"}
    sarif_file = tmp_path / "scan.sarif"
    code, out = run_scan(
        str(live_stack.data_dir), str(out_dir), "--json", "--sarif", str(sarif_file)
    )
    doc = json.loads(out)
    secrets = [f for f in doc["findings"] if f["category"] != "bootstrap"]
    assert secrets == []
    boot = [f for f in doc["findings"] if f["category"] == "bootstrap"]
    assert [f for f in boot if f["problems"]] == []
    counts: dict[str, int] = {}
    for f in boot:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    assert {k: v for k, v in counts.items() if k != "hsm_token_object"} == EXPECTED_BOOTSTRAP
    assert counts.get("hsm_token_object", 0) >= 1
    assert {f["kind"] for f in boot} <= {item.kind for item in trust.CATALOG}
    assert [s for s in doc["skipped"] if s["incomplete"]] == []
    assert code == 0
    # The manifests themselves were scanned (and are clean).
    assert doc["scanned"] > 20
    sarif = json.loads(sarif_file.read_text())
    assert all(r["level"] == "none" for r in sarif["runs"][0]["results"])


def test_loosened_bootstrap_file_fails_then_passes_again(
    live_stack: StackSettings, run_scan: RunScan
) -> None:
    pin = live_stack.hsm_dir / "user.pin"
    mode = pin.stat().st_mode & 0o777
    pin.chmod(0o644)
    try:
        code, out = run_scan(str(live_stack.hsm_dir), "--json")
    finally:
        pin.chmod(mode)
    loose = [f for f in json.loads(out)["findings"] if f["problems"]]
    assert code == 1
    assert [f["kind"] for f in loose] == ["hsm_pin"]
    code, _ = run_scan(str(live_stack.hsm_dir), "--json")
    assert code == 0


def test_openbao_reports_static_kv_secrets_off_the_allow_list(
    live_stack: StackSettings, run_scan: RunScan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = LocalIssuer.load(live_stack.issuer_dir, stack.ISSUER_URL)
    static_value, injected_value = rand(32), rand(32)
    suffix = rand(6).lower()
    with stack.client_for(live_stack, retry_for=30) as client:
        token = bootstrap.operator_login(client, issuer)
        for path, value in (
            (f"ops/static-{suffix}", static_value),
            (f"ops/injected/vendor-{suffix}", injected_value),
        ):
            client.request(
                "POST", f"secret/data/{path}", body={"data": {"api_key": value}}, token=token
            )
    # 1. The local stack's operator identity (a fresh workload JWT login).
    code, out = run_scan(
        "--openbao", "--data-dir", str(live_stack.data_dir), "--kv-prefix", "ops",
        "--allow", "ops/injected/*", "--json",
    )  # fmt: skip
    doc = json.loads(out)
    names = [f["location"]["name"] for f in doc["findings"]]
    assert f"secret/ops/static-{suffix}" in names
    assert not any("injected" in n for n in names)
    assert all(f["kind"] == "static_kv_secret" for f in doc["findings"])
    assert code == 1
    # 2. A token from a file, an allow-list from a file; text output.
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    allow_file = tmp_path / "allow.txt"
    allow_file.write_text("# injected\nops/injected/*\nops/static-*\n")
    code2, text = run_scan(
        "--openbao", "--data-dir", str(live_stack.data_dir), "--kv-prefix", "ops",
        "--token-file", str(token_file), "--allow-list", str(allow_file),
    )  # fmt: skip
    assert code2 == 0, text
    # 3. Listing above what the identity may list is reported as incomplete, not clean.
    monkeypatch.setenv("CLAWQL_SCAN_TOKEN", token)
    code3, out3 = run_scan(
        "--openbao", "--data-dir", str(live_stack.data_dir), "--token-env", "CLAWQL_SCAN_TOKEN",
        "--allow", "ops/**", "--json",
    )  # fmt: skip
    assert code3 == 3
    assert [s["name"] for s in json.loads(out3)["skipped"]] == ["kv:secret/"]
    for o in (out, text, out3):
        assert not leaks(static_value, o) and not leaks(injected_value, o)
        assert not leaks(token, o)


def test_data_dir_stays_clean_after_a_session_record_under_its_sid(
    live_stack: StackSettings, run_scan: RunScan
) -> None:
    """The gateway's anomaly record puts a session id in KV paths: the audit log stays clean.

    The identity, path and body are the gateway's (``core.py``); the sid is at the
    long end of what the gateway accepts, so the entropy rule would judge it alone.
    The Merkle store's copy is published every minute (too slow to wait for here);
    its line shape is in ``test_identifiers``.
    """
    issuer = LocalIssuer.load(live_stack.issuer_dir, stack.ISSUER_URL)
    sid = rand(43, ALNUM + "-_")
    with stack.client_for(live_stack, retry_for=30) as client:
        token = bootstrap.login(client, issuer, bootstrap.GATEWAY)
        client.request(
            "POST",
            f"secret/data/clawql-anomalies/{sid}/denied_burst",
            body={"data": {"sid": sid, "tenant": "acme", "rule": "denied_burst", "at": 1}},
            token=token,
        )
    audit_logs = list(live_stack.data_dir.glob("nodes/*/audit/audit.log"))
    assert any(sid in p.read_text() for p in audit_logs)
    code, out = run_scan(str(live_stack.data_dir), "--json")
    doc = json.loads(out)
    assert [f for f in doc["findings"] if f["category"] != "bootstrap"] == []
    assert code == 0
    assert not leaks(token, out)
