"""The local stack's gateway config: ``http.request`` reaches the demo destination only."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ConfigError
from clawql_secrets.gateway.localstack import AGENT_URI_SAN, HTTP_ROLE, stack_gateway_config
from clawql_secrets.gateway.tools import http
from clawql_secrets.provision.localstack import load_example


def test_http_tool_allows_the_integrator_the_demo_target_only(tmp_path: Path) -> None:
    s = StackSettings(data_dir=tmp_path / "stack", base_port=23400, bridge_port=23450)
    config = stack_gateway_config(s)
    tool = http.factory(config)  # validates the section as the gateway will
    pol = tool.settings.roles[HTTP_ROLE]
    assert list(tool.settings.roles) == [HTTP_ROLE]
    assert pol.allow == ["https://127.0.0.1:23480"]
    assert pol.client_cert and pol.inject_headers == ["Authorization"]
    assert tool.settings.uri_san_template == AGENT_URI_SAN
    ca = tool.settings.ca_file
    assert ca is not None and ca.read_text().startswith("-----BEGIN CERTIFICATE")
    assert (ca.parent / "ca.key").stat().st_mode & 0o777 == 0o600
    # Created once: a second render keeps the same CA.
    assert stack_gateway_config(s).tools == config.tools
    assert (
        ca.read_bytes()
        == Path(str(stack_gateway_config(s).tools["http.request"]["ca_file"])).read_bytes()
    )


def test_uri_san_template_is_the_examples_cert_sans(tmp_path: Path) -> None:
    state = load_example(StackSettings(data_dir=tmp_path / "stack"))
    (role,) = [r for r in state.roles if r.name == HTTP_ROLE]
    assert role.cert_sans == (AGENT_URI_SAN,)
    assert "http.request" in role.tools


def test_demo_target_port_is_base_plus_80_and_must_not_collide() -> None:
    s = StackSettings(data_dir=Path("/tmp/x"), base_port=18200, bridge_port=18300)
    assert s.demo_target_port == 18280
    with pytest.raises(ConfigError, match="overlap"):
        StackSettings(data_dir=Path("/tmp/x"), base_port=18200, bridge_port=18280)
