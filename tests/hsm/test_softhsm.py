"""Token set-up: a private SoftHSM2 token directory, idempotent, PIN file 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clawql_secrets.errors import ConfigError
from clawql_secrets.hsm import softhsm
from clawql_secrets.hsm.softhsm import ensure_token, parse_initialized_labels


def test_creates_private_conf_token_and_pin(tmp_path: Path) -> None:
    setup = ensure_token(tmp_path / "hsm")
    conf = setup.conf_path.read_text()
    assert f"directories.tokendir = {tmp_path / 'hsm' / 'tokens'}" in conf
    assert "objectstore.backend = file" in conf
    assert "log.level = ERROR" in conf
    assert stat.S_IMODE(setup.pin_file.stat().st_mode) == 0o600
    assert len(setup.pin_file.read_text().strip()) >= 32
    assert any((tmp_path / "hsm" / "tokens").iterdir())


def test_is_idempotent(tmp_path: Path) -> None:
    first = ensure_token(tmp_path / "hsm")
    pin = first.pin_file.read_bytes()
    second = ensure_token(tmp_path / "hsm")
    assert first == second
    assert second.pin_file.read_bytes() == pin


def test_missing_softhsm2_util_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as err:
        ensure_token(tmp_path / "hsm")
    assert "scripts/bootstrap.sh" in err.value.diagnostics()


def test_token_without_pin_file_is_refused(tmp_path: Path) -> None:
    setup = ensure_token(tmp_path / "hsm")
    setup.pin_file.unlink()
    with pytest.raises(ConfigError, match="PIN file"):
        ensure_token(tmp_path / "hsm")


def test_other_label_does_not_overwrite_the_pin_of_an_existing_token(tmp_path: Path) -> None:
    setup = ensure_token(tmp_path / "hsm")
    pin = setup.pin_file.read_bytes()
    with pytest.raises(ConfigError, match="holds tokens"):
        ensure_token(tmp_path / "hsm", "other")
    assert setup.pin_file.read_bytes() == pin


def test_parse_initialized_labels_skips_free_slots() -> None:
    out = (
        "Available slots:\nSlot 7\n    Token info:\n        Initialized:      yes\n"
        "        Label:            clawql                          \n"
        "Slot 1\n    Token info:\n        Initialized:      no\n        Label:           \n"
    )
    assert parse_initialized_labels(out) == ["clawql"]


def test_conf_rendering_is_pure() -> None:
    assert softhsm.render_conf(Path("/x/tokens")).count("\n") == 5
