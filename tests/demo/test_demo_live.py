"""`clawql-secrets demo` as an end-to-end test: the whole promise on a live stack."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clawql_secrets.cluster import prometheus, stack
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
    # The verify step: the shipper ships every stream, and `audit verify --prometheus` held
    # the log to the tree heads the stack's Prometheus recorded.
    by_step = {e["step"]: e["shown"] for e in log}
    shipper = next(v for k, v in by_step.items() if k.startswith("audit shipper: every stream ok"))
    assert shipper and all(v["state"] == "ok" for v in shipper.values())
    verified = next(v for k, v in by_step.items() if k.startswith("audit verify --prometheus"))
    assert verified["tree heads recorded by Prometheus, checked"] > 0
    assert "--prometheus http://" in verified["command"]
    # and the stack's witness (its own process and key) cosigned every stream's newest head
    assert "--witness-key clawql.local/witness+" in verified["command"]
    assert "--witness-url http://" in verified["command"]
    assert all(st["cosigned_by"] for st in verified["streams"]), verified["streams"]
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


# -- Prometheus in the stack, and a shipper that cannot ship (issue 14) -------------------
# These share the demo's stack; they run after the demo and the last one stops the stack.


def _prometheus(s: StackSettings, path: str, **params: str) -> Any:
    resp = httpx.get(f"{s.prometheus_addr}{path}", params=params, timeout=5, trust_env=False)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def _until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_prometheus_scrapes_the_stack_with_the_alert_rules_loaded(
    live_stack: StackSettings,
) -> None:
    s = live_stack
    st = _until(
        "every scrape target up",
        lambda: (
            (p := stack.status(s)["prometheus"]).get("targets", {}).get("clawql-audit") == "up"
            and p["targets"].get("clawql-gateway") == "up"
            and p["targets"].get("clawql-bridge") == "up"
            and p
        ),
    )
    assert st["up"] and st["pid"] and st["url"] == f"http://127.0.0.1:{s.base_port + 90}"
    # The repository's rules, as loaded: same file, valid, every rule known to the server.
    loaded = prometheus.rules_file(s)
    assert loaded.read_text() == prometheus.RULES_SOURCE.read_text()
    check = subprocess.run(["promtool", "check", "rules", str(loaded)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load(loaded.read_text())
    assert st["alert_rules"] == sum(len(g["rules"]) for g in rules["groups"])
    # It records what the shipper exports, interval included (the alert rules use it).
    up = _prometheus(s, "/api/v1/query", query="clawql_audit_checkpoint_interval_seconds")
    assert {r["metric"]["stream"] for r in up["result"]} == set(NODE_IDS)
    assert all(float(r["value"][1]) == stack.LOCAL_CHECKPOINT_SECONDS for r in up["result"])
    # And what the HSM bridge exports: its token, and the nodes' unseal calls, by node.
    token = _prometheus(s, "/api/v1/query", query="clawql_bridge_token_available")["result"]
    assert [float(r["value"][1]) for r in token] == [1.0]
    sealed = _until(
        "the nodes' seal calls recorded",
        lambda: _prometheus(
            s,
            "/api/v1/query",
            query='sum by (caller) (clawql_bridge_seal_operations_total{outcome="ok"})',
        )["result"],
    )
    assert {r["metric"]["caller"] for r in sealed} <= set(NODE_IDS)


@contextlib.contextmanager
def _unwritable(dirs: list[Path]) -> Iterator[None]:
    """The store's directories refuse new files (root ignores modes: the immutable flag)."""
    root = os.geteuid() == 0
    done: list[Path] = []
    try:
        for d in dirs:
            if root:
                made = subprocess.run(["chattr", "+i", str(d)], capture_output=True)
                if made.returncode != 0:
                    pytest.skip(f"cannot make {d} immutable here: {made.stderr!r}")
            else:
                d.chmod(0o500)
            done.append(d)
        yield
    finally:
        for d in done:
            if root:
                subprocess.run(["chattr", "-i", str(d)], check=True)
            else:
                d.chmod(0o700)


def _status_cli(s: StackSettings) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "clawql_secrets", "status", "--data-dir", str(s.data_dir)]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def test_a_shipper_that_cannot_store_is_loud(live_stack: StackSettings) -> None:
    """Issue 14: the store refuses writes while the audit files grow (every `status` is an
    operator login, audited). Within 1.5 checkpoint intervals the stream is stalled in
    `status` (exit 4), in the shipper's metrics and in the stack's Prometheus, whose alert
    fires; once the store takes writes again, all is ok (exit 0)."""
    s = live_stack
    store = s.audit_dir / "store"
    dirs = [store / top for top in ("segments", "checkpoints")]
    dirs += [d / n for d in dirs for n in NODE_IDS if (d / n).is_dir()]
    with _unwritable(dirs):

        def stalled() -> dict[str, Any] | None:
            streams = stack.status(s)["audit"]["streams"]
            return next((v for v in streams.values() if v["state"] == "stalled"), None)

        seen = _until("a stalled stream", stalled, timeout=60)
        assert seen["last_error"]["kind"] == "store"
        assert "cannot write" in seen["last_error"]["message"]
        assert seen["lag_entries"] > 0 and seen["lag_seconds"] > 1.5 * seen["interval_seconds"]
        code, doc = _status_cli(s)
        assert code == 4 and doc["audit"]["healthy"] is False
        assert doc["audit"]["streams"][seen["stream"]]["state"] == "stalled"
        metrics = httpx.get(
            f"http://127.0.0.1:{s.audit_metrics_port}/metrics", timeout=5, trust_env=False
        ).text
        assert f'clawql_audit_stream_stalled{{stream="{seen["stream"]}"}} 1.0' in metrics

        def firing() -> bool:
            alerts = _prometheus(s, "/api/v1/alerts")["alerts"]
            return any(
                a["labels"]["alertname"] == "ClawQLAuditStreamStalled"
                and a["labels"]["stream"] == seen["stream"]
                and a["state"] == "firing"
                for a in alerts
            )

        _until("ClawQLAuditStreamStalled firing in Prometheus", firing)
    _until(
        "every stream ok again",
        lambda: all(v["state"] == "ok" for v in stack.status(s)["audit"]["streams"].values()),
    )
    code, doc = _status_cli(s)
    assert code == 0, doc["audit"]["streams"]
    # The failure stays visible after it is over.
    assert doc["audit"]["streams"][seen["stream"]]["last_error"]["kind"] == "store"


def test_down_stops_prometheus(live_stack: StackSettings) -> None:
    """Last in this module: it stops the stack (the fixture's own `down` then finds nothing)."""
    s = live_stack
    pid = stack.child_pid(s, "prometheus")
    assert pid is not None
    assert stack.down(s)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{s.prometheus_addr}/-/ready", timeout=2, trust_env=False)
