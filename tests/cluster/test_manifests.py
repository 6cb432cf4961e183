"""Production manifests: 3+ replicas, the same HCL as locally, no secret material."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clawql_secrets.cluster import manifests
from clawql_secrets.errors import ConfigError


def test_statefulset_has_replicas_and_hcl_joins_every_peer(tmp_path: Path) -> None:
    spec = manifests.K8sSpec(replicas=5, namespace="sec")
    paths = manifests.write(spec, tmp_path)
    docs = list(yaml.safe_load_all(paths[0].read_text()))
    kinds = [d["kind"] for d in docs]
    assert "Secret" not in kinds
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"BAO_RAFT_NODE_ID", "BAO_API_ADDR", "BAO_CLUSTER_ADDR"} <= env
    text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["openbao.hcl"]
    for i in range(5):
        assert f"https://openbao-{i}.openbao-internal.sec.svc:8200" in text
    assert 'seal "transit"' in text and "performance_multiplier = 1" in text
    assert "node_id" not in text


@pytest.mark.parametrize("replicas", [0, 1, 2])
def test_fewer_than_three_replicas_refused(replicas: int) -> None:
    with pytest.raises(ConfigError, match="cannot survive"):
        manifests.K8sSpec(replicas=replicas)
