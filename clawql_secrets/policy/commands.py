"""CLI: ``policy lint|test|propose|approve|reject|apply|bind|list|show``.

People act as themselves (``--as NAME``: a login through the change-participant
role; locally the stack's issuer stands in for the people's identity
provider). ``policy apply`` runs as the approval controller.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from clawql_secrets.cluster import bootstrap
from clawql_secrets.errors import InputError
from clawql_secrets.gateway import exchange
from clawql_secrets.policy import generate, lint, matrix
from clawql_secrets.policy.changes import ApprovalController, ChangeStore
from clawql_secrets.provision import loader
from clawql_secrets.provision.commands import add_common
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.session import open_stack, person_login, workload_accessor


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="generated agent policies and four-eyes change control")
    psub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    psub.required = True

    p = psub.add_parser("lint", help="lint the generated policies (and extra HCL files)")
    p.add_argument("--config", type=Path, default=Path("clawql.yaml"))
    p.add_argument("files", nargs="*", type=Path, help="extra policy files (name = file stem)")
    p.set_defaults(func=_lint)

    p = psub.add_parser("test", help="capability matrix against live OpenBao")
    add_common(p)
    p.set_defaults(func=_test)

    p = psub.add_parser("propose", help="propose the generated policies that differ from live")
    add_common(p)
    p.add_argument("--as", dest="person", required=True)
    p.add_argument("--note", default="")
    p.set_defaults(func=_propose)

    for name, func in (("approve", _approve), ("reject", _reject)):
        p = psub.add_parser(name, help=f"{name} a proposal as yourself")
        add_common(p)
        p.add_argument("id")
        p.add_argument("--as", dest="person", required=True)
        p.add_argument("--hash", help="the content hash you reviewed (default: the proposal's)")
        p.set_defaults(func=func)

    p = psub.add_parser("apply", help="apply an approved proposal (as the approval controller)")
    add_common(p)
    p.add_argument("id")
    p.set_defaults(func=_apply)

    p = psub.add_parser(
        "bind",
        help="bind each agent role to its approved agent-<role> policy (as the approval "
        "controller; apply does this too)",
    )
    add_common(p)
    p.set_defaults(func=_bind)

    p = psub.add_parser("list", help="proposals and their approval state")
    add_common(p)
    p.set_defaults(func=_list)

    p = psub.add_parser("show", help="one proposal: diff, hash, approvals")
    add_common(p)
    p.add_argument("id")
    p.set_defaults(func=_show)


def _lint(args: argparse.Namespace) -> int:
    state = loader.load(args.config)
    generated = generate.generate(state, "<agents-accessor>")
    sources = [lint.PolicySource(n, f"{args.config}#{n}", t) for n, t in generated.items()]
    for f in args.files:
        try:
            sources.append(lint.PolicySource(f.stem, str(f), f.read_text()))
        except OSError as exc:
            raise InputError(f"cannot read {f} ({type(exc).__name__})") from exc
    findings = lint.lint(sources, used=[r.policy_name for r in state.roles])
    for finding in findings:
        print(finding)
    print(f"{len(findings)} finding(s) in {len(sources)} policies")
    return 1 if findings else 0


def _test(args: argparse.Namespace) -> int:
    state = loader.load(args.config)
    _, client, _issuer = open_stack(args.data_dir)
    key = exchange.stack_key_dir(args.data_dir) / exchange.KEY_FILE
    with client:
        result = matrix.run(client, state, exchange.minter(key, state.exchange.issuer))
    print(result.render())
    return 0 if result.ok else 1


def _controller(args: argparse.Namespace) -> tuple[Any, ApprovalController]:
    state = loader.load(args.config)
    _, client, issuer = open_stack(args.data_dir)
    token = bootstrap.login(client, issuer, bootstrap.APPROVAL_CONTROLLER)
    return client, ApprovalController(
        client,
        token,
        state.approvals,
        workload_accessor(client, token),
        agents_mount=state.exchange.mount,
    )


def _propose(args: argparse.Namespace) -> int:
    state = loader.load(args.config)
    _, client, issuer = open_stack(args.data_dir)
    with client:
        prov = Provisioner(client, bootstrap.login(client, issuer, bootstrap.PROVISIONER))
        accessor = prov.accessor(state.exchange.mount)
        if accessor is None:
            raise InputError("run `apply` first: the agents' auth mount does not exist yet")
        policies = generate.generate(state, accessor)
        findings = lint.lint_generated(policies, str(args.config), used=list(policies))
        if findings:
            raise InputError("policy lint failed:\n  " + "\n  ".join(map(str, findings)))
        changed = {n: t for n, t in policies.items() if prov.live_policy(n) != t}
        if not changed:
            print("no policy differs from the desired state")
            return 0
        store = ChangeStore(client, person_login(client, issuer, args.person))
        pid = store.propose(changed, args.note)
    print(pid)
    return 0


def _decide(args: argparse.Namespace, approve: bool) -> int:
    state = loader.load(args.config)
    _, client, issuer = open_stack(args.data_dir)
    with client:
        store = ChangeStore(client, person_login(client, issuer, args.person))
        proposal = store.proposal(args.id, state.approvals.proposal_ttl)
        digest = args.hash or proposal.content_hash
        if approve:
            store.approve(args.id, digest)
        else:
            store.reject(args.id, digest)
    print(f"{'approved' if approve else 'rejected'} {args.id} ({digest})")
    return 0


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, True)


def _reject(args: argparse.Namespace) -> int:
    return _decide(args, False)


def _apply(args: argparse.Namespace) -> int:
    client, ctl = _controller(args)
    with client:
        review = ctl.apply(args.id)
    print(f"applied {args.id}: {', '.join(sorted(review.proposal.policies))}")
    for b in review.bound:
        print(f"bound {b.describe()}")
    return 0


def _bind(args: argparse.Namespace) -> int:
    client, ctl = _controller(args)
    with client:
        changed = ctl.bind()
    for b in changed:
        print(f"bound {b.describe()}")
    if not changed:
        print("every agent role already carries exactly its approved policy")
    return 0


def _list(args: argparse.Namespace) -> int:
    client, ctl = _controller(args)
    with client:
        for _author, pid in ctl.reader.proposal_ids():
            r = ctl.review(pid).result
            state = "approved" if r.verified else f"{len(r.signed)}/{r.threshold}"
            print(f"{pid} {state} {'; '.join(r.reasons())}")
    return 0


def _show(args: argparse.Namespace) -> int:
    client, ctl = _controller(args)
    with client:
        review = ctl.review(args.id)
    p, r = review.proposal, review.result
    print(
        json.dumps(
            {
                "id": p.id,
                "author": p.author,
                "content_hash": p.content_hash,
                "base_hash": p.base_hash,
                "expires_in_s": int(p.expires_at - time.time()),
                "policies": sorted(p.policies),
                "threshold": r.threshold,
                "signed": sorted(r.signed),
                "missing": r.missing,
                "verified": r.verified,
                "reasons": r.reasons(),
            },
            indent=2,
        )
    )
    for name, text in sorted(p.policies.items()):
        print(f"--- live {name}\n{review.live.get(name) or '(absent)'}\n+++ proposed\n{text}")
    return 0
