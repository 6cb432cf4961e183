"""``agent-secret put``: names are safe path segments, the value is checked and never shown.

No OpenBao here: every refusal below happens before anything is contacted.
The live write (and what ``secrets-writer`` may not do) is in
``test_live_agent_secrets.py``.
"""

from __future__ import annotations

import io
import secrets
import sys
from pathlib import Path

import pytest

from clawql_secrets import cli
from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import InputError
from clawql_secrets.provision import agent_secrets
from clawql_secrets.provision.agent_secrets import AgentSecretRef


def _value() -> str:
    return "tok_" + secrets.token_urlsafe(24)


# -- names --------------------------------------------------------------------------------
def test_a_valid_ref_names_the_agents_kv_path() -> None:
    ref = AgentSecretRef("acme", "bot-i", "github_token")
    assert ref.path == "secret/data/tenants/acme/agents/bot-i/github_token"
    assert ref.field == "value"


@pytest.mark.parametrize(
    ("tenant", "agent", "name", "field", "what"),
    [
        ("", "bot", "tok", "value", "tenant"),
        ("ACME", "bot", "tok", "value", "tenant"),
        ("acme/globex", "bot", "tok", "value", "tenant"),
        ("..", "bot", "tok", "value", "tenant"),
        ("acme-x", "bot", "tok", "value", "tenant"),  # not a clawql.yaml tenant name
        ("acme-x", "bot", "tok", "value", "tenant"),  # '-' joins composed names: not in a tenant
        ("a" * 32, "bot", "tok", "value", "tenant"),
        ("acme", "", "tok", "value", "agent"),
        ("acme", "..", "tok", "value", "agent"),
        ("acme", "bot/../../globex", "tok", "value", "agent"),
        ("acme", "Bot", "tok", "value", "agent"),
        ("acme", "bot\n", "tok", "value", "agent"),
        ("acme", "bot", "", "value", "secret name"),
        ("acme", "bot", "a/b", "value", "secret name"),
        ("acme", "bot", "..", "value", "secret name"),
        ("acme", "bot", "tok*", "value", "secret name"),
        ("acme", "bot", "tok+", "value", "secret name"),
        ("acme", "bot", "tok", "", "field"),
        ("acme", "bot", "tok", "a b", "field"),
        ("acme", "bot", "tok", "a/b", "field"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_unsafe_names_are_refused(
    tenant: str, agent: str, name: str, field: str, what: str
) -> None:
    with pytest.raises(InputError, match=f"^invalid {what} ") as err:
        AgentSecretRef(tenant, agent, name, field)
    assert err.value.fix


# -- the value ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"VALUE", "VALUE"),
        (b"VALUE\n", "VALUE"),
        (b"VALUE\r\n", "VALUE"),
        (b"  VALUE  ", "  VALUE  "),  # only a trailing newline is removed
    ],
)
def test_read_value_from_a_pipe(raw: bytes, expected: str) -> None:
    value = _value()
    got = agent_secrets.read_value(
        io.BytesIO(raw.replace(b"VALUE", value.encode())), interactive=False, prompt=""
    )
    assert got == expected.replace("VALUE", value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"\n", "empty"),
        (b"VALUE\n\n", "line break"),
        (b"VA\nLUE", "line break"),
        (b"VA\rLUE", "line break"),
        (b"VA\0LUE", "NUL"),
        (b"\xff\xfeVALUE", "UTF-8"),
        (b"V" * (agent_secrets.MAX_VALUE_BYTES + 1), "longer than"),
    ],
    ids=["empty", "newline-only", "two-newlines", "lf", "cr", "nul", "not-utf8", "too-long"],
)
def test_bad_values_are_refused_without_quoting_them(raw: bytes, message: str) -> None:
    value = _value()
    with pytest.raises(InputError, match=message) as err:
        agent_secrets.read_value(
            io.BytesIO(raw.replace(b"VALUE", value.encode())), interactive=False, prompt=""
        )
    assert value not in err.value.diagnostics()
    assert value[4:12] not in err.value.diagnostics()


def test_a_terminal_is_prompted_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []
    value = _value()

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return value

    monkeypatch.setattr(agent_secrets.getpass, "getpass", fake_getpass)
    got = agent_secrets.read_value(io.BytesIO(b""), interactive=True, prompt="value: ")
    assert (got, prompts) == (value, ["value: "])
    monkeypatch.setattr(agent_secrets.getpass, "getpass", lambda prompt="": "")
    with pytest.raises(InputError, match="empty"):
        agent_secrets.read_value(io.BytesIO(b""), interactive=True, prompt="value: ")


# -- the command line -----------------------------------------------------------------------
def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _put(*extra: str, data_dir: Path) -> list[str]:
    return ["agent-secret", "put", *extra, "--data-dir", str(data_dir)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "Acme", "--agent", "bot", "--name", "tok"], "invalid tenant"),
        (["--tenant", "acme", "--agent", "../x", "--name", "tok"], "invalid agent"),
        (["--tenant", "acme", "--agent", "bot", "--name", "a/b"], "invalid secret name"),
        (["--tenant", "acme", "--agent", "bot", "--name", "t", "--field", "."], "invalid field"),
    ],
)
def test_cli_refuses_bad_names_before_reading_stdin(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value = _value()
    _stdin(monkeypatch, value.encode())
    assert cli.main(_put(*args, data_dir=tmp_path)) == 1
    out, err = capsys.readouterr()
    assert message in err and "fix:" in err
    assert value not in out + err
    assert sys.stdin.read() == value  # not consumed


def test_cli_refuses_a_missing_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, _value().encode())
    args = ["--tenant", "acme", "--agent", "bot", "--name", "tok"]
    assert cli.main(_put(*args, data_dir=tmp_path / "none")) == 1
    assert "no local stack" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"VALUE\nVALUE\n", "line break")],
    ids=["empty-pipe", "two-lines"],
)
def test_cli_refuses_a_bad_value_on_stdin_without_echoing_it(
    data: bytes,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack.save_settings(StackSettings(data_dir=tmp_path))  # a stack dir, nothing running
    value = _value()
    _stdin(monkeypatch, data.replace(b"VALUE", value.encode()))
    args = ["--tenant", "acme", "--agent", "bot", "--name", "tok"]
    assert cli.main(_put(*args, data_dir=tmp_path)) == 1
    out, err = capsys.readouterr()
    assert message in err and "fix:" in err
    assert value not in out + err


def test_cli_never_takes_the_value_as_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["agent-secret", "put", "--tenant", "acme", "--agent", "bot", "--name", "t",
                  "--value", "x"])  # fmt: skip
    assert exc.value.code == 2
    assert "--value" in capsys.readouterr().err
