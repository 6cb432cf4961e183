"""The file-system edge: what is scanned, what is skipped and said so."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawql_secrets.errors import InputError
from clawql_secrets.scan import sources
from clawql_secrets.scan.detect import Detector
from clawql_secrets.scan.model import ScanConfig
from tests.scan.conftest import RunScan
from tests.scan.corpus import rand


def test_binary_and_age_files_are_skipped_not_failed(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2" + b"password=" + rand(12).encode())
    (tmp_path / "share.age").write_bytes(b"age-encryption.org/v1\n-> X25519 " + rand(43).encode())
    result = sources.scan_paths([tmp_path], Detector())
    assert result.findings == []
    assert sorted(s.reason for s in result.skipped) == ["binary", "encrypted (age)"]
    assert result.exit_code() == 0


def test_oversized_file_is_scanned_in_part_and_marked_incomplete(tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    big.write_text("x" * 200 + "\npassword: " + rand(12) + "\n")
    result = sources.scan_paths([big], Detector(ScanConfig(max_file_bytes=100)))
    assert result.findings == [] and result.incomplete and result.exit_code() == 3


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.env"
    target.write_text("DB_PASSWORD=" + rand(12) + "\n")
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "alias.env").symlink_to(target)
    result = sources.scan_paths([link_dir], Detector())
    assert result.findings == [] and [s.reason for s in result.skipped] == [
        "symlink (not followed)"
    ]


def test_excluded_directories_are_not_walked(tmp_path: Path, run_scan: RunScan) -> None:
    for d in ("vendor", ".git"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.env").write_text("DB_PASSWORD=" + rand(12) + "\n")
    assert run_scan(str(tmp_path))[0] == 1
    assert run_scan(str(tmp_path), "--exclude", "vendor")[0] == 0


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        sources.scan_paths([tmp_path / "absent"], Detector())
