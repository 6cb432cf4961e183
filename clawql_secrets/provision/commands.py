"""CLI: ``plan`` (exit 0 = nothing to do, 2 = changes pending), ``apply``, and
``agent-secret put`` (an agent's injected secret, value from stdin, never echoed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clawql_secrets.cluster import bootstrap
from clawql_secrets.errors import ConfigError
from clawql_secrets.policy import generate, lint
from clawql_secrets.provision import loader
from clawql_secrets.provision.live import Provisioner
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.session import open_stack

EXIT_PENDING = 2


def register(sub: Any) -> None:
    for name, func, text in (
        ("plan", _plan, "show what apply would change (exit 2 if changes are pending)"),
        ("apply", _apply, "make OpenBao match clawql.yaml (idempotent)"),
    ):
        p = sub.add_parser(name, help=text)
        add_common(p)
        p.set_defaults(func=func)

    p = sub.add_parser(
        "agent-secret", help="set an agent's injected secret (value from stdin, never echoed)"
    )
    asub = p.add_subparsers(dest="agent_secret_command", metavar="ACTION")
    asub.required = True
    put = asub.add_parser(
        "put",
        help="store secret/data/tenants/T/agents/A/NAME as the secrets-writer identity",
        description="Reads the value from stdin (one trailing newline removed), or prompts "
        "without echo on a terminal. Writes a new version holding only FIELD; the "
        "secrets-writer identity cannot read it back, and nothing prints it.",
    )
    put.add_argument("--tenant", required=True)
    put.add_argument("--agent", required=True)
    put.add_argument("--name", required=True, help="a secret listed in the role's `secrets:`")
    put.add_argument("--field", default="value", help="the KV field (default: value)")
    put.add_argument("--data-dir", type=Path, default=Path(".clawql"), help="local stack data dir")
    put.set_defaults(func=_agent_secret_put)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("clawql.yaml"), help="desired state file")
    p.add_argument("--data-dir", type=Path, default=Path(".clawql"), help="local stack data dir")


def lint_or_raise(state: DesiredState, source: str, accessor: str) -> dict[str, str]:
    policies = generate.generate(state, accessor)
    findings = lint.lint_generated(policies, source, used=[r.policy_name for r in state.roles])
    if findings:
        raise ConfigError(
            "policy lint failed:\n  " + "\n  ".join(str(f) for f in findings),
            fix="change the roles in the desired state; nothing was applied",
        )
    return policies


def policy_drift(prov: Provisioner, policies: dict[str, str]) -> list[str]:
    out = []
    for name, text in sorted(policies.items()):
        live = prov.live_policy(name)
        if live != text:
            out.append(f"{'create' if live is None else 'update'} policy {name}")
    return out


def _plan(args: argparse.Namespace) -> int:
    state = loader.load(args.config)
    _, client, issuer = open_stack(args.data_dir)
    with client:
        prov = Provisioner(client, bootstrap.login(client, issuer, bootstrap.PROVISIONER))
        accessor = prov.accessor(state.exchange.mount) or "<new-mount>"
        policies = lint_or_raise(state, str(args.config), accessor)
        _, plan = prov.plan(state)
        drift = policy_drift(prov, policies)
    print(plan.render())
    if drift:
        print("\nPolicies differing from the desired state (change through `policy propose`):")
        for line in drift:
            print(f"  ~ {line}")
    return EXIT_PENDING if plan.pending or drift else 0


def _apply(args: argparse.Namespace) -> int:
    state = loader.load(args.config)
    _, client, issuer = open_stack(args.data_dir)
    with client:
        prov = Provisioner(client, bootstrap.login(client, issuer, bootstrap.PROVISIONER))
        lint_or_raise(state, str(args.config), prov.accessor(state.exchange.mount) or "x")
        result = prov.apply(state, progress=lambda m: print(f"  {m}", file=sys.stderr))
        policies = lint_or_raise(
            state, str(args.config), prov.accessor(state.exchange.mount) or "x"
        )
        drift = policy_drift(prov, policies)
    print(f"applied {len(result.applied)} change(s)" if result.changed else "no changes")
    if drift:
        print("policies still to be proposed and approved: " + ", ".join(drift))
    return 0


def _agent_secret_put(args: argparse.Namespace) -> int:
    from clawql_secrets.cluster import stack
    from clawql_secrets.provision import agent_secrets

    # Names first: a bad one is refused before anything is read or contacted.
    ref = agent_secrets.AgentSecretRef(args.tenant, args.agent, args.name, args.field)
    settings = stack.load_settings(args.data_dir.resolve())
    if not settings.settings_file.exists():
        raise ConfigError(
            f"no local stack in {settings.data_dir}",
            fix="run `clawql-secrets up` first, or pass --data-dir",
        )
    value = agent_secrets.read_value(
        sys.stdin.buffer,
        interactive=sys.stdin.isatty(),
        prompt=f"value of {ref.describe()} (not echoed): ",
    )
    version = agent_secrets.put_on_stack(settings, ref, value)
    print(f"stored {ref.describe()} as version {version} of {ref.path} (value not shown)")
    return 0
