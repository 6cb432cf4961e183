"""The node HCL renderer: what the cluster runs is what we tested."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawql_secrets.cluster import hcl


def _spec(**kw: object) -> hcl.NodeSpec:
    tls = hcl.TLSFiles(Path("/d/l.pem"), Path("/d/l.key"), Path("/d/ca.pem"))
    base: dict[str, object] = dict(
        node_id="n1",
        api_addr="https://127.0.0.1:8200",
        cluster_addr="https://127.0.0.1:8201",
        listen_address="127.0.0.1:8200",
        cluster_listen_address="127.0.0.1:8201",
        raft_path=Path("/d/raft"),
        audit_path=Path("audit/audit.log"),
        listener_tls=tls,
        peers=("https://127.0.0.1:8200", "https://127.0.0.1:8210", "https://127.0.0.1:8220"),
        seal=hcl.TransitSeal("https://127.0.0.1:8300", "transit", "clawql-unseal", tls),
    )
    base.update(kw)
    return hcl.NodeSpec(**base)  # type: ignore[arg-type]


def test_node_has_raft_retry_join_fast_failover_audit_and_transit_seal() -> None:
    text = hcl.render_node(_spec())
    assert 'storage "raft"' in text
    assert text.count("retry_join {") == 3
    assert "performance_multiplier = 1" in text
    assert 'audit "file" "file"' in text and '"audit/audit.log"' in text
    assert 'seal "transit"' in text and 'disable_renewal = "true"' in text
    assert "tls_client_cert" in text
    # mTLS only: no token in the seal stanza, and log_raw never enabled.
    assert "token" not in text.split('seal "transit"')[1].split("}")[0].replace(
        "disable_renewal", ""
    ).replace("tls_", "")
    assert "log_raw" not in text


def test_quotes_in_paths_cannot_inject_stanzas() -> None:
    text = hcl.render_node(_spec(raft_path=Path('/d/x"\n}\nui = true\n#')))
    assert "\nui = true" not in text
    assert '\\"' in text


@pytest.mark.parametrize("kind", ["awskms", "gcpckms", "azurekeyvault"])
def test_cloud_seals_render_as_plain_stanzas(kind: str) -> None:
    text = hcl.render_node(_spec(seal=hcl.CloudSeal(kind, {"region": "eu-west-1"})))
    assert f'seal "{kind}" {{' in text
    assert 'region = "eu-west-1"' in text


def test_unknown_seal_kind_refused() -> None:
    with pytest.raises(ValueError, match="unknown seal kind"):
        hcl.render_node(_spec(seal=hcl.CloudSeal("pkcs11")))
