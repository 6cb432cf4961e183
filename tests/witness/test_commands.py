"""`audit witness init` and the witness configuration file."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.cosignature import WitnessKey, WitnessSigner
from clawql_secrets.cli import main
from clawql_secrets.errors import ConfigError
from clawql_secrets.witness.config import (
    WitnessConfig,
    WitnessLogConfig,
    load_witness_config,
    witness_command,
    write_witness_config,
)
from clawql_secrets.witness.server import open_witness
from tests.witness.conftest import ORIGIN


def write(path: Path, log_key: str, **extra: object) -> Path:
    document = {
        "name": "witness.test/w1",
        "key_file": "keys/witness.key",
        "state_dir": "state",
        "logs": [{"origin": ORIGIN, "verifier_keys": [log_key]}],
        **extra,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def config_path(tmp_path: Path, log_signer: Ed25519Signer) -> Path:
    return write(tmp_path / "witness.json", str(log_signer.verifier_key()))


def test_init_is_idempotent_and_prints_only_the_public_key(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "witness", "init", "--config", str(config_path)]) == 0
    first = capsys.readouterr()
    key_file = config_path.parent / "keys" / "witness.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((config_path.parent / "state").stat().st_mode) == 0o700
    vkey = WitnessKey.parse(first.out)
    assert vkey == WitnessSigner.from_file(key_file).witness_key()
    secret = key_file.read_text().strip()
    assert secret.split("+", 4)[4] not in first.out + first.err

    before = key_file.read_bytes()
    assert main(["audit", "witness", "init", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out == first.out and key_file.read_bytes() == before


def test_init_refuses_a_key_for_another_name(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = config_path.parent / "keys" / "witness.key"
    key_file.parent.mkdir()
    key_file.write_text(WitnessSigner.generate("someone.else/w").key_string())
    key_file.chmod(0o600)
    assert main(["audit", "witness", "init", "--config", str(config_path)]) == 1
    assert "someone.else/w" in capsys.readouterr().err


def test_init_and_serve_refuse_a_readable_key(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "witness", "init", "--config", str(config_path)]) == 0
    key_file = config_path.parent / "keys" / "witness.key"
    key_file.chmod(0o644)
    capsys.readouterr()
    assert main(["audit", "witness", "init", "--config", str(config_path)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="group or others"):
        open_witness(load_witness_config(config_path))


def test_relative_paths_resolve_against_the_config_file(config_path: Path) -> None:
    config = load_witness_config(config_path)
    assert config.key_file == config_path.parent.resolve() / "keys" / "witness.key"
    assert config.state_dir == config_path.parent.resolve() / "state"
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 7380, 64 * 1024)
    assert list(config.policies()) == [ORIGIN]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"listen": "0.0.0.0"}, "listen"),
        ({"port": 70000}, "port"),
        ({"name": "has space"}, "name"),
        ({"logs": []}, "logs"),
        ({"logs": [{"origin": ORIGIN, "verifier_keys": []}]}, "verifier_keys"),
        ({"logs": [{"origin": ORIGIN, "verifier_keys": ["not a key"]}]}, "verifier_keys"),
        ({"logs": [{"origin": ORIGIN, "verifier_keys": ["x+00000000+AAAA"], "x": 1}]}, "x"),
        ({"max_body_bytes": 10**9}, "max_body_bytes"),
    ],
)
def test_invalid_configs(
    tmp_path: Path, log_signer: Ed25519Signer, extra: dict[str, object], match: str
) -> None:
    path = write(tmp_path / "w.json", str(log_signer.verifier_key()), **extra)
    with pytest.raises(ConfigError, match=match):
        load_witness_config(path)


def test_duplicate_origins_and_bad_origin(tmp_path: Path, log_signer: Ed25519Signer) -> None:
    key = str(log_signer.verifier_key())
    entry = {"origin": ORIGIN, "verifier_keys": [key]}
    with pytest.raises(ConfigError, match="share an origin"):
        load_witness_config(write(tmp_path / "a.json", key, logs=[entry, entry]))
    bad = {"origin": "bad\u0085origin", "verifier_keys": [key]}
    with pytest.raises(ConfigError, match="origin"):
        load_witness_config(write(tmp_path / "b.json", key, logs=[bad]))


def test_write_and_command(tmp_path: Path, log_signer: Ed25519Signer) -> None:
    config = WitnessConfig(
        name="witness.test/w1",
        key_file=Path("w.key"),
        state_dir=Path("state"),
        port=0,
        logs=[WitnessLogConfig(origin=ORIGIN, verifier_keys=[str(log_signer.verifier_key())])],
    )
    path = tmp_path / "sub" / "witness.json"
    write_witness_config(config, path)
    assert load_witness_config(path) == config.resolved(path.parent.resolve())
    assert witness_command(path) == [
        sys.executable, "-m", "clawql_secrets", "audit", "witness", "serve", "--config", str(path),
    ]  # fmt: skip
