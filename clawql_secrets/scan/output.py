"""Rendering a scan result: for people, JSON, and SARIF 2.1.0 for CI.

Every renderer works from ``Finding`` objects, which hold a masked preview
and never a value, so no output can contain a secret the scan found.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from clawql_secrets import __version__
from clawql_secrets.scan.model import BOOTSTRAP, Finding, ScanResult

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "clawql-secrets scan"


def text(result: ScanResult) -> str:
    lines: list[str] = []
    for f in result.findings:
        if f.category == BOOTSTRAP:
            state = "LOOSE" if f.problems else "ok"
            lines.append(f"BOOTSTRAP {state:5} {f.location}  {f.kind}  ({f.preview})")
            lines.extend(f"                  - {p}" for p in f.problems)
        else:
            lines.append(f"SECRET          {f.location}  {f.kind}  {f.preview}  [{f.rule}]")
    incomplete = [s for s in result.skipped if s.incomplete]
    binary = [s for s in result.skipped if not s.incomplete]
    for s in incomplete:
        lines.append(f"NOT SCANNED     {s.name}: {s.reason}")
    if binary:
        lines.append(f"skipped {len(binary)} binary or linked files (see --json)")
    boot = [f for f in result.findings if f.category == BOOTSTRAP]
    secrets = [f for f in result.findings if f.category != BOOTSTRAP]
    lines.append(
        f"{result.scanned} scanned: {len(secrets)} static credential(s), "
        f"{len(boot)} bootstrap item(s) ({sum(1 for f in boot if f.problems)} loosely protected)"
        + (", scan INCOMPLETE" if incomplete else "")
    )
    lines.append("FAIL" if result.exit_code() else "ok: no static credential")
    return "\n".join(lines)


def to_json(result: ScanResult) -> dict[str, Any]:
    return {"tool": TOOL_NAME, "version": __version__, **result.to_json()}


def rule_id(f: Finding) -> str:
    return f"{f.category}/{f.kind}"


def _uri(name: str) -> str:
    path = PurePath(name)
    if path.is_absolute():
        return "file://" + quote(path.as_posix())
    return quote(path.as_posix())


def _sarif_result(f: Finding) -> dict[str, Any]:
    message = f"{f.kind} at {f.location}: {f.preview}"
    if f.problems:
        message += "; " + "; ".join(f.problems)
    elif f.category == BOOTSTRAP:
        message += "; protection ok"
    out: dict[str, Any] = {
        "ruleId": rule_id(f),
        "kind": "fail" if f.failing else "informational",
        "level": "error" if f.failing else "none",
        "message": {"text": message},
        "properties": {"category": f.category, "rule": f.rule, "problems": list(f.problems)},
    }
    loc = f.location
    if loc.source == "file":
        physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(loc.name)}}
        if loc.line is not None:
            physical["region"] = {"startLine": loc.line, "startColumn": loc.column or 1}
        out["locations"] = [{"physicalLocation": physical}]
    else:
        kind = "variable" if loc.source == "env" else "resource"
        out["locations"] = [
            {"logicalLocations": [{"fullyQualifiedName": f"{loc.source}:{loc.name}", "kind": kind}]}
        ]
    return out


def sarif(result: ScanResult) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    for f in result.findings:
        rid = rule_id(f)
        if rid not in rules:
            text_ = (
                f"bootstrap trust: {f.kind} (checked: mode, owner, directory)"
                if f.category == BOOTSTRAP
                else f"static credential: {f.kind}"
            )
            rules[rid] = {
                "id": rid,
                "name": f.kind,
                "shortDescription": {"text": text_},
                "defaultConfiguration": {"level": "error"},
            }
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": __version__,
                        "informationUri": "https://github.com/clawql/clawql-secrets",
                        "rules": list(rules.values()),
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not result.incomplete,
                        "toolExecutionNotifications": [
                            {"level": "warning", "message": {"text": f"{s.name}: {s.reason}"}}
                            for s in result.skipped
                            if s.incomplete
                        ],
                    }
                ],
                "results": [_sarif_result(f) for f in result.findings],
            }
        ],
    }
