"""`clawql-secrets demo` as an end-to-end test: the whole promise on a live stack."""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.demo.run import run
from clawql_secrets.provision.localstack import provision_example
from clawql_secrets.scan import commands as scan_commands
from tests.provision.live_example import private_example

pytestmark = pytest.mark.cluster
ADMIN = f"clawql_admin_d{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def provisioned(
    live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackSettings]:
    with private_example(tmp_path_factory.mktemp("demo"), ADMIN) as path:
        provision_example(live_stack, lambda _: None, path)
        yield live_stack


def _canary() -> str:
    """A GitHub-token-shaped value, made at run time (nothing token-like in source)."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


def test_demo_promise_holds_at_every_step(
    provisioned: StackSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    log: list[dict[str, Any]] = []
    canary = _canary()
    steps = run(provisioned, lambda name, verdict, shown: log.append(
        {"step": name, "verdict": verdict, "shown": shown}), canary=canary)  # fmt: skip
    assert steps and all(s.ok for s in steps)
    names = " | ".join(s.name for s in steps)
    for expected in ("dynamic PostgreSQL user", "refused", "DELETE", "anomaly", "audit verify",
                     "inclusion proof"):  # fmt: skip
        assert expected in names
    # The HTTP part: every step present, in order, and OK.
    san = "spiffe://clawql/tenants/acme/agents/bot-i"
    http_steps = [
        "the operator stores acme/bot-i's secret 'github_token'",
        "acme/bot-i calls an mTLS service through the gateway: the agent saw only the result",
        f"meanwhile the destination saw a client cert for {san} valid for 300 s and the right "
        "token",
        "the same call to a destination off the allow-list is refused",
        "DELETE the acme/bot-i session: its next call is refused",
    ]
    got = [s.name for s in steps]
    at = [next(i for i, n in enumerate(got) if n.startswith(e)) for e in http_steps]
    assert at == sorted(at)
    assert all(steps[i].ok for i in at)
    by_name = {e["step"]: e for e in log}
    saw = by_name[got[at[1]]]["shown"]["agent saw"]["result"]
    assert json.loads(saw["body"]) == {"hello": san, "authorized": True}
    cert = by_name[got[at[2]]]["shown"]["destination saw"]
    assert cert["uri_sans"] == [san] and cert["token matched"] is True
    assert 290 <= cert["not_after - request time (s)"] <= 300
    assert cert["serial"]
    # What the demo printed is what an agent or operator may see: no credential in it.
    text = json.dumps(log, default=str)
    assert "password" not in text.lower()
    assert re.search(r"\b(hvs|hvb|s|b)\.[A-Za-z0-9_-]{20,}", text) is None
    # The injected token (canary): not in the output, the gateway's log, OpenBao's
    # audit logs (HMACed there) or the shipped audit log.
    needles = [canary.encode(), base64.b64encode(canary.encode())]
    assert not any(n.decode() in text for n in needles)
    s = provisioned
    searched = list(_files(s.log_dir, *(s.audit_log(n).parent for n in NODE_IDS), s.audit_dir))
    assert s.log_dir / "gateway.log" in searched
    for path in searched:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"the injected token is in {path}"
    # A newcomer's next step: `scan` of the data dir after all that traffic finds only
    # the protected bootstrap trust (session ids and lease ids in logs are identifiers).
    capsys.readouterr()
    parser = argparse.ArgumentParser(prog="clawql-secrets")
    scan_commands.register(parser.add_subparsers())
    args = parser.parse_args(["scan", str(s.data_dir), "--json"])
    code = args.func(args)
    doc = json.loads(capsys.readouterr().out)
    assert [f for f in doc["findings"] if f["category"] != "bootstrap"] == []
    assert code == 0
