"""The config file's negative cases, and ``certs check`` on files in every state."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawql_secrets.certs import config as cfgmod
from clawql_secrets.certs.check import check_service
from clawql_secrets.certs.renewer import Renewer
from clawql_secrets.cli import main
from clawql_secrets.errors import ConfigError
from tests.certs.conftest import FakeCA, FakeClock, make_config


def _raw(tmp_path: Path) -> dict[str, Any]:
    return make_config(tmp_path).model_dump(mode="json")


def _set(raw: dict[str, Any], dotted: str, value: object) -> None:
    node: Any = raw
    *path, last = dotted.split(".")
    for p in path:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("services", []),
        ("services.0.name", "Alpha!"),
        ("services.0.common_name", "alpha..internal"),
        ("services.0.common_name", "*.svc.clawql.internal"),
        ("services.0.uri_sans", ["not a uri"]),
        ("services.0.ttl", 5),
        ("services.0.reload", {"command": ["x"], "signal": "HUP"}),
        ("services.0.reload", {"signal": "KILL", "pid_file": "/run/x.pid"}),
        ("services.0.reload", {"signal": "HUP"}),
        ("services.0.reload", {"command": []}),
        ("services.0.extra", 1),
        ("identity.token", "hvs.static"),
        ("identity.mount", "../sys"),
        ("openbao.addrs", []),
        ("schedule.jitter", 0.5),
        ("schedule.backoff_initial", 100),
    ],
    ids=lambda v: str(v)[:30],
)
def test_invalid_config_is_refused_with_where(tmp_path: Path, field: str, value: object) -> None:
    raw = _raw(tmp_path)
    _set(raw, field, value)
    path = tmp_path / "certs.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        cfgmod.load(path)
    assert "is invalid at" in err.value.message


def test_two_services_may_not_share_a_file(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    second = dict(raw["services"][0], name="beta")
    raw["services"].append(second)
    path = tmp_path / "certs.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="distinct"):
        cfgmod.load(path)


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        cfgmod.load(tmp_path / "nope.yaml")


def _issued(tmp_path: Path, clock: FakeClock, ca: FakeCA) -> cfgmod.CertsConfig:
    cfg = make_config(tmp_path, ttl=600)
    Renewer(cfg, ca, clock=clock, rng=random.Random(1), reloader=lambda s: None).step()
    return cfg


def test_check_states(tmp_path: Path, clock: FakeClock, ca: FakeCA) -> None:
    cfg = make_config(tmp_path, ttl=600)
    svc = cfg.services[0]
    assert check_service(svc, clock()).status == "missing"
    cfg = _issued(tmp_path, clock, ca)
    svc = cfg.services[0]
    r = check_service(svc, clock())
    assert (r.ok, r.status) == (True, "ok")
    # The default threshold is a sixth of the ttl (100 s of 600).
    assert check_service(svc, clock() + 499).ok
    assert check_service(svc, clock() + 501).status == "expiring"
    assert check_service(svc, clock() + 601).status == "expired"
    assert check_service(svc, clock(), threshold=3600).status == "expiring"


def test_check_flags_a_key_that_is_not_the_certificates(
    tmp_path: Path, clock: FakeClock, ca: FakeCA
) -> None:
    cfg = _issued(tmp_path, clock, ca)
    svc = cfg.services[0]
    (tmp_path / "other").mkdir()
    other = _issued(tmp_path / "other", clock, ca)
    svc.key_file.write_bytes(other.services[0].key_file.read_bytes())
    r = check_service(svc, clock())
    assert (r.ok, r.status) == (False, "invalid")
    assert "does not match" in r.detail


def test_check_flags_a_key_readable_by_others(tmp_path: Path, clock: FakeClock, ca: FakeCA) -> None:
    cfg = _issued(tmp_path, clock, ca)
    cfg.services[0].key_file.chmod(0o644)
    r = check_service(cfg.services[0], clock())
    assert (r.ok, r.status) == (False, "exposed")


def test_check_cli_exit_status(
    tmp_path: Path, clock: FakeClock, ca: FakeCA, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fake clock is in 2030: certificates from it are "not yet valid" today,
    # so build the config on a real-time clock for the CLI.
    now = FakeClock(dt.datetime.now(dt.UTC).timestamp())
    cfg = _issued(tmp_path, now, FakeCA(now))
    path = tmp_path / "certs.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["certs", "check", "--config", str(path)]) == 0
    assert main(["certs", "check", "--config", str(path), "--threshold", "3600"]) == 1
    out = capsys.readouterr().out
    assert "ok   alpha" in out and "FAIL alpha: expiring" in out
    assert "PRIVATE" not in out
