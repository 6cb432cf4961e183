"""The OpenBao adapter (through httpx.MockTransport) and the two ways to reload a service."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from clawql_secrets.certs import reload as reload_mod
from clawql_secrets.certs.authority import OpenBaoAuthority, read_jwt
from clawql_secrets.certs.config import CertsConfig, Identity
from clawql_secrets.certs.x509check import csr_for, new_key
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import AuthenticationError, ConfigError, OpenBaoError, ProcessError
from tests.certs.conftest import FakeCA, FakeClock, make_config

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZW5ld2VyIn0.c2lnbmF0dXJl"


class FakeOpenBao:
    """Answers login and sign like OpenBao; records every request body."""

    def __init__(self, ca: FakeCA, cfg: CertsConfig) -> None:
        self.ca, self.cfg = ca, cfg
        self.bodies: list[tuple[str, str, dict[str, object]]] = []
        self.logins = 0
        self.refuse_next_sign = False
        self.login_status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        path = request.url.path
        self.bodies.append((path, request.headers.get("X-Vault-Token", ""), body))
        if path == "/v1/auth/certs/login":
            if self.login_status != 200:
                return httpx.Response(self.login_status, json={"errors": ["invalid jwt"]})
            self.logins += 1
            return httpx.Response(
                200,
                json={"auth": {"client_token": f"b.token{self.logins}", "lease_duration": 120}},
            )
        if path == "/v1/pki_int/sign/svc-alpha":
            if self.refuse_next_sign:
                self.refuse_next_sign = False
                return httpx.Response(403, json={"errors": ["permission denied"]})
            leaf, chain = self.ca.sign(self.cfg.services[0], body["csr"].encode())
            return httpx.Response(
                200,
                json={
                    "data": {"certificate": leaf.decode(), "ca_chain": [c.decode() for c in chain]}
                },
            )
        return httpx.Response(404, json={"errors": ["no handler"]})


@pytest.fixture
def setup(
    tmp_path: Path, ca: FakeCA, clock: FakeClock
) -> tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority]:
    cfg = make_config(tmp_path)
    cfg.identity.jwt_file.write_text(JWT + "\n")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    fake = FakeOpenBao(ca, cfg)
    client = OpenBaoClient(
        ["https://bao.test"], tmp_path / "ca.pem", transport=httpx.MockTransport(fake), retry_for=0
    )
    return cfg, fake, OpenBaoAuthority(client, cfg.identity, "pki_int", clock)


def test_logs_in_with_the_jwt_file_and_sends_only_a_csr(
    setup: tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority],
) -> None:
    cfg, fake, authority = setup
    svc = cfg.services[0]
    leaf, chain = authority.sign(svc, csr_for(svc, new_key()))
    assert leaf.startswith(b"-----BEGIN CERTIFICATE") and chain
    (login_path, login_tok, login), (sign_path, sign_tok, sign) = fake.bodies
    assert login_path == "/v1/auth/certs/login" and login_tok == ""
    assert login == {"role": "renewer", "jwt": JWT}
    assert sign_path == "/v1/pki_int/sign/svc-alpha" and sign_tok == "b.token1"
    assert str(sign["csr"]).startswith("-----BEGIN CERTIFICATE REQUEST")
    assert "PRIVATE" not in json.dumps(sign)
    assert sign["ttl"] == "900s" and sign["uri_sans"] == "spiffe://clawql.internal/svc/alpha"


def test_token_is_reused_for_half_its_ttl_then_renewed_by_a_new_login(
    setup: tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority], clock: FakeClock
) -> None:
    cfg, fake, authority = setup
    svc = cfg.services[0]
    authority.sign(svc, csr_for(svc, new_key()))
    clock.advance(59)
    authority.sign(svc, csr_for(svc, new_key()))
    assert fake.logins == 1
    clock.advance(2)
    authority.sign(svc, csr_for(svc, new_key()))
    assert fake.logins == 2


def test_a_403_drops_the_token_and_logs_in_again_once(
    setup: tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority],
) -> None:
    cfg, fake, authority = setup
    svc = cfg.services[0]
    authority.sign(svc, csr_for(svc, new_key()))
    fake.refuse_next_sign = True
    authority.sign(svc, csr_for(svc, new_key()))
    assert fake.logins == 2


def test_a_refused_login_is_an_authentication_error_without_the_jwt(
    setup: tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority],
) -> None:
    cfg, fake, authority = setup
    fake.login_status = 400
    with pytest.raises(AuthenticationError) as err:
        authority.sign(cfg.services[0], csr_for(cfg.services[0], new_key()))
    assert JWT not in err.value.diagnostics()
    assert JWT not in str(err.value.__cause__)


def test_an_unknown_role_is_an_openbao_error(
    setup: tuple[CertsConfig, FakeOpenBao, OpenBaoAuthority],
) -> None:
    cfg, _, authority = setup
    svc = cfg.services[0].model_copy(update={"pki_role": "svc-other"})
    with pytest.raises(OpenBaoError) as err:
        authority.sign(svc, csr_for(svc, new_key()))
    assert err.value.status == 404


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the workload JWT"),
        ("not-a-jwt", "does not hold a JWT"),
        ("a." * 9000 + "b", "larger than 16 KiB"),
    ],
    ids=["missing", "not-a-jwt", "oversized"],
)
def test_bad_jwt_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_jwt(Identity(jwt_file=path))
    if content:
        assert content[:20] not in err.value.diagnostics()


# -- reload ------------------------------------------------------------------


def test_reload_command_runs_with_the_service_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = make_config(
        tmp_path,
        reload={
            "command": [
                sys.executable,
                "-c",
                f"import os; open({str(out)!r}, 'w').write(os.environ['CLAWQL_CERTS_SERVICE'])",
            ]
        },
    )
    reload_mod.reload(cfg.services[0])
    assert out.read_text() == "alpha"


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-c", "raise SystemExit(3)"], ["/nonexistent/reloader"]],
    ids=["non-zero-exit", "missing-binary"],
)
def test_reload_command_failures_are_process_errors(tmp_path: Path, command: list[str]) -> None:
    cfg = make_config(tmp_path, reload={"command": command})
    with pytest.raises(ProcessError):
        reload_mod.reload(cfg.services[0])


def test_reload_signal_reaches_the_pid_in_the_file(tmp_path: Path) -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, _: got.append(signum))
    try:
        (tmp_path / "svc.pid").write_text(f"{os.getpid()}\n")
        cfg = make_config(
            tmp_path, reload={"signal": "SIGUSR2", "pid_file": str(tmp_path / "svc.pid")}
        )
        reload_mod.reload(cfg.services[0])
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs between bytecodes of the main thread
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert got == [signal.SIGUSR2]


@pytest.mark.parametrize(
    ("pid_text", "message"),
    [
        (None, "cannot read a pid"),
        ("abc", "cannot read a pid"),
        ("1", "refusing"),
        ("0", "refusing"),
    ],
    ids=["missing", "garbage", "init", "zero"],
)
def test_reload_signal_refuses_bad_pid_files(
    tmp_path: Path, pid_text: str | None, message: str
) -> None:
    pid_file = tmp_path / "svc.pid"
    if pid_text is not None:
        pid_file.write_text(pid_text)
    cfg = make_config(tmp_path, reload={"signal": "HUP", "pid_file": str(pid_file)})
    with pytest.raises(ProcessError, match=message):
        reload_mod.reload(cfg.services[0])
