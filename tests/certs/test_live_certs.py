"""``certs run`` against a real 3-node OpenBao: two services doing mTLS through
several renewals and a leader kill, without one failed handshake.

Setup, with no root token (it was revoked at bootstrap), as ``provision apply``
and ``policy apply`` would do it:

- as the PROVISIONER identity: PKI root ``pki`` and intermediate ``pki_int``
  (EC P-256), one server+client role per service as ``apply`` renders a
  ``services:`` entry (30 s certificates, no_store),
  and a ``certs`` JWT auth mount trusting the local workload issuer with a
  ``renewer`` role (batch tokens) — without policies, which it may not set;
- as the APPROVAL_CONTROLLER identity: the ``certs-renewer`` policy (sign
  CSRs for ``svc-*`` roles, nothing else) bound to that role.

The renewer runs as a real ``clawql-secrets certs run`` process; its identity
is a JWT file that a thread here re-mints every few seconds, as a platform
rotates a projected service-account token.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clawql_secrets.certs.authority import read_jwt
from clawql_secrets.certs.config import Identity
from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.provision.model import Service
from clawql_secrets.provision.render import service_role
from clawql_secrets.tlsca import write_private
from tests.certs.mtls import Peer, dns, spiffe

pytestmark = pytest.mark.cluster

TTL = 30
RUN_FOR = 62.0  # ~3 renewals of each service at 2/3 of 30 s
KILL_BEFORE = 0.5  # kill the leader this long before the first renewal is due
MAX_ROUNDS = 5000
RENEWER_SUBJECT = "clawql-certs-renewer"
SERVICES = ("alpha", "beta")
RENEWER_POLICY = """\
# certs-renewer: sign CSRs for internal services' roles; no issue (keys stay on
# the services' hosts), no other mount.
path "pki_int/sign/svc-*" { capabilities = ["update"] }
"""


def _leader(s: StackSettings, client: OpenBaoClient) -> str | None:
    for node in NODE_IDS:
        h = client.health(s.api_addr(node))
        if h and h.get("initialized") and not h.get("sealed") and not h.get("standby"):
            return node
    return None


def _setup_openbao(client: OpenBaoClient, issuer: LocalIssuer) -> None:
    prov = bootstrap.login(client, issuer, bootstrap.PROVISIONER)

    def w(path: str, body: dict[str, object]) -> dict[str, Any]:
        return client.write(path, body, token=prov)

    # PKI, as provision/live.py applies a `pki:` section.
    w("sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
    w("sys/mounts/pki_int", {"type": "pki", "config": {"max_lease_ttl": "43800h"}})
    w(
        "pki/root/generate/internal",
        {"common_name": "ClawQL Root CA", "ttl": "87600h", "key_type": "ec", "key_bits": 256},
    )
    csr = w(
        "pki_int/intermediate/generate/internal",
        {"common_name": "ClawQL Services CA", "key_type": "ec", "key_bits": 256},
    )
    signed = w(
        "pki/root/sign-intermediate",
        {
            "csr": (csr.get("data") or {}).get("csr", ""),
            "common_name": "ClawQL Services CA",
            "ttl": "43800h",
            "format": "pem_bundle",
        },
    )
    w(
        "pki_int/intermediate/set-signed",
        {"certificate": (signed.get("data") or {}).get("certificate", "")},
    )
    # The services' roles exactly as `apply` renders a `services:` entry.
    for name in SERVICES:
        svc = Service(name=name, common_name=dns(name), uri_sans=(spiffe(name),), ttl=TTL)
        w(f"pki_int/roles/{svc.pki_role}", service_role(svc))
    # The renewer's identity: a JWT role on its own mount, no policy yet.
    w("sys/auth/certs", {"type": "jwt", "description": "certificate renewers"})
    w(
        "auth/certs/config",
        {"jwt_validation_pubkeys": [issuer.public_pem()], "bound_issuer": issuer.issuer},
    )
    w(
        "auth/certs/role/renewer",
        {
            "role_type": "jwt",
            "bound_audiences": [bootstrap.WORKLOAD_AUDIENCE],
            "bound_subject": RENEWER_SUBJECT,
            "user_claim": "sub",
            "token_type": "batch",
            "token_ttl": "2m",
            "token_max_ttl": "5m",
        },
    )
    # The policy and its binding: the approval controller's part.
    ctl = bootstrap.login(client, issuer, bootstrap.APPROVAL_CONTROLLER)
    client.write("sys/policies/acl/certs-renewer", {"policy": RENEWER_POLICY}, token=ctl)
    client.write(
        "auth/certs/role/renewer",
        {"role_type": "jwt", "token_policies": ["certs-renewer"]},
        token=ctl,
    )


@dataclass
class Env:
    settings: StackSettings
    issuer: LocalIssuer
    root: Path
    jwt_file: Path
    config: Path


class JwtRefresher(threading.Thread):
    """Plays the platform: keeps a fresh 60 s workload JWT in the file."""

    def __init__(self, issuer: LocalIssuer, path: Path) -> None:
        super().__init__(name="jwt-refresher", daemon=True)
        self.issuer, self.path, self.stop = issuer, path, threading.Event()
        self.refresh()

    def refresh(self) -> None:
        jwt = self.issuer.mint(RENEWER_SUBJECT, bootstrap.WORKLOAD_AUDIENCE, ttl=60)
        write_private(self.path, jwt.encode())

    def run(self) -> None:
        while not self.stop.wait(10):
            self.refresh()


@pytest.fixture(scope="module")
def env(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=30) as client:
        _setup_openbao(client, issuer)
    root = tmp_path_factory.mktemp("certs")
    jwt_file = root / "identity" / "token"
    jwt_file.parent.mkdir(mode=0o700)
    services = []
    for name in SERVICES:
        d = root / name
        reload: dict[str, object] = (
            {"command": ["sh", "-c", f"echo reloaded >> {root / (name + '.reloads')}"]}
            if name == "alpha"
            else {"signal": "USR1", "pid_file": str(root / "beta.pid")}
        )
        services.append(
            {
                "name": name,
                "pki_role": f"svc-{name}",
                "common_name": dns(name),
                "uri_sans": [spiffe(name)],
                "ttl": TTL,
                "key_file": str(d / "tls.key"),
                "cert_file": str(d / "tls.crt"),
                "ca_file": str(d / "ca.crt"),
                "bundle_file": str(d / "tls.pem"),
                "reload": reload,
            }
        )
    (root / "beta.pid").write_text(f"{os.getpid()}\n")
    config = root / "certs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "openbao": {
                    "addrs": [live_stack.api_addr(n) for n in NODE_IDS],
                    "ca_file": str(live_stack.node_ca_dir / "ca.pem"),
                    "retry_for": 5,
                },
                "identity": {"mount": "certs", "role": "renewer", "jwt_file": str(jwt_file)},
                "pki_mount": "pki_int",
                "services": services,
                "schedule": {"jitter": 0.05, "backoff_initial": 0.5, "backoff_max": 3},
                "metrics": {"host": "127.0.0.1", "port": 0},
            }
        )
    )
    yield Env(live_stack, issuer, root, jwt_file, config)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clawql_secrets", "certs", *args]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("BAO_TOKEN", "VAULT_TOKEN")}


def _wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _metric(text: str, name: str, service: str) -> float:
    prefix = f'{name}{{service="{service}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{prefix!r} not in /metrics")


def test_renewer_identity_can_sign_csrs_and_nothing_else(env: Env) -> None:
    """The policy the approval controller bound: sign for svc-* roles, no issue, no reads."""
    jwt = env.issuer.mint(RENEWER_SUBJECT, bootstrap.WORKLOAD_AUDIENCE, ttl=60)
    with stack.client_for(env.settings, retry_for=30) as client:
        auth = client.write("auth/certs/login", {"role": "renewer", "jwt": jwt}, token="")
        token = str(auth["auth"]["client_token"])
        for path in ("pki_int/issue/svc-alpha", "pki/root/sign-intermediate"):
            with pytest.raises(OpenBaoError) as err:
                client.write(path, {"common_name": dns("alpha")}, token=token)
            assert err.value.status == 403, path
        with pytest.raises(OpenBaoError) as err:
            client.read("secret/data/ops/x", token=token)
        assert err.value.status == 403
        # Another subject's JWT does not log in as the renewer.
        other = env.issuer.mint("someone-else", bootstrap.WORKLOAD_AUDIENCE, ttl=60)
        with pytest.raises(OpenBaoError):
            client.write("auth/certs/login", {"role": "renewer", "jwt": other}, token="")


def test_mtls_through_renewals_and_a_leader_kill_without_a_failed_handshake(env: Env) -> None:
    refresher = JwtRefresher(env.issuer, env.jwt_file)
    refresher.start()
    log_path = env.root / "renewer.log"
    alpha = Peer("alpha", env.root / "alpha", "reread")
    beta = Peer("beta", env.root / "beta", "signal")
    previous = signal.signal(signal.SIGUSR1, lambda *_: beta.reload())
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _cli("run", "--config", str(env.config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
        )
    try:
        # First certificates, then both services start.
        _wait_for(
            lambda: all((env.root / n / "tls.key").exists() for n in SERVICES),
            30,
            "the first certificates",
        )
        _wait_for(lambda: "metrics on http" in log_path.read_text(), 10, "the metrics server")
        for name in SERVICES:
            for f in ("tls.key", "tls.crt", "ca.crt", "tls.pem"):
                assert stat.S_IMODE((env.root / name / f).stat().st_mode) == 0o600, (name, f)
        alpha.start()
        beta.start()
        metrics_url = (
            log_path.read_text().split("metrics on ", 1)[1].split()[0]
        )  # http://127.0.0.1:PORT/metrics

        # Kill the leader just before the first renewal is due, so that the
        # renewal falls into the election (2-3 s with performance_multiplier 1).
        first = httpx.get(metrics_url, timeout=5).text
        due = {
            n: _metric(first, "clawql_certs_next_attempt_timestamp_seconds", n) for n in SERVICES
        }
        first_due = min(due, key=due.__getitem__)
        kill_at = due[first_due] - KILL_BEFORE
        killed: tuple[str, int, float] | None = None
        rounds = handshakes = 0
        start = time.monotonic()
        with stack.client_for(env.settings, retry_for=30) as client:
            while time.monotonic() - start < RUN_FOR and rounds < MAX_ROUNDS:
                rounds += 1
                handshakes += alpha.call(beta) + beta.call(alpha)
                if killed is None and time.time() >= kill_at:
                    lead = _leader(env.settings, client)
                    pid = stack.child_pid(env.settings, lead) if lead else None
                    if lead and pid:
                        os.kill(pid, signal.SIGKILL)
                        killed = (lead, pid, time.time())
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.05)
            metrics = httpx.get(metrics_url, timeout=5).text
        failures = alpha.failures + beta.failures
        assert failures == [], failures[:5]
        assert killed is not None, "no leader found to kill"
        with stack.client_for(env.settings, retry_for=30) as client:
            assert _leader(env.settings, client) not in (None, killed[0])
        # The renewal due during the election happened, and peers used the new certificate.
        peer = alpha if first_due == "alpha" else beta
        after_kill = sorted(t - killed[2] for t in peer.serials_seen_by_peers.values())
        assert any(0 < t < 15 for t in after_kill), (first_due, after_kill)
        print(
            f"\n{handshakes} handshakes in {rounds} rounds, 0 failed; leader {killed[0]} killed "
            f"{KILL_BEFORE}s before {first_due}'s renewal; new certificate seen "
            f"{min(t for t in after_kill if t > 0):.1f}s after the kill; renewals "
            + ", ".join(
                f"{n}={_metric(metrics, 'clawql_certs_renewals_total', n):.0f}" for n in SERVICES
            )
            + "; failures "
            + str(
                [ln for ln in metrics.splitlines() if ln.startswith("clawql_certs_failures_total")]
            )
        )
        assert handshakes == 2 * rounds and handshakes >= 200, (handshakes, rounds)
        assert alpha.served + beta.served == handshakes
        # Several renewals, each one seen by the peer in a handshake.
        for name, peer in (("alpha", alpha), ("beta", beta)):
            assert len(peer.serials_seen_by_peers) >= 3, (name, peer.serials_seen_by_peers)
            assert _metric(metrics, "clawql_certs_renewals_total", name) >= 3
            assert _metric(metrics, "clawql_certs_valid", name) == 1.0
            assert _metric(metrics, "clawql_certs_seconds_until_expiry", name) > 0
        # Both reload paths were used: a command for alpha, a signal for beta.
        assert len((env.root / "alpha.reloads").read_text().splitlines()) >= 3
        assert beta.reloads >= 3
        # The files in place pass `certs check`.
        ok = subprocess.run(
            _cli("check", "--config", str(env.config)), capture_output=True, env=_clean_env()
        )
        assert ok.returncode == 0, ok.stdout.decode() + ok.stderr.decode()
    finally:
        proc.terminate()
        proc.wait(15)
        alpha.stop()
        beta.stop()
        signal.signal(signal.SIGUSR1, previous)
        refresher.stop.set()
        refresher.join(5)
    assert proc.returncode == 0
    log_text = log_path.read_text()
    # Neither the workload JWT nor any key material reaches the renewer's log.
    assert read_jwt(Identity(jwt_file=env.jwt_file)) not in log_text
    assert "PRIVATE KEY" not in log_text and "eyJ" not in log_text


def test_check_fails_when_certificates_are_within_the_threshold(env: Env) -> None:
    """The renewer is stopped: soon the certificates are too close to expiry."""
    out = subprocess.run(
        _cli("check", "--config", str(env.config), "--threshold", "3600", "--json"),
        capture_output=True,
        env=_clean_env(),
    )
    assert out.returncode == 1
    report = yaml.safe_load(out.stdout)
    assert report["ok"] is False
    assert {s["status"] for s in report["services"]} == {"expiring"}


def test_run_once_obtains_missing_certificates_and_exits(env: Env) -> None:
    """The init-container mode: obtain, write, exit 0; `check` then passes."""
    JwtRefresher(env.issuer, env.jwt_file)  # one fresh JWT, no thread
    raw = yaml.safe_load(env.config.read_text())
    for svc in raw["services"]:
        for key in ("key_file", "cert_file", "ca_file", "bundle_file"):
            svc[key] = svc[key].replace(str(env.root), str(env.root / "once"))
        svc["reload"] = {"command": ["true"]}
    raw.pop("metrics")
    once = env.root / "once.yaml"
    once.write_text(yaml.safe_dump(raw))
    run = subprocess.run(
        _cli("run", "--config", str(once), "--once"), capture_output=True, env=_clean_env()
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    ok = subprocess.run(_cli("check", "--config", str(once)), capture_output=True, env=_clean_env())
    assert ok.returncode == 0, ok.stdout.decode()
