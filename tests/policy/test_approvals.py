"""Four-eyes counting: every refusal is its own test; zero approvals never pass."""

from __future__ import annotations

import dataclasses

import pytest

from clawql_secrets.errors import SecurityError
from clawql_secrets.policy.approvals import (
    ApprovalResult,
    Decision,
    Proposal,
    base_hash,
    content_hash,
    evaluate,
    verify,
)

NOW = 1_000_000.0
POLICIES = {"agent-analyst": 'path "x" { capabilities = ["read"] }'}
LIVE = {"agent-analyst": None}
APPROVERS = ("alice", "bob", "carol")


def proposal(**kw: object) -> Proposal:
    base = Proposal(
        id="p1",
        author="ent-dave",
        policies=POLICIES,
        content_hash=content_hash(POLICIES),
        base_hash=base_hash(LIVE),
        created_at=NOW - 60,
        expires_at=NOW + 3600,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def ok(entity: str, name: str | None, **kw: object) -> Decision:
    d = Decision("p1", entity, name, content_hash(POLICIES), NOW - 10)
    return dataclasses.replace(d, **kw)  # type: ignore[arg-type]


def run(
    p: Proposal | None = None,
    approvals: list[Decision] | None = None,
    rejections: list[Decision] | None = None,
    threshold: int = 2,
    live: dict[str, str | None] | None = None,
    now: float = NOW,
) -> ApprovalResult:
    return evaluate(
        p or proposal(),
        approvals if approvals is not None else [ok("ent-a", "alice"), ok("ent-b", "bob")],
        rejections or [],
        threshold=threshold,
        approvers=APPROVERS,
        live_base_hash=base_hash(live if live is not None else LIVE),
        now=now,
    )


def test_two_distinct_non_author_approvals_pass() -> None:
    r = run()
    assert r.verified and r.signed == {"ent-a", "ent-b"} and r.missing == 0
    verify(r)


def refused(r: ApprovalResult, text: str) -> None:
    assert not r.verified
    with pytest.raises(SecurityError) as err:
        verify(r)
    assert text in err.value.message


def test_zero_approvals_refused() -> None:
    refused(run(approvals=[]), "0 of 2 required approvals")


def test_one_approval_refused() -> None:
    refused(run(approvals=[ok("ent-a", "alice")]), "1 of 2")


def test_threshold_zero_refused_even_with_no_approvals_needed() -> None:
    refused(run(threshold=0, approvals=[]), "threshold 0 is misconfigured")


def test_threshold_one_refused_even_when_met() -> None:
    refused(run(threshold=1), "threshold 1 is misconfigured")


def test_self_approval_refused() -> None:
    r = run(approvals=[ok("ent-dave", "alice"), ok("ent-b", "bob")])
    refused(r, "self-approval by the author")


def test_same_entity_twice_refused() -> None:
    refused(
        run(approvals=[ok("ent-a", "alice"), ok("ent-a", "alice")]), "same entity approved twice"
    )


def test_same_person_as_two_entities_refused() -> None:
    refused(run(approvals=[ok("ent-a", "alice"), ok("ent-a2", "alice")]), "already approved")


def test_not_an_approver_refused() -> None:
    refused(
        run(approvals=[ok("ent-a", "alice"), ok("ent-m", "mallory")]), "not a configured approver"
    )


def test_entity_without_approver_alias_refused() -> None:
    refused(run(approvals=[ok("ent-a", "alice"), ok("ent-x", None)]), "not a configured approver")


def test_approval_of_a_different_hash_refused() -> None:
    other = ok("ent-b", "bob", content_hash="sha256:" + "0" * 64)
    refused(run(approvals=[ok("ent-a", "alice"), other]), "different content hash")


def test_approval_for_another_proposal_refused() -> None:
    refused(
        run(approvals=[ok("ent-a", "alice"), ok("ent-b", "bob", proposal_id="p2")]),
        "another proposal",
    )


def test_stale_base_refused() -> None:
    refused(run(live={"agent-analyst": "changed by hand"}), "stale base")


def test_expired_proposal_refused() -> None:
    refused(run(now=NOW + 7200), "expired")


def test_approval_after_expiry_refused() -> None:
    late = ok("ent-b", "bob", created_at=NOW + 4000)
    refused(run(approvals=[ok("ent-a", "alice"), late], now=NOW), "after the proposal expired")


def test_tampered_content_refused() -> None:
    p = proposal(policies={"agent-analyst": 'path "*" { capabilities = ["sudo"] }'})
    refused(run(p=p), "does not match its content hash")


def test_rejection_blocks() -> None:
    r = run(rejections=[ok("ent-c", "carol")])
    refused(r, "rejected by 1")


def test_result_never_raises_and_reports_missing() -> None:
    r = run(approvals=[])
    assert r.threshold == 2 and r.missing == 2 and r.signed == frozenset()


def test_hashes_are_canonical() -> None:
    assert content_hash({"b": "1", "a": None}) == content_hash({"a": None, "b": "1"})
    assert content_hash({"a": "1"}) != content_hash({"a": "1 "})
