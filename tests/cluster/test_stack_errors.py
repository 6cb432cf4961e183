"""`up`/`down` refuse clearly and change nothing when the machine is not ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ConfigError


def test_port_in_use_is_named_with_the_fix(tmp_path: Path) -> None:
    settings = stack.free_settings(tmp_path / "stack")
    busy = settings.node_ports("n2").api
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        with pytest.raises(ConfigError) as err:
            stack.up(settings, timeout=10)
    msg = err.value.diagnostics()
    assert f"127.0.0.1:{busy} is in use" in msg and "--base-port" in msg
    assert stack.supervisor_pid(settings) is None


def test_stale_pid_file_is_not_mistaken_for_a_running_stack(tmp_path: Path) -> None:
    settings = StackSettings(data_dir=tmp_path / "stack")
    settings.run_dir.mkdir(parents=True)
    # A pid that exists but is not our supervisor (this very test process).
    settings.pid_file.write_text(f"{os.getpid()}\n")
    assert stack.supervisor_pid(settings) is None
    notes: list[str] = []
    assert stack.down(settings, progress=notes.append) is False
    assert not settings.pid_file.exists()
    assert any("stale lock" in n for n in notes)


def test_non_loopback_host_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        StackSettings(data_dir=tmp_path, host="0.0.0.0")


def test_corrupt_settings_file_named(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"stack\.json"):
        stack.load_settings(tmp_path)


def test_cli_reports_error_and_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text('{"base_port": "x"}')
    proc = subprocess.run(
        [sys.executable, "-m", "clawql_secrets", "status", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_status_of_a_missing_stack_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clawql_secrets", "status", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "no local stack" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "none").exists()  # status creates nothing
