"""Output formats: SARIF 2.1.0 structure, JSON shape, exit codes, the CLI registration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clawql_secrets import cli
from clawql_secrets.scan import output
from clawql_secrets.scan.model import (
    BOOTSTRAP,
    SECRET,
    Finding,
    Location,
    ScanResult,
    Skipped,
)
from tests.scan import corpus
from tests.scan.conftest import RunScan, leaks

LEVELS = {"none", "note", "warning", "error"}
KINDS = {"notApplicable", "pass", "fail", "review", "open", "informational"}


def check_sarif(doc: dict[str, Any]) -> None:
    """The SARIF 2.1.0 required properties and enums this tool emits (schema, section 3)."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and doc["runs"]
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rule_ids = [r["id"] for r in driver.get("rules", [])]
        assert len(rule_ids) == len(set(rule_ids))
        for rule in driver.get("rules", []):
            assert rule["shortDescription"]["text"]
        for inv in run.get("invocations", []):
            assert isinstance(inv["executionSuccessful"], bool)
        for res in run["results"]:
            assert res["message"]["text"]
            assert res["ruleId"] in rule_ids
            assert res["level"] in LEVELS and res["kind"] in KINDS
            # A result whose kind is not "fail" must have level "none" (3.27.9).
            assert res["kind"] == "fail" or res["level"] == "none"
            assert res["locations"]
            for loc in res["locations"]:
                if "physicalLocation" in loc:
                    phys = loc["physicalLocation"]
                    assert phys["artifactLocation"]["uri"]
                    if "region" in phys:
                        assert phys["region"]["startLine"] >= 1
                        assert phys["region"]["startColumn"] >= 1
                else:
                    assert loc["logicalLocations"][0]["fullyQualifiedName"]


def sample() -> ScanResult:
    return ScanResult(
        findings=[
            Finding(SECRET, "jwt", Location("file", "deploy/app.yaml", 12, 5), "eyJ**** (x)", "r"),
            Finding(SECRET, "secret_assignment", Location("env", "self:DB_PASSWORD"), "****", "r"),
            Finding(SECRET, "static_kv_secret", Location("kv", "secret/ops/db"), "version 1", "kv"),
            Finding(BOOTSTRAP, "hsm_pin", Location("file", "/abs/hsm/user.pin"), "pin", "b"),
            Finding(BOOTSTRAP, "ca_key", Location("file", "tls/x/ca.key"), "ca", "b", ("mode",)),
        ],
        skipped=[Skipped("unreadable.env", "cannot read", True)],
        scanned=5,
    )


def test_sarif_structure_and_levels() -> None:
    doc = output.sarif(sample())
    check_sarif(doc)
    results = doc["runs"][0]["results"]
    assert [r["level"] for r in results] == ["error", "error", "error", "none", "error"]
    assert results[3]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith(
        "file:///abs/"
    )
    assert results[1]["locations"][0]["logicalLocations"][0]["kind"] == "variable"
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_exit_codes() -> None:
    assert sample().exit_code() == 1
    ok_boot = [f for f in sample().findings if f.kind == "hsm_pin"]
    assert ScanResult(findings=ok_boot).exit_code() == 0
    assert ScanResult(skipped=[Skipped("x", "cannot read", True)]).exit_code() == 3
    assert ScanResult(skipped=[Skipped("x", "binary", False)]).exit_code() == 0


def test_text_output_for_people() -> None:
    text = output.text(sample())
    assert "SECRET          deploy/app.yaml:12:5  jwt" in text
    assert "BOOTSTRAP ok" in text and "BOOTSTRAP LOOSE" in text
    assert "NOT SCANNED     unreadable.env" in text
    assert text.endswith("FAIL")


def test_sarif_file_from_the_cli_validates_and_holds_no_secret(
    tmp_path: Path, run_scan: RunScan
) -> None:
    plants = corpus.plant(tmp_path / "corpus")
    sarif_file = tmp_path / "out.sarif"
    code, _ = run_scan(str(tmp_path / "corpus"), "--sarif", str(sarif_file))
    assert code == 1
    doc = json.loads(sarif_file.read_text())
    check_sarif(doc)
    assert len(doc["runs"][0]["results"]) >= len(plants)
    raw = sarif_file.read_text()
    assert not any(leaks(p.secret, raw) for p in plants)


def test_clean_tree_exits_zero(tmp_path: Path, run_scan: RunScan) -> None:
    corpus.look_alikes(tmp_path)
    code, out = run_scan(str(tmp_path), "--json")
    assert code == 0
    assert json.loads(out)["ok"] is True


def test_scan_is_a_registered_command() -> None:
    args = cli.build_parser().parse_args(["scan", "--env", "--json"])
    assert args.env and args.json and callable(args.func)
