"""Each lint rule, on a minimal bad policy; generated policies lint clean."""

from __future__ import annotations

import pytest

from clawql_secrets.policy import generate, hcl, lint
from clawql_secrets.provision import loader
from tests.provision.conftest import valid_yaml

T = "{{identity.entity.aliases.acc.metadata.tenant}}"
A = "{{identity.entity.aliases.acc.metadata.agent}}"

# (id, policy name, hcl, rule)
BAD = [
    (
        "wildcard_tenant_segment",
        "agent-x",
        f'path "secret/data/tenants/*/agents/{A}/k" {{ capabilities = ["read"] }}',
        "tenant-wildcard",
    ),
    (
        "plus_agent_segment",
        "agent-x",
        f'path "secret/data/tenants/{T}/agents/+/k" {{ capabilities = ["read"] }}',
        "tenant-wildcard",
    ),
    (
        "glob_across_tenants",
        "agent-x",
        'path "secret/data/*" { capabilities = ["read"] }',
        "tenant-wildcard",
    ),
    (
        "db_creds_glob",
        "agent-x",
        'path "database/creds/*" { capabilities = ["read"] }',
        "tenant-wildcard",
    ),
    (
        "literal_other_tenant_is_not_wildcard_but_sys",
        "agent-x",
        'path "sys/mounts" { capabilities = ["read"] }',
        "sys-grant",
    ),
    ("sys_grant_via_glob", "agent-x", 'path "*" { capabilities = ["read"] }', "sys-grant"),
    (
        "sudo",
        "agent-x",
        f'path "secret/data/tenants/{T}/agents/{A}/k" {{ capabilities = ["read", "sudo"] }}',
        "sudo",
    ),
    (
        "policy_write",
        "ops",
        'path "sys/policies/acl/*" { capabilities = ["update"] }',
        "policy-write",
    ),
    (
        "policy_write_legacy",
        "ops",
        'path "sys/policy/*" { capabilities = ["create"] }',
        "policy-write",
    ),
    (
        "unused_policy",
        "agent-orphan",
        'path "secret/data/x" { capabilities = ["read"] }',
        "unused-policy",
    ),
    ("parse_error", "agent-x", 'path "x" { capabilities = ["read"', "parse-error"),
    ("not_a_path_block", "agent-x", 'key "x" {}', "parse-error"),
]


@pytest.mark.parametrize(("name", "text", "rule"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_rule_fires(name: str, text: str, rule: str) -> None:
    findings = lint.lint([lint.PolicySource(name, f"{name}.hcl", text)], used=["agent-x", "ops"])
    assert rule in {f.rule for f in findings}
    f = next(f for f in findings if f.rule == rule)
    assert f.file == f"{name}.hcl"
    assert f"[{rule}]" in str(f)


def test_controller_may_write_policies_and_denies_are_not_grants() -> None:
    text = (
        'path "sys/policies/acl/*" { capabilities = ["update"] }\n'
        'path "sys/*" { capabilities = ["deny"] }'
    )
    findings = lint.lint([lint.PolicySource("clawql-approval-controller", "c.hcl", text)], used=[])
    assert findings == []


def test_generated_policies_are_clean_and_templated() -> None:
    state = loader.parse(valid_yaml())
    policies = generate.generate(state, "auth_jwt_abc")
    assert lint.lint_generated(policies, "clawql.yaml", used=list(policies)) == []
    rules = hcl.parse(policies["agent-analyst"])
    grants = [r for r in rules if "deny" not in r.capabilities]
    assert grants and all(
        "{{identity.entity.aliases.auth_jwt_abc.metadata.tenant}}" in r.pattern for r in grants
    )
    assert any(r.pattern == "sys/*" and r.capabilities == ("deny",) for r in rules)


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/b*", "a/bcd/e", True),
        ("a/b", "a/b/c", False),
        ("*", "sys/x", True),
    ],
)
def test_matches(pattern: str, path: str, hit: bool) -> None:
    assert lint.matches(pattern, path) is hit
