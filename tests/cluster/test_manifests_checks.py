"""Issue 15 item 5: the rendered plane checked by real tools, offline.

- every object validates against the Kubernetes 1.37 schemas bundled by the
  pinned ``kubernetes-validate`` (strict: unknown fields fail), and the
  Prometheus Operator objects against the CRD schemas vendored under
  ``k8s_schemas/`` (prometheus-operator v0.93.0), made strict the same way;
- checkov's Kubernetes checks (pinned, in its own virtualenv: pyproject.toml's
  ``checkov`` group) fail on nothing but the findings docs/kubernetes.md lists,
  one by one, and the test compares against exactly that list;
- ``clawql-secrets scan`` finds no static credential in the output.

Both audit transports are rendered into one directory; checkov runs once per
session on it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from clawql_secrets.cluster import manifests
from clawql_secrets.cluster.k8s.spec import K8sSpec
from clawql_secrets.scan import sources
from clawql_secrets.scan.detect import Detector

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
K8S_VERSION = "1.37"
DOC = ROOT / "docs" / "kubernetes.md"
CHECKOV = Path(os.environ.get("CLAWQL_CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    for transport in ("ship", "fluent-bit"):
        spec = K8sSpec(audit_transport=transport, hsm_cidrs=("192.0.2.0/24",))
        manifests.write(spec, out / transport)
    return out


def _objects(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


# -- Kubernetes schemas ----------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """Unknown fields fail, as ``kubectl --validate=strict`` makes the API server do."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = _strict(json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text()))
    schema.pop("x-clawql-source")
    # metadata is ``type: object`` in a CRD; hold it to the core ObjectMeta schema.
    defs_ref = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    schema["properties"]["metadata"] = {"$ref": defs_ref}
    schema["$id"] = "https://kubernetes.io/api/crd.json"
    defs = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict/_definitions.json", K8S_VERSION
    )
    registry = Registry().with_resources(
        [
            ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(defs)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        _crd_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_object_validates_against_the_schemas(rendered: Path) -> None:
    kinds = set()
    for path, doc in _objects(rendered):
        try:
            _validate(doc)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"
            )
        kinds.add(doc["kind"])
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "StatefulSet"} <= kinds


def _first(rendered: Path, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in _objects(rendered) if d["kind"] == kind))


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        (
            "StatefulSet",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(securityContex={}),
        ),
        ("StatefulSet", lambda d: d["spec"].update(replicas="three")),
        ("NetworkPolicy", lambda d: d["spec"].update(podSelecter={})),
        ("ServiceMonitor", lambda d: d["spec"].update(endpoint=[])),
        ("ServiceMonitor", lambda d: d["metadata"].update(label={})),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update(expression="up")),
    ],
)
def test_the_validators_refuse_a_broken_object(rendered: Path, kind: str, breakage: Any) -> None:
    """The checks have teeth: a misspelt or mistyped field fails."""
    doc = _first(rendered, kind)
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_vendored_crd_schemas_name_their_source() -> None:
    for name in ("servicemonitor", "prometheusrule"):
        source = json.loads((SCHEMAS / f"{name}-monitoring-v1.json").read_text())["x-clawql-source"]
        assert source["version"] == "0.93.0"
        assert source["url"].startswith(
            "https://github.com/prometheus-operator/prometheus-operator/blob/v0.93.0/"
        )
        assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])


# -- checkov -------------------------------------------------------------------------------
def accepted_findings() -> set[tuple[str, str]]:
    """The table between the markers of docs/kubernetes.md: (check id, resource)."""
    text = DOC.read_text()
    body = text.split("<!-- checkov-accepted:begin -->")[1].split("<!-- checkov-accepted:end -->")[
        0
    ]
    rows = set()
    for line in body.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"CKV2?_K8S_\d+", cells[0]):
            rows.add((cells[0], cells[1]))
    return rows


@pytest.fixture(scope="session")
def checkov_report(rendered: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov is not installed at {CHECKOV}: run scripts/bootstrap.sh "
            "(it installs pyproject.toml's `checkov` group into .venv/checkov)"
        )
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(rendered),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(rendered), "LANG": "C.UTF-8"},
        check=False,
    )
    if proc.returncode not in (0, 1):  # 1: some check failed (judged below)
        pytest.fail(f"checkov exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    out: dict[str, Any] = report[0] if isinstance(report, list) else report
    return out


def test_checkov_fails_on_nothing_but_the_documented_findings(
    checkov_report: dict[str, Any],
) -> None:
    assert checkov_report["check_type"] == "kubernetes"
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 50  # both renderings were read
    assert summary["passed"] > 500
    failed = {(f["check_id"], f["resource"]) for f in checkov_report["results"]["failed_checks"]}
    assert failed == accepted_findings()


# -- scan ------------------------------------------------------------------------------------
def test_scan_finds_no_static_credential(rendered: Path) -> None:
    result = sources.scan_paths([rendered], Detector())
    assert [(f.category, f.kind, f.location) for f in result.findings] == []
    assert [s for s in result.skipped if s.incomplete] == []
    assert result.scanned >= 18


def test_scan_would_see_a_planted_credential(rendered: Path, tmp_path: Path) -> None:
    """The same scan over the rendering plus one Secret-shaped credential finds it."""
    gateway = (rendered / "ship" / "40-gateway.yaml").read_text()
    planted = tmp_path / "40-gateway.yaml"
    leak = "\n".join(
        [
            "---",
            "apiVersion: v1",
            "kind: Secret",
            "metadata: {name: oops, namespace: clawql}",
            "stringData:",
            "  password: " + "Zx9" + "q7RkV2mLw8TnB4yPfE6sJ1hGd",
        ]
    )
    planted.write_text(gateway + leak + "\n")
    result = sources.scan_paths([planted], Detector())
    assert result.findings, "the scanner sees nothing: the clean result above would mean nothing"


def test_checkov_runs_from_its_own_environment() -> None:
    """It cannot share the project's: its boto3 pin conflicts (docs/kubernetes.md)."""
    assert not str(CHECKOV).startswith(sys.prefix + os.sep + "bin")
