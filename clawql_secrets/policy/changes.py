"""Four-eyes change control over OpenBao: the store (people) and the controller.

Storage is OpenBao's own KV v2, under ``secret/clawql-change/`` (see ADR 0005):

- ``proposals/<author entity id>/<id>``   written once by the author
- ``approvals/<id>/<approver entity id>`` written once by each approver
- ``rejections/<id>/<approver entity id>`` written once by each rejecting approver
- ``applied/<id>``                        written once by the approval controller

The ``clawql-change-participant`` policy lets a person *create* (not update or
delete) only under their own entity id, by identity templating. So who wrote a
record is proven by where it is, and OpenBao's version metadata (its own
clock; version 1 means never overwritten) says when. Every read and write goes
through OpenBao and so into its audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import InputError, IntegrityError, OpenBaoError, SecurityError
from clawql_secrets.policy.approvals import (
    ApprovalResult,
    Decision,
    Proposal,
    base_hash,
    content_hash,
    evaluate,
    verify,
)
from clawql_secrets.policy.binding import Binding, bind_agent_roles
from clawql_secrets.provision.model import Approvals

ROOT = "clawql-change"
KV = "secret"
_ID_CHARS = frozenset("0123456789abcdef")


def _check_id(pid: str) -> str:
    if len(pid) != 32 or not set(pid) <= _ID_CHARS:
        raise InputError(f"not a proposal id: {pid!r}")
    return pid


def _time(value: object) -> float:
    text = str(value or "")
    if not text:
        raise IntegrityError("a change record has no storage time")
    head, _, frac = text.rstrip("Z").partition(".")
    parsed = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    return parsed.timestamp() + (float("0." + frac) if frac else 0.0)


class _Reader:
    def __init__(self, client: OpenBaoClient, token: str) -> None:
        self.client = client
        self._token = token

    def _read(self, path: str) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        try:
            resp = self.client.read(f"{KV}/data/{ROOT}/{path}", token=self._token)
        except OpenBaoError as exc:
            if exc.status == 404:
                return None
            raise
        data = resp.get("data") or {}
        return data.get("data") or {}, data.get("metadata") or {}

    def _list(self, path: str) -> list[str]:
        try:
            resp = self.client.request("LIST", f"{KV}/metadata/{ROOT}/{path}", token=self._token)
        except OpenBaoError as exc:
            if exc.status == 404:
                return []
            raise
        return [str(k) for k in (resp.get("data") or {}).get("keys") or []]

    def _create(self, path: str, data: Mapping[str, Any]) -> None:
        # cas=0: create only; the policy grants no "update" either.
        self.client.write(
            f"{KV}/data/{ROOT}/{path}",
            {"options": {"cas": 0}, "data": dict(data)},
            token=self._token,
        )

    def live_policies(self, names: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name in names:
            try:
                resp = self.client.read(f"sys/policies/acl/{name}", token=self._token)
            except OpenBaoError as exc:
                if exc.status == 404:
                    out[name] = None
                    continue
                raise
            out[name] = str((resp.get("data") or {}).get("policy", ""))
        return out

    def proposal_ids(self) -> list[tuple[str, str]]:
        """``(author entity id, proposal id)`` for every stored proposal."""
        out = []
        for author in self._list("proposals/"):
            for pid in self._list(f"proposals/{author}"):
                out.append((author.rstrip("/"), pid))
        return out

    def proposal(self, pid: str, ttl: int) -> Proposal:
        _check_id(pid)
        authors = [a for a, p in self.proposal_ids() if p == pid]
        if not authors:
            raise InputError(f"no proposal {pid}")
        if len(authors) > 1:
            raise IntegrityError(f"proposal id {pid} exists under {len(authors)} authors")
        got = self._read(f"proposals/{authors[0]}/{pid}")
        if got is None:
            raise InputError(f"no proposal {pid}")
        data, meta = got
        if meta.get("version") != 1:
            raise IntegrityError(f"proposal {pid} was overwritten (version {meta.get('version')})")
        try:
            policies = json.loads(str(data["policies"]))
            if not isinstance(policies, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str))
                for k, v in policies.items()
            ):
                raise ValueError("policies")
            created = _time(meta.get("created_time"))
            return Proposal(
                id=pid,
                author=authors[0],
                policies=policies,
                content_hash=str(data["content_hash"]),
                base_hash=str(data["base_hash"]),
                created_at=created,
                expires_at=created + ttl,
                note=str(data.get("note", ""))[:500],
            )
        except (KeyError, ValueError) as exc:
            raise IntegrityError(f"proposal {pid} is malformed") from exc

    def decisions(self, kind: str, pid: str) -> list[tuple[str, str, float]]:
        """``(entity id, content hash, storage time)`` of every approval or rejection."""
        out = []
        for entity in self._list(f"{kind}/{_check_id(pid)}"):
            got = self._read(f"{kind}/{pid}/{entity}")
            if got is None:
                continue
            data, meta = got
            if meta.get("version") != 1:
                continue  # overwritten records never count
            out.append((entity, str(data.get("content_hash", "")), _time(meta.get("created_time"))))
        return out


class ChangeStore(_Reader):
    """What a person does with their own OpenBao token: propose, approve, reject, read."""

    def propose(self, policies: Mapping[str, str | None], note: str = "") -> str:
        if not policies:
            raise InputError("an empty proposal changes nothing")
        me = self._entity_id()
        live = self.live_policies(sorted(policies))
        pid = secrets.token_hex(16)
        self._create(
            f"proposals/{me}/{pid}",
            {
                "policies": json.dumps(dict(policies), sort_keys=True),
                "content_hash": content_hash(policies),
                "base_hash": base_hash(live),
                "note": note[:500],
            },
        )
        return pid

    def approve(self, pid: str, expected_hash: str) -> None:
        """Approve exactly ``expected_hash`` (what the approver reviewed)."""
        self._create(
            f"approvals/{_check_id(pid)}/{self._entity_id()}", {"content_hash": expected_hash}
        )

    def reject(self, pid: str, expected_hash: str, reason: str = "") -> None:
        self._create(
            f"rejections/{_check_id(pid)}/{self._entity_id()}",
            {"content_hash": expected_hash, "reason": reason[:500]},
        )

    def _entity_id(self) -> str:
        resp = self.client.read("auth/token/lookup-self", token=self._token)
        eid = str((resp.get("data") or {}).get("entity_id") or "")
        if not eid:
            raise SecurityError("this token has no identity entity: log in as yourself")
        return eid


@dataclass(frozen=True)
class Review:
    proposal: Proposal
    result: ApprovalResult
    live: Mapping[str, str | None]
    # Agents' JWT roles whose token_policies the apply changed (ADR 0007).
    bound: tuple[Binding, ...] = ()


class ApprovalController:
    """The only identity that writes policies, and only after ``verify`` passed.

    It is also the only one that binds a policy to the agents' logins: after
    writing the approved policies it makes role ``<role>`` on ``agents_mount``
    carry exactly ``agent-<role>`` (``policy.binding``), since the provisioner
    may not set any role's policies.
    """

    def __init__(
        self,
        client: OpenBaoClient,
        token: str,
        approvals: Approvals,
        approver_accessor: str,
        agents_mount: str | None = None,
    ) -> None:
        self.reader = _Reader(client, token)
        self.client = client
        self._token = token
        self.cfg = approvals
        self.accessor = approver_accessor
        self.agents_mount = agents_mount
        self._names: dict[str, str | None] = {}

    def approver_name(self, entity_id: str) -> str | None:
        """The entity's alias name on the approvers' mount, as OpenBao knows it."""
        if entity_id not in self._names:
            try:
                resp = self.client.read(f"identity/entity/id/{entity_id}", token=self._token)
            except OpenBaoError as exc:
                if exc.status != 404:
                    raise
                resp = {}
            aliases = (resp.get("data") or {}).get("aliases") or []
            names = {
                str(a.get("name")) for a in aliases if a.get("mount_accessor") == self.accessor
            }
            self._names[entity_id] = names.pop() if len(names) == 1 else None
        return self._names[entity_id]

    def review(self, pid: str, now: float | None = None) -> Review:
        # 1. the proposal, as stored by OpenBao under its author's entity
        proposal = self.reader.proposal(pid, self.cfg.proposal_ttl)
        # 2. the live version of exactly the policies it changes
        live = self.reader.live_policies(sorted(proposal.policies))

        # 3. approvals and rejections, each attributed to the entity that stored it
        def decisions(kind: str) -> list[Decision]:
            return [
                Decision(pid, e, self.approver_name(e), h, t)
                for e, h, t in self.reader.decisions(kind, pid)
            ]

        # 4. count (pure)
        result = evaluate(
            proposal,
            decisions("approvals"),
            decisions("rejections"),
            threshold=self.cfg.threshold,
            approvers=self.cfg.approvers,
            live_base_hash=base_hash(live),
            now=time.time() if now is None else now,
        )
        return Review(proposal, result, live)

    def apply(self, pid: str, now: float | None = None) -> Review:
        review = self.review(pid, now)
        verify(review.result)
        for name, text in sorted(review.proposal.policies.items()):
            if text is None:
                self.client.delete(f"sys/policies/acl/{name}", token=self._token)
            else:
                self.client.write(f"sys/policies/acl/{name}", {"policy": text}, token=self._token)
        bound = tuple(self.bind())
        self.reader._create(
            f"applied/{pid}",
            {
                "content_hash": review.proposal.content_hash,
                "applied_at": int(time.time()),
                "bound": [b.describe() for b in bound],
            },
        )
        return Review(review.proposal, review.result, review.live, bound)

    def bind(self) -> list[Binding]:
        """Bind each agents' role to its approved policy (idempotent; ADR 0007)."""
        if self.agents_mount is None:
            return []
        return bind_agent_roles(self.client, self._token, self.agents_mount)
