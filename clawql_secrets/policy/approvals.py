"""Four-eyes approval counting (pure): a result object that never raises, and a verifier.

Shaped like python-tuf's ``VerificationResult``: ``threshold``, ``signed``
(entities whose approval counts), ``unsigned`` (approvals that do not count,
with the reason) and ``missing``. ``verify`` turns a result into ``None`` or a
``SecurityError`` naming every reason; display code uses the result directly.

Identities here are OpenBao entity ids taken from where OpenBao stored the
record (a path only that entity could write), never from the record's body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import rfc8785

from clawql_secrets.errors import SecurityError
from clawql_secrets.provision.model import MIN_APPROVAL_THRESHOLD


def content_hash(policies: Mapping[str, str | None]) -> str:
    """What approvers approve: the exact policy texts (``None`` = delete)."""
    doc = {"policies": {k: policies[k] for k in sorted(policies)}}
    return "sha256:" + hashlib.sha256(rfc8785.dumps(doc)).hexdigest()


def base_hash(live: Mapping[str, str | None]) -> str:
    """The live version a proposal is based on: the current texts of its policies."""
    doc = {
        k: None if v is None else hashlib.sha256(v.encode()).hexdigest() for k, v in live.items()
    }
    return "sha256:" + hashlib.sha256(rfc8785.dumps(dict(sorted(doc.items())))).hexdigest()


@dataclass(frozen=True)
class Proposal:
    id: str
    author: str  # entity id
    policies: Mapping[str, str | None]
    content_hash: str
    base_hash: str
    created_at: float  # OpenBao's storage time, not the author's claim
    expires_at: float
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """One approval or rejection as stored: who (entity, approver name) and of what hash."""

    proposal_id: str
    entity_id: str
    approver: str | None  # the entity's name on the approvers' mount; None if it has none
    content_hash: str
    created_at: float


@dataclass(frozen=True)
class ApprovalResult:
    threshold: int
    signed: frozenset[str]
    unsigned: Mapping[str, str]  # entity id -> why its approval does not count
    rejected_by: frozenset[str]
    problems: tuple[str, ...] = field(default=())

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.signed))

    @property
    def verified(self) -> bool:
        # Fail closed: a threshold under the floor never verifies, even if met.
        return (
            self.threshold >= MIN_APPROVAL_THRESHOLD
            and not self.problems
            and not self.rejected_by
            and len(self.signed) >= self.threshold
        )

    def reasons(self) -> list[str]:
        out = list(self.problems)
        if self.rejected_by:
            out.append(f"rejected by {len(self.rejected_by)} approver(s)")
        out.extend(
            f"approval by {e} does not count: {why}" for e, why in sorted(self.unsigned.items())
        )
        if self.missing:
            out.append(
                f"{len(self.signed)} of {self.threshold} required approvals "
                f"({self.missing} missing)"
            )
        return out


def evaluate(
    proposal: Proposal,
    approvals: Iterable[Decision],
    rejections: Iterable[Decision],
    *,
    threshold: int,
    approvers: Iterable[str],
    live_base_hash: str,
    now: float,
) -> ApprovalResult:
    allowed = set(approvers)
    problems: list[str] = []
    # 1. The threshold itself: below two people there is no four-eyes.
    if threshold < MIN_APPROVAL_THRESHOLD:
        problems.append(
            f"threshold {threshold} is misconfigured: at least {MIN_APPROVAL_THRESHOLD} required"
        )
    # 2. The proposal is what it claims to be.
    if content_hash(proposal.policies) != proposal.content_hash:
        problems.append("the proposal's content does not match its content hash")
    # 3. Not expired (OpenBao's clock on storage, ours now).
    if now >= proposal.expires_at:
        problems.append("the proposal has expired")
    # 4. Still based on what is live.
    if live_base_hash != proposal.base_hash:
        problems.append("stale base: the live policies changed since the proposal was made")
    # 5. Explicit rejections by approvers block.
    rejected = frozenset(
        r.entity_id
        for r in rejections
        if r.proposal_id == proposal.id and r.approver in allowed and r.entity_id != proposal.author
    )
    # 6. Each approval: the right proposal and hash, an approver, not the author,
    #    one per entity and one per person.
    signed: set[str] = set()
    people: set[str] = set()
    unsigned: dict[str, str] = {}
    for a in sorted(approvals, key=lambda d: (d.created_at, d.entity_id)):
        if a.proposal_id != proposal.id:
            unsigned[a.entity_id] = "it is for another proposal"
        elif a.entity_id == proposal.author:
            unsigned[a.entity_id] = "self-approval by the author"
        elif a.approver is None or a.approver not in allowed:
            unsigned[a.entity_id] = "not a configured approver"
        elif a.content_hash != proposal.content_hash:
            unsigned[a.entity_id] = "it approves a different content hash"
        elif a.created_at >= proposal.expires_at:
            unsigned[a.entity_id] = "given after the proposal expired"
        elif a.entity_id in signed:
            unsigned[a.entity_id] = "the same entity approved twice"
        elif a.approver in people:
            unsigned[a.entity_id] = f"approver {a.approver} already approved as another entity"
        else:
            signed.add(a.entity_id)
            people.add(a.approver)
    return ApprovalResult(threshold, frozenset(signed), unsigned, rejected, tuple(problems))


def verify(result: ApprovalResult) -> None:
    """``None`` if the change may be applied, else ``SecurityError`` with every reason."""
    if result.verified:
        return
    raise SecurityError(
        "policy change refused: " + "; ".join(result.reasons() or ["not approved"]),
        fix="gather approvals from distinct configured approvers on the current proposal",
    )
