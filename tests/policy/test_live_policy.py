"""Four-eyes change control and the capability matrix on a real cluster.

One stack; tests run in order: refusals first (including the provisioner's
attempts to give a login a policy of its choosing, ADR 0007), then the
approved apply (which also binds each agent role to its policy), then the
matrix against the policies that apply wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import OpenBaoError, SecurityError
from clawql_secrets.gateway import exchange
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy import generate, matrix
from clawql_secrets.policy.changes import ApprovalController, ChangeStore
from clawql_secrets.provision import loader
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.session import person_login, workload_accessor
from tests.agent_login import agent_login, exchange_yaml

pytestmark = pytest.mark.cluster


def config(settings: StackSettings) -> DesiredState:
    return loader.parse(
        exchange_yaml(settings.data_dir)
        + """\
version: 1
tenants: [{name: acme}, {name: globex}]
roles:
  - name: analyst
    tenants: [acme, globex]
    secrets: [api_key]
  - name: integrator
    tenants: [acme]
    secrets: [gh]
    cert_sans: ["spiffe://clawql/tenants/{tenant}/agents/{agent}"]
    cloud_role: aws
pki: {}
cloud:
  issuer: https://openbao.clawql.local
  roles: [{name: aws, audience: sts.amazonaws.com}]
approvals:
  approvers: [alice, bob, carol]
  threshold: 2
