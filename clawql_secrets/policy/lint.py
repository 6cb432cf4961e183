"""The policy linter (pure): every finding names file, path and rule.

Rules:

- ``tenant-wildcard``: a grant with ``*``/``+`` in a tenant or agent segment,
  or any grant that would match a made-up foreign tenant's or agent's path
  (a correctly scoped grant names the tenant through an identity template,
  which matches nobody else).
- ``sys-grant``: an agent policy grants anything under ``sys/``.
- ``sudo``: an agent policy grants ``sudo``.
- ``policy-write``: anyone but the approval controller can write policies.
- ``unused-policy``: a policy no agent role uses.
- ``parse-error``: the policy cannot be read (never passes silently).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clawql_secrets.errors import InputError
from clawql_secrets.policy import hcl

_PROBE = "zz-foreign-probe"
FOREIGN_PATHS = (
    f"secret/data/tenants/{_PROBE}/agents/{_PROBE}/x",
    f"secret/data/tenants/{_PROBE}/x",
    f"secret/metadata/tenants/{_PROBE}/agents/{_PROBE}/x",
    f"database/creds/{_PROBE}-r-c",
    f"pki_int/issue/{_PROBE}-r",
    f"pki_int/sign/{_PROBE}-r",
)
SYS_PROBES = ("sys/mounts/x", "sys/policies/acl/x", "sys/auth/x", "sys/x")
POLICY_WRITE_PROBES = ("sys/policies/acl/x", "sys/policy/x", "sys/policies/acl/agent-x")
WRITE_CAPS = frozenset({"create", "update", "delete", "patch"})
SCOPE_SEGMENTS = frozenset({"tenants", "agents"})


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    policy: str
    path: str
    rule: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: [{self.rule}] policy {self.policy} "
            f"path {self.path!r}: {self.message}"
        )


@dataclass(frozen=True)
class PolicySource:
    name: str
    file: str
    text: str


def matches(pattern: str, path: str) -> bool:
    """OpenBao ACL matching: ``+`` is one segment, a trailing ``*`` a prefix."""
    glob = pattern.endswith("*")
    pat = pattern[:-1] if glob else pattern
    pseg, tseg = pat.split("/"), path.split("/")
    if not glob and len(pseg) != len(tseg):
        return False
    if len(tseg) < len(pseg):
        return False
    for i, ps in enumerate(pseg):
        ts = tseg[i]
        last = i == len(pseg) - 1
        if ps == "+":
            continue
        if last and glob:
            return ts.startswith(ps)
        if ps != ts:
            return False
    return True


def _grants(rule: hcl.PathRule) -> bool:
    return bool(rule.capabilities) and "deny" not in rule.capabilities


def lint(
    policies: Iterable[PolicySource],
    *,
    used: Iterable[str],
    controller_policy: str = "clawql-approval-controller",
    agent_policies: Iterable[str] | None = None,
) -> list[Finding]:
    """Findings for every policy; an empty list means the set is clean.

    ``agent_policies`` defaults to every policy but the controller's.
    """
    used_set = set(used)
    srcs = list(policies)
    agents = (
        set(agent_policies)
        if agent_policies is not None
        else {p.name for p in srcs if p.name != controller_policy}
    )
    out: list[Finding] = []
    for src in srcs:

        def add(rule: str, path: str, message: str, line: int, src: PolicySource = src) -> None:
            out.append(Finding(src.file, src.name, path, rule, message, line))

        try:
            rules = hcl.parse(src.text, src.file)
        except InputError as exc:
            add("parse-error", "", exc.message, 0)
            continue
        if src.name in agents and src.name not in used_set:
            add("unused-policy", "", "no agent role uses this policy", 0)
        for r in rules:
            if src.name in agents and "sudo" in r.capabilities:
                add("sudo", r.pattern, "agent roles never get sudo", r.line)
            if not _grants(r):
                continue
            segs = r.pattern.split("/")
            for i, seg in enumerate(segs[:-1]):
                nxt = segs[i + 1]
                if seg in SCOPE_SEGMENTS and ("*" in nxt or "+" in nxt):
                    add("tenant-wildcard", r.pattern, f"wildcard in the {seg} segment", r.line)
                    break
            else:
                hit = next((p for p in FOREIGN_PATHS if matches(r.pattern, p)), None)
                if hit is not None:
                    add(
                        "tenant-wildcard",
                        r.pattern,
                        f"also grants another tenant's or agent's path ({hit})",
                        r.line,
                    )
            if src.name in agents and (
                r.pattern.startswith("sys") or any(matches(r.pattern, p) for p in SYS_PROBES)
            ):
                add("sys-grant", r.pattern, "agent roles get nothing under sys/", r.line)
            if (
                src.name != controller_policy
                and WRITE_CAPS & set(r.capabilities)
                and any(matches(r.pattern, p) for p in POLICY_WRITE_PROBES)
            ):
                add(
                    "policy-write",
                    r.pattern,
                    "only the approval controller may write policies",
                    r.line,
                )
    return sorted(out)


def lint_generated(
    generated: Mapping[str, str], source: str, *, used: Iterable[str]
) -> list[Finding]:
    return lint(
        (PolicySource(name, f"{source}#{name}", text) for name, text in generated.items()),
        used=used,
    )
