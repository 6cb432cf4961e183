"""The renewal loop against a fake clock and an in-memory CA: no OpenBao, real files."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from clawql_secrets.certs import files
from clawql_secrets.certs.config import CertsConfig, Service
from clawql_secrets.certs.metrics import registry_for
from clawql_secrets.certs.renewer import Renewer
from clawql_secrets.errors import NotLeaderError, ProcessError
from tests.certs.conftest import FakeCA, FakeClock, make_config


class Reloads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False

    def __call__(self, service: Service) -> None:
        self.calls.append(service.name)
        if self.fail:
            raise ProcessError("reload refused")


def renewer(
    cfg: CertsConfig, ca: FakeCA, clock: FakeClock, reloads: Reloads | None = None
) -> Renewer:
    return Renewer(cfg, ca, clock=clock, rng=random.Random(11), reloader=reloads or Reloads())


def serial(cfg: CertsConfig) -> str:
    return files.read_installed(cfg.services[0]).serial


def test_first_step_issues_writes_0600_and_schedules_at_two_thirds(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path, ttl=900, reload={"command": ["true"]})
    reloads = Reloads()
    r = renewer(cfg, ca, clock, reloads)
    wake = r.step()
    svc = cfg.services[0]
    assert ca.calls == 1 and reloads.calls == ["alpha"]
    assert wake == pytest.approx(clock() + 600)
    for f in svc.files():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # The key was generated here and matches the certificate; the bundle holds both.
    info = files.read_installed(svc)
    assert info.not_after == pytest.approx(clock() + 900, abs=1)
    bundle = svc.bundle_file.read_bytes() if svc.bundle_file else b""
    assert svc.key_file.read_bytes() in bundle and svc.cert_file.read_bytes() in bundle
    assert svc.ca_file.read_bytes() == ca.pem
    # No temporary file left behind.
    assert sorted(p.name for p in svc.key_file.parent.iterdir()) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
        "tls.pem",
    ]


def test_renews_with_a_new_key_at_two_thirds_and_not_before(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path, ttl=900)
    r = renewer(cfg, ca, clock)
    r.step()
    first_key = cfg.services[0].key_file.read_bytes()
    first = serial(cfg)
    clock.advance(599)
    r.step()
    assert ca.calls == 1 and serial(cfg) == first
    clock.advance(1)
    r.step()
    assert ca.calls == 2 and serial(cfg) != first
    assert cfg.services[0].key_file.read_bytes() != first_key


def test_outage_keeps_the_certificate_retries_with_backoff_until_and_after_expiry(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path, ttl=900)
    r = renewer(cfg, ca, clock)
    r.step()
    before = cfg.services[0].cert_file.read_bytes()
    not_after = files.read_installed(cfg.services[0]).not_after
    ca.fail = NotLeaderError("OpenBao down")
    clock.t = r.step()  # the renewal time
    attempts: list[float] = []
    while clock() < not_after + 120:
        wake = r.step()
        attempts.append(clock())
        clock.t = wake
    # Kept the certificate in place, untouched.
    assert cfg.services[0].cert_file.read_bytes() == before
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Backoff grows, never beyond its cap...
    assert gaps[0] <= 1 and max(gaps) <= 30
    assert gaps[:5] == sorted(gaps[:5])
    # ...and one attempt lands in the last seconds before expiry.
    assert any(not_after - 1 <= t < not_after for t in attempts)
    # Retries go on after expiry.
    assert sum(t > not_after for t in attempts) >= 3
    text = generate_latest(registry_for(r.metrics)).decode()
    assert 'clawql_certs_valid{service="alpha"} 0.0' in text
    labels = 'error="NotLeaderError",service="alpha",stage="issue"'
    assert f"clawql_certs_failures_total{{{labels}}} {len(attempts)}.0" in text
    # OpenBao back: a new certificate at the next attempt.
    ca.fail = None
    clock.t = r.step()
    r.step()
    assert cfg.services[0].cert_file.read_bytes() != before
    assert r.failures() == {"alpha": 0}
    text = generate_latest(registry_for(r.metrics)).decode()
    assert 'clawql_certs_valid{service="alpha"} 1.0' in text
    assert 'clawql_certs_consecutive_failures{service="alpha"} 0.0' in text


def test_a_failed_reload_is_retried_without_issuing_again(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path, reload={"signal": "HUP", "pid_file": str(tmp_path / "pid")})
    reloads = Reloads()
    reloads.fail = True
    r = renewer(cfg, ca, clock, reloads)
    r.step()
    assert ca.calls == 1 and len(reloads.calls) == 1
    reloads.fail = False
    clock.t = r.step()
    r.step()
    assert ca.calls == 1 and len(reloads.calls) == 2
    assert r.failures() == {"alpha": 0}


def test_restart_keeps_a_valid_certificate_in_place(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path)
    renewer(cfg, ca, clock).step()
    first = serial(cfg)
    clock.advance(60)
    r2 = renewer(cfg, ca, clock)
    r2.step()
    assert ca.calls == 1 and serial(cfg) == first
    # ...but not an expired one.
    clock.advance(900)
    renewer(cfg, ca, clock).step()
    assert ca.calls == 2 and serial(cfg) != first


def _other_key(ca: FakeCA) -> None:
    ca.public_key_override = ec.generate_private_key(ec.SECP256R1()).public_key()


def _wrong_cn(ca: FakeCA) -> None:
    ca.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "beta.svc.clawql.internal")])


def _expired(ca: FakeCA) -> None:
    ca.validity = (
        dt.datetime.fromtimestamp(ca.clock() - 100, dt.UTC),
        dt.datetime.fromtimestamp(ca.clock() - 1, dt.UTC),
    )


def _other_issuer(ca: FakeCA) -> None:
    other = FakeCA(ca.clock)
    ca.key = other.key  # signs with a key that is not the CA certificate's


@pytest.mark.parametrize(
    "misbehave",
    [_other_key, _wrong_cn, _expired, _other_issuer],
    ids=["cert-for-another-key", "wrong-common-name", "already-expired", "not-signed-by-ca"],
)
def test_a_misissued_certificate_is_never_written(
    tmp_path: Path, ca: FakeCA, clock: FakeClock, misbehave: object
) -> None:
    cfg = make_config(tmp_path)
    r = renewer(cfg, ca, clock)
    r.step()
    before = {f: f.read_bytes() for f in cfg.services[0].files()}
    clock.t = r.step()
    misbehave(ca)  # type: ignore[operator]
    r.step()
    assert r.failures() == {"alpha": 1}
    assert {f: f.read_bytes() for f in cfg.services[0].files()} == before
    text = generate_latest(registry_for(r.metrics)).decode()
    assert 'error="IntegrityError"' in text


def test_unwritable_target_is_a_write_failure_and_leaves_no_temp_files(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path)
    svc = cfg.services[0]
    svc.key_file.mkdir(parents=True)  # a directory where the key should go: rename fails
    r = renewer(cfg, ca, clock)
    r.step()
    assert r.failures() == {"alpha": 1}
    assert not any(p.name.endswith(".tmp") for p in svc.key_file.parent.iterdir())
    text = generate_latest(registry_for(r.metrics)).decode()
    assert 'stage="write"' in text
    assert 'error="ConfigError"' in text


def test_a_rename_failing_half_way_puts_back_what_it_replaced(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> None:
    cfg = make_config(tmp_path)
    svc = cfg.services[0]
    r = renewer(cfg, ca, clock)
    r.step()
    before = {f: f.read_bytes() for f in (svc.ca_file, svc.cert_file, svc.key_file)}
    # The CA file is renamed first, then the bundle: make that one fail.
    assert svc.bundle_file is not None
    svc.bundle_file.unlink()
    svc.bundle_file.mkdir()
    (svc.bundle_file / "x").write_text("x")
    rotated = FakeCA(clock)  # a new issuer: the CA file's content changes
    ca.key, ca.cert = rotated.key, rotated.cert
    clock.t = r.step()
    r.step()
    assert r.failures() == {"alpha": 1}
    assert {f: f.read_bytes() for f in before} == before
    files.read_installed(svc)  # key and certificate still belong together


def test_metrics_carry_no_key_material(tmp_path: Path, ca: FakeCA, clock: FakeClock) -> None:
    cfg = make_config(tmp_path)
    r = renewer(cfg, ca, clock)
    r.step()
    text = generate_latest(registry_for(r.metrics)).decode()
    key = cfg.services[0].key_file.read_text()
    body = "".join(key.splitlines()[1:-1])
    assert body[:40] not in text and "PRIVATE" not in text
    assert 'clawql_certs_renewals_total{service="alpha"} 1.0' in text
    assert 'clawql_certs_expiry_timestamp_seconds{service="alpha"}' in text