""",
        "live.yaml",
    )


@dataclass
class Env:
    client: OpenBaoClient
    issuer: LocalIssuer
    state: DesiredState
    policies: dict[str, str]
    data_dir: Path

    def person(self, name: str) -> ChangeStore:
        return ChangeStore(self.client, person_login(self.client, self.issuer, name))

    def controller(self) -> ApprovalController:
        tok = bootstrap.login(self.client, self.issuer, bootstrap.APPROVAL_CONTROLLER)
        return ApprovalController(
            self.client,
            tok,
            self.state.approvals,
            workload_accessor(self.client, tok),
            agents_mount=self.state.exchange.mount,
        )

    def provisioner(self) -> str:
        return bootstrap.login(self.client, self.issuer, bootstrap.PROVISIONER)

    def agent_login(self, role: str, tenant: str = "acme") -> dict[str, Any]:
        return agent_login(self.client, self.data_dir, tenant=tenant, agent="esc", role=role)


@pytest.fixture(scope="module")
def env(live_stack: StackSettings) -> Iterator[Env]:
    issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
    state = config(live_stack)
    with stack.client_for(live_stack, retry_for=30) as client:
        prov = Provisioner(client, bootstrap.login(client, issuer, bootstrap.PROVISIONER))
        prov.apply(state, env={})
        accessor = prov.accessor("agents")
        assert accessor
        yield Env(client, issuer, state, generate.generate(state, accessor), live_stack.data_dir)


def status_of(call: Callable[..., object], *args: Any, **kwargs: Any) -> int | None:
    """The HTTP status OpenBao refused ``call(*args, **kwargs)`` with, or None if allowed."""
    try:
        call(*args, **kwargs)
    except OpenBaoError as exc:
        return exc.status
    return None


CONTROLLER = bootstrap.APPROVAL_CONTROLLER.policy
# Every form in which a write could name a policy: JSON list, string, comma
# string (which an allowed_parameters glob would have let through), the legacy
# "policies" alias, and key case variants.
ESCALATIONS: tuple[tuple[str, object], ...] = (
    ("token_policies", [CONTROLLER]),
    ("token_policies", CONTROLLER),
    ("token_policies", f"agent-analyst,{CONTROLLER}"),
    ("token_policies", ["agent-analyst", CONTROLLER]),
    ("policies", [CONTROLLER]),
    ("policies", f"agent-analyst,{CONTROLLER}"),
    ("TOKEN_POLICIES", [CONTROLLER]),
    ("Policies", CONTROLLER),
)


def test_agent_roles_carry_no_policy_before_an_approved_apply(env: Env) -> None:
    assert env.agent_login("analyst")["policies"] == ["default"]


def test_provisioner_cannot_give_a_login_any_policy(env: Env) -> None:
    """Regression: the provisioner minting a clawql-approval-controller token."""
    prov = env.provisioner()
    c = env.client
    # A JWT mount of its own, trusting a key it holds: allowed (that is its job)...
    c.write("sys/auth/escalate", {"type": "jwt"}, token=prov)
    try:
        c.write(
            "auth/escalate/config",
            {
                "jwt_validation_pubkeys": [env.issuer.public_pem()],
                "bound_issuer": env.issuer.issuer,
            },
            token=prov,
        )
        role = {
            "role_type": "jwt",
            "bound_audiences": ["openbao"],
            "bound_subject": "mallory",
            "user_claim": "sub",
        }
        allowed = []
        for mount in ("agents", "escalate"):
            for param, value in ESCALATIONS:
                for name in ("analyst", "esc"):  # an existing role and a new one
                    got = status_of(
                        c.write, f"auth/{mount}/role/{name}", {**role, param: value}, token=prov
                    )
                    if got != 403:
                        allowed.append((mount, name, param, value, got))
        # Regression: a CEL role's program sets its logins' policies itself, so
        # writing one would bypass four-eyes; OpenBao 2.7 has them on every JWT mount.
        program = {"expression": 'pb.Auth{policies: ["' + CONTROLLER + '"]}'}
        for mount in ("agents", "escalate"):
            got = status_of(
                c.write, f"auth/{mount}/cel/role/esc", {"cel_program": program}, token=prov
            )
            if got != 403:
                allowed.append((mount, "cel/role/esc", "cel_program", program, got))
        # ...and the other auth types it can enable, each with its policy parameter.
        for kind, path, body in (
            ("userpass", "users/u", {"password": "pw-x", "token_policies": CONTROLLER}),
            ("approle", "role/a", {"policies": [CONTROLLER]}),
            ("cert", "certs/c", {"certificate": env.issuer.public_pem(), "policies": CONTROLLER}),
        ):
            c.write(f"sys/auth/escalate-{kind}", {"type": kind}, token=prov)
            try:
                got = status_of(c.write, f"auth/escalate-{kind}/{path}", body, token=prov)
                if got != 403:
                    allowed.append((kind, path, "", body, got))
            finally:
                c.delete(f"sys/auth/escalate-{kind}", token=prov)
        assert not allowed, allowed
        # A role without policies is fine, and its login carries nothing useful.
        c.write("auth/escalate/role/esc", role, token=prov)
        jwt = env.issuer.mint("mallory", "openbao")
        auth = c.write("auth/escalate/login", {"role": "esc", "jwt": jwt}, token="")["auth"]
        assert auth["policies"] == ["default"]
        got = status_of(
            c.write, "sys/policies/acl/agent-x", {"policy": ""}, token=auth["client_token"]
        )
        assert got == 403
        # The sessions role still has none either.
        assert c.read("auth/agents/role/analyst", token=prov)["data"]["token_policies"] == []
    finally:
        c.delete("sys/auth/escalate", token=prov)


def test_provisioner_has_no_other_way_to_policies(env: Env) -> None:
    prov, c = env.provisioner(), env.client
    for method, path, body in (
        ("POST", "identity/group", {"name": "g", "policies": [CONTROLLER]}),
        ("POST", "identity/entity", {"name": "e", "policies": [CONTROLLER]}),
        ("POST", "identity/group-alias", {"name": "g", "mount_accessor": "x"}),
        ("POST", "auth/token/roles/r", {"allowed_policies": [CONTROLLER]}),
        ("POST", "auth/token/create", {"policies": [CONTROLLER]}),
        ("POST", f"sys/policies/acl/{CONTROLLER}", {"policy": ""}),
        ("POST", "sys/policy/agent-x", {"policy": ""}),
        ("POST", "auth/workload/role/provisioner", {"role_type": "jwt"}),
        # The service identities' mount, also through its trailing-slash and tune paths.
        ("DELETE", "sys/auth/workload/", None),
        ("POST", "sys/auth/workload/tune", {"default_lease_ttl": "1h"}),
    ):
        got = status_of(c.request, method, path, body=body, token=prov)
        assert got == 403, (method, path, got)


def test_controller_binds_only_policies_of_existing_roles(env: Env) -> None:
    tok = bootstrap.login(env.client, env.issuer, bootstrap.APPROVAL_CONTROLLER)
    c = env.client
    for path, body in (
        ("auth/agents/role/newrole", {"role_type": "jwt", "token_policies": ["agent-x"]}),
        ("auth/agents/role/analyst", {"role_type": "jwt", "bound_claims": {"tenant": ["x"]}}),
        ("auth/agents/role/analyst", {"role_type": "oidc", "token_policies": ["agent-x"]}),
        ("auth/workload/role/operator", {"role_type": "jwt", "token_policies": [CONTROLLER]}),
    ):
        assert status_of(c.write, path, body, token=tok) == 403, path
    assert status_of(c.delete, "auth/agents/role/analyst", token=tok) == 403
    # No approved policy exists yet: binding changes nothing.
    assert env.controller().bind() == []


def refused(ctl: ApprovalController, pid: str, text: str, now: float | None = None) -> None:
    with pytest.raises(SecurityError) as err:
        ctl.apply(pid, now=now)
    assert text in err.value.message


def test_people_provisioner_and_approvers_cannot_write_policies(env: Env) -> None:
    for token in (
        person_login(env.client, env.issuer, "alice"),
        bootstrap.login(env.client, env.issuer, bootstrap.PROVISIONER),
    ):
        with pytest.raises(OpenBaoError) as err:
            env.client.write("sys/policies/acl/agent-analyst", {"policy": "x"}, token=token)
        assert err.value.status == 403


def test_zero_approvals_refused(env: Env) -> None:
    pid = env.person("dave").propose(env.policies)
    refused(env.controller(), pid, "0 of 2 required approvals")


def test_self_approval_refused(env: Env) -> None:
    dave = env.person("alice")
    pid = dave.propose(env.policies)
    h = dave.proposal(pid, 3600).content_hash
    dave.approve(pid, h)
    env.person("bob").approve(pid, h)
    refused(env.controller(), pid, "self-approval by the author")


def test_same_person_twice_under_two_tokens_counts_once(env: Env) -> None:
    pid = env.person("dave").propose(env.policies)
    h = env.person("bob").proposal(pid, 3600).content_hash
    env.person("alice").approve(pid, h)
    # A second token of the same person maps to the same entity: the record
    # already exists and cannot be written again.
    with pytest.raises(OpenBaoError):
        env.person("alice").approve(pid, h)
    refused(env.controller(), pid, "1 of 2")


def test_approval_of_another_hash_refused(env: Env) -> None:
    pid = env.person("dave").propose(env.policies)
    h = env.person("bob").proposal(pid, 3600).content_hash
    env.person("alice").approve(pid, h)
    env.person("bob").approve(pid, "sha256:" + "0" * 64)
    refused(env.controller(), pid, "different content hash")


def test_nobody_can_overwrite_or_forge_records(env: Env) -> None:
    dave = env.person("dave")
    pid = dave.propose(env.policies)
    eid = dave._entity_id()
    # not even the author can rewrite the proposal...
    with pytest.raises(OpenBaoError):
        dave._create(f"proposals/{eid}/{pid}", {"policies": "{}"})
    # ...or write an approval under someone else's entity id.
    with pytest.raises(OpenBaoError) as err:
        dave._create(f"approvals/{pid}/not-dave", {"content_hash": "x"})
    assert err.value.status == 403


def test_expired_proposal_refused(env: Env) -> None:
    pid = env.person("dave").propose(env.policies)
    h = env.person("bob").proposal(pid, 3600).content_hash
    env.person("alice").approve(pid, h)
    env.person("bob").approve(pid, h)
    refused(env.controller(), pid, "expired", now=time.time() + 2 * 86400)


def test_approved_apply_writes_then_stale_proposals_refused(env: Env) -> None:
    older = env.person("dave").propose(env.policies)
    pid = env.person("dave").propose(env.policies)
    for p in (older, pid):
        h = env.person("bob").proposal(p, 3600).content_hash
        env.person("alice").approve(p, h)
        env.person("carol").approve(p, h)
    review = env.controller().apply(pid)
    assert review.result.verified and len(review.result.signed) == 2
    # The apply bound each agent role to its own policy, and only that.
    # (and each role's session anchor role to the same policy: ADR 0010).
    assert {(b.role, b.after) for b in review.bound} == {
        ("analyst", ("agent-analyst",)),
        ("analyst.session", ("agent-analyst",)),
        ("integrator", ("agent-integrator",)),
        ("integrator.session", ("agent-integrator",)),
    }
    assert env.agent_login("analyst")["policies"] == ["agent-analyst", "default"]
    assert env.controller().bind() == []
    ctl_token = bootstrap.login(env.client, env.issuer, bootstrap.APPROVAL_CONTROLLER)
    live = env.client.read("sys/policies/acl/agent-analyst", token=ctl_token)["data"]["policy"]
    assert live == env.policies["agent-analyst"]
    # The other proposal was based on the old live version: now stale.
    refused(env.controller(), older, "stale base")
    # Re-applying the applied one is stale too (no replay).
    refused(env.controller(), pid, "stale base")


def test_rejection_blocks(env: Env) -> None:
    changed = {"agent-analyst": env.policies["agent-analyst"] + "\n# v2\n"}
    pid = env.person("dave").propose(changed)
    h = env.person("bob").proposal(pid, 3600).content_hash
    env.person("alice").approve(pid, h)
    env.person("bob").approve(pid, h)
    env.person("carol").reject(pid, h)
    refused(env.controller(), pid, "rejected by 1")


def test_capability_matrix_after_approved_apply(env: Env) -> None:
    key = exchange.stack_key_dir(env.data_dir) / exchange.KEY_FILE
    result = matrix.run(env.client, env.state, exchange.minter(key, env.state.exchange.issuer))
    assert result.ok, result.render()
    labels = {o.case.label for o in result.outcomes}
    assert {"own-secret", "sibling-secret", "other-tenant", "deny-block", "sys"} <= labels
