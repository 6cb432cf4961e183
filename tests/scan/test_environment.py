"""Process environments: this process (``--env``) and another one (``--pid``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from clawql_secrets.errors import ClawQLError, ConfigError, InputError
from clawql_secrets.scan import sources
from clawql_secrets.scan.detect import Detector
from tests.scan.conftest import RunScan, leaks
from tests.scan.corpus import rand


def test_environment_mapping_names_the_variable() -> None:
    secret = rand(20)
    env = {"PATH": "/usr/bin:/bin", "APP_DB_PASSWORD": secret, "HOME": "/root"}
    result = sources.scan_environment(env, "self", Detector())
    assert [(f.location.name, f.kind) for f in result.findings] == [
        ("self:APP_DB_PASSWORD", "secret_assignment")
    ]
    assert result.scanned == 3
    assert not leaks(secret, json.dumps(result.to_json()))


def test_env_flag_scans_the_current_process(
    run_scan: RunScan, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s." + rand(24)
    monkeypatch.setenv("CLAWQL_SCAN_PLANTED", secret)
    code, out = run_scan("--env", "--json")
    assert code == 1
    doc = json.loads(out)
    mine = [f for f in doc["findings"] if f["location"]["name"] == "self:CLAWQL_SCAN_PLANTED"]
    assert [f["kind"] for f in mine] == ["openbao_token"]
    assert not leaks(secret, out)


@pytest.fixture
def child_with_secret() -> Iterator[tuple[int, str]]:
    secret = rand(32)
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "WEBHOOK_TOKEN": secret}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], env=env, stdin=subprocess.PIPE
    )
    try:
        yield proc.pid, secret
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def test_pid_flag_scans_another_process(
    run_scan: RunScan, child_with_secret: tuple[int, str]
) -> None:
    pid, secret = child_with_secret
    code, out = run_scan("--pid", str(pid))
    assert code == 1
    assert f"env:{pid}:WEBHOOK_TOKEN" in out
    assert not leaks(secret, out)


def test_pid_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="no process"):
        sources.read_environ(2**22 + 12345)


def test_pid_not_permitted_is_a_clear_error(child_with_secret: tuple[int, str]) -> None:
    # Another user's process. As root, a forked child drops to "nobody" and tries.
    pid, secret = child_with_secret
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="permission denied"):
            sources.read_environ(1)
        return
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os.close(read_fd)
        status = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            sources.read_environ(pid)
            message = b"read it"
        except ConfigError as exc:
            message, status = exc.diagnostics().encode(), 7
        except BaseException as exc:
            message = type(exc).__name__.encode()
        os.write(write_fd, message)
        os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        said = fh.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 7, said
    assert "permission denied" in said and "fix:" in said
    assert secret not in said


def test_nothing_to_scan_is_an_input_error(run_scan: RunScan) -> None:
    with pytest.raises(ClawQLError, match="nothing to scan"):
        run_scan()
