"""Bootstrap trust: recognised by path, reported with its protection checked."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pytest

from clawql_secrets.scan import bootstrap, sources
from clawql_secrets.scan.detect import Detector
from clawql_secrets.scan.model import BOOTSTRAP

UID = os.geteuid()
REG = stat.S_IFREG


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/x/.clawql/hsm/user.pin", "hsm_pin"),
        ("/x/.clawql/hsm/user.pin.verifier", "hsm_pin_verifier"),
        ("/x/.clawql/nodes/n2/tls/listener.key", "node_tls_key"),
        ("/x/.clawql/tls/openbao-ca/ca.key", "ca_key"),
        ("/x/.clawql/tls/bridge/bridge.key", "bridge_tls_key"),
        ("/x/.clawql/issuer/signing.key", "issuer_key"),
        ("/x/.clawql/holders/holder-3.key", "holder_identity"),
        ("/x/.clawql/hsm/tokens/abc/def.object", "hsm_token_object"),
    ],
)
def test_catalog_matches(path: str, kind: str) -> None:
    item = bootstrap.match(PurePosixPath(path))
    assert item is not None and item.kind == kind


@pytest.mark.parametrize(
    "path", ["/x/hsm/user.pin.bak", "/x/nodes/n1/listener.key", "/x/issuer/public.pem"]
)
def test_catalog_does_not_match_neighbours(path: str) -> None:
    assert bootstrap.match(PurePosixPath(path)) is None


@pytest.mark.parametrize(
    ("name", "mode", "uid", "dir_mode", "problem"),
    [
        ("ok_0600_in_0700", REG | 0o600, UID, 0o700, None),
        ("ok_0400_in_0700", REG | 0o400, UID, 0o700, None),
        ("ok_dir_0750", REG | 0o600, UID, 0o750, None),
        ("group_readable_file", REG | 0o640, UID, 0o700, "mode 0640"),
        ("world_readable_file", REG | 0o644, UID, 0o700, "mode 0644"),
        ("foreign_owner", REG | 0o600, UID + 1, 0o700, "owned by uid"),
        ("world_readable_dir", REG | 0o600, UID, 0o755, "directory mode 0755"),
        ("group_writable_dir", REG | 0o600, UID, 0o770, "directory mode 0770"),
        ("symlink", stat.S_IFLNK | 0o777, UID, 0o700, "symlink"),
    ],
)
def test_protection(name: str, mode: int, uid: int, dir_mode: int, problem: str | None) -> None:
    problems = bootstrap.protection_problems(bootstrap.FileFacts(mode, uid, dir_mode), UID)
    if problem is None:
        assert problems == (), name
    else:
        assert any(problem in p for p in problems), (name, problems)


def _pin(tmp_path: Path, mode: int) -> Path:
    hsm = tmp_path / "hsm"
    hsm.mkdir(mode=0o700)
    hsm.chmod(0o700)
    pin = hsm / "user.pin"
    pin.write_text("0" * 32)
    pin.chmod(mode)
    return pin


def test_protected_pin_file_is_reported_not_failed(tmp_path: Path) -> None:
    _pin(tmp_path, 0o600)
    result = sources.scan_paths([tmp_path], Detector())
    [finding] = result.findings
    assert (finding.category, finding.kind, finding.failing) == (BOOTSTRAP, "hsm_pin", False)
    assert result.exit_code() == 0


def test_loose_pin_file_is_a_finding_of_its_own(tmp_path: Path) -> None:
    _pin(tmp_path, 0o644)
    result = sources.scan_paths([tmp_path], Detector())
    [finding] = result.findings
    assert finding.category == BOOTSTRAP and finding.failing
    assert any("0644" in p for p in finding.problems)
    assert result.exit_code() == 1


def test_bootstrap_content_is_not_shown(tmp_path: Path) -> None:
    pin = _pin(tmp_path, 0o600)
    pin.write_text("password=" + "Zq8" * 10)
    result = sources.scan_paths([tmp_path], Detector())
    assert [f.kind for f in result.findings] == ["hsm_pin"]
