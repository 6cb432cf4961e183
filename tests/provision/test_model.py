"""Bad desired state is refused before anything is applied, naming line and field."""

from __future__ import annotations

import pytest

from clawql_secrets.errors import ConfigError
from clawql_secrets.provision import loader
from tests.provision.conftest import valid_yaml


def test_valid_example_parses() -> None:
    state = loader.parse(valid_yaml())
    assert [t.name for t in state.tenants] == ["acme", "globex"]
    assert state.roles[0].max_session == 3600


SERVICE = """\
pki: {}
services:
  - name: orders
    common_name: orders.svc.clawql.internal
    dns_sans: [orders.internal]
    uri_sans: [spiffe://clawql.internal/svc/orders]
approvals:
"""


def _service(**replace: str) -> dict[str, str]:
    """A replacement adding the valid ``SERVICE`` (with ``replace`` applied) to the file."""
    text = SERVICE
    for old, new in replace.items():
        if old not in text:
            raise KeyError(old)
        text = text.replace(old, new)
    return {"approvals:\n": text}


# (test id, replacement in the valid file, expected text in the error)
BAD = [
    ("malformed_yaml", {"tenants:\n": "tenants: [\n"}, "malformed YAML"),
    ("unknown_field", {"  - name: acme\n": "  - name: acme\n    colour: red\n"}, "colour"),
    ("duplicate_key", {"version: 1\n": "version: 1\nversion: 1\n"}, "duplicate key"),
    ("duplicate_tenant", {"  - name: globex\n": "  - name: acme\n"}, "duplicate tenant"),
    (
        "duplicate_role",
        {"approvals:\n": "  - name: analyst\n    tenants: [acme]\napprovals:\n"},
        "duplicate role",
    ),
    ("tenant_name_with_slash", {"  - name: globex\n": "  - name: glo/bex\n"}, "tenants.1.name"),
    ("tenant_name_with_dotdot", {"  - name: globex\n": "  - name: ..\n"}, "tenants.1.name"),
    (
        "tenant_name_breaking_sql",
        {"  - name: globex\n": "  - name: 'x\"; DROP ROLE postgres; --'\n"},
        "tenants.1.name",
    ),
    ("tenant_name_with_glob", {"  - name: globex\n": "  - name: 'acme*'\n"}, "tenants.1.name"),
    ("tenant_name_uppercase", {"  - name: globex\n": "  - name: Globex\n"}, "tenants.1.name"),
    # One name grammar (clawql_secrets.names): '-' joins <tenant>-<role>-<connection>.
    ("tenant_name_with_hyphen", {"  - name: globex\n": "  - name: glo-bex\n"}, "tenants.1.name"),
    (
        "tenant_name_too_long",
        {"  - name: globex\n": f"  - name: {'g' * 32}\n"},
        "tenants.1.name",
    ),
    ("role_name_with_hyphen", {"  - name: analyst\n": "  - name: data-reader\n"}, "roles.0.name"),
    # <role>.session is the role's session anchor (ADR 0010).
    ("role_name_with_dot", {"  - name: analyst\n": "  - name: analyst.session\n"}, "roles.0.name"),
    ("connection_name_with_hyphen", {"  - name: pg\n": "  - name: pg-main\n"}, "databases.0.name"),
    (
        "role_grants_other_tenants_schema",
        {'schema: "{tenant}"': "schema: globex"},
        "must contain {tenant}",
    ),
    (
        "role_template_hits_other_tenants_schema",
        {
            "  - name: acme\n": "  - name: acme\n    schemas: [acme, globex_x]\n",
            "  - name: globex\n": "  - name: globex\n    schemas: [globex, globex_x]\n",
        },
        "already belongs",
    ),
    (
        "unknown_tenant_in_role",
        {"tenants: [acme, globex]": "tenants: [acme, initech]"},
        "unknown tenant",
    ),
    ("unknown_connection", {"connection: pg": "connection: mysql"}, "unknown"),
    ("threshold_one", {"threshold: 2": "threshold: 1"}, "approvals.threshold"),
    ("threshold_zero", {"threshold: 2": "threshold: 0"}, "approvals.threshold"),
    ("threshold_above_approvers", {"threshold: 2": "threshold: 4"}, "higher than"),
    ("duplicate_approver", {"[alice, bob, carol]": "[alice, alice]"}, "duplicate approver"),
    (
        "bad_duration",
        {"    secrets: [api_key]\n": "    secrets: [api_key]\n    max_session: soon\n"},
        "duration",
    ),
    (
        "no_trust_source",
        {"  public_keys:\n": "  jwks_url: https://x.example/jwks\n  public_keys:\n"},
        "exactly one",
    ),
    ("anchors", {"version: 1\n": "version: 1\nx: &a [1]\ny: *a\n"}, "anchors"),
    ("service_without_pki", _service(**{"pki: {}\n": ""}), "services need a pki section"),
    (
        "duplicate_service",
        _service(**{"approvals:": "  - name: orders\n    common_name: o2.internal\napprovals:"}),
        "duplicate service",
    ),
    (
        "service_name_with_underscore",
        _service(**{"- name: orders": "- name: order_api"}),
        "no '_' in a service name",
    ),
    (
        "service_name_with_dash",
        _service(**{"- name: orders": "- name: order-api"}),
        "services.0.name",
    ),
    ("service_name_with_glob", _service(**{"- name: orders": "- name: 'svc*'"}), "services.0.name"),
    (
        "service_without_common_name",
        _service(**{"    common_name: orders.svc.clawql.internal\n": ""}),
        "services.0.common_name",
    ),
    (
        "service_empty_common_name",
        _service(**{"common_name: orders.svc.clawql.internal": "common_name: ''"}),
        "services.0.common_name",
    ),
    (
        "service_wildcard_common_name",
        _service(**{"orders.svc.clawql.internal": "'*.svc.clawql.internal'"}),
        "services.0.common_name: no wildcard",
    ),
    (
        "service_wildcard_dns_san",
        _service(**{"[orders.internal]": "[orders.internal, '*.internal']"}),
        "services.0.dns_sans.1: no wildcard",
    ),
    (
        "service_ip_dns_san",
        _service(**{"[orders.internal]": "['127.0.0.1']"}),
        "not an IP address",
    ),
    (
        "service_dns_san_with_port",
        _service(**{"[orders.internal]": "['orders.internal:80']"}),
        "services.0.dns_sans.0",
    ),
    (
        "service_uppercase_dns_san",
        _service(**{"[orders.internal]": "[Orders.internal]"}),
        "services.0.dns_sans.0",
    ),
    (
        "service_common_name_too_long",
        _service(**{"orders.svc.clawql.internal": "o" * 60 + ".internal"}),
        "services.0.common_name: at most 64 characters",
    ),
    (
        "service_empty_dns_san",
        _service(**{"[orders.internal]": "['']"}),
        "services.0.dns_sans.0",
    ),
    (
        "service_uri_san_other_scheme",
        _service(**{"spiffe://clawql": "file://clawql"}),
        "services.0.uri_sans.0",
    ),
    (
        "service_uri_san_plain_http",
        _service(**{"spiffe://clawql": "http://clawql"}),
        "services.0.uri_sans.0",
    ),
    (
        "service_uri_san_with_glob",
        _service(**{"svc/orders]": "svc/*]"}),
        "services.0.uri_sans.0: no wildcard",
    ),
    (
        "service_uri_san_with_query",
        _service(**{"[spiffe://clawql.internal/svc/orders]": "['spiffe://x.internal/o?x=1']"}),
        "services.0.uri_sans.0",
    ),
    (
        "service_uri_san_with_template",
        _service(**{"[spiffe://clawql.internal/svc/orders]": "['spiffe://x.internal/{tenant}']"}),
        "services.0.uri_sans.0",
    ),
    (
        "service_uri_san_without_host",
        _service(**{"spiffe://clawql.internal/svc/orders": "spiffe:///svc/orders"}),
        "services.0.uri_sans.0",
    ),
    (
        "service_ttl_too_short",
        _service(**{"approvals:": "    ttl: 5s\napprovals:"}),
        "services.0.ttl",
    ),
    (
        "service_ttl_too_long",
        _service(**{"approvals:": "    ttl: 2d\napprovals:"}),
        "services.0.ttl",
    ),
    (
        "service_name_of_another_service",
        _service(
            **{
                "approvals:": "  - name: billing\n    common_name: billing.internal\n"
                "    dns_sans: [orders.internal]\napprovals:"
            }
        ),
        "'orders.internal' is already a name of 'orders'",
    ),
    (
        "client_certs_for_tenant_svc",
        {
            "  - name: globex\n": "  - name: globex\n  - name: svc\n",
            "approvals:\n": "  - name: orders\n    tenants: [svc]\n"
            '    cert_sans: ["spiffe://x/{tenant}/{agent}"]\npki: {}\napprovals:\n',
        },
        "tenant 'svc' cannot have client certificates",
    ),
    ("empty_file", {}, ""),
]


@pytest.mark.parametrize(("replace", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused(replace: dict[str, str], expected: str) -> None:
    text = valid_yaml(**replace) if replace else ""
    with pytest.raises(ConfigError) as err:
        loader.parse(text, "clawql.yaml")
    assert expected in err.value.message
    assert "clawql.yaml" in err.value.message


def test_underscored_names_parse() -> None:
    state = loader.parse(
        valid_yaml(
            **{
                "  - name: globex\n": "  - name: acme_eu\n",
                "tenants: [acme, globex]": "tenants: [acme, acme_eu]",
                "  - name: analyst\n": "  - name: data_reader\n",
            }
        )
    )
    assert [t.name for t in state.tenants] == ["acme", "acme_eu"]
    assert state.roles[0].name == "data_reader"


def test_services_parse_with_defaults() -> None:
    state = loader.parse(valid_yaml(**_service()))
    (svc,) = state.services
    assert (svc.name, svc.pki_role, svc.ttl) == ("orders", "svc-orders", 900)
    assert svc.dns_sans == ("orders.internal",)
    assert loader.parse(valid_yaml()).services == ()


def test_service_ttl_takes_a_duration() -> None:
    state = loader.parse(valid_yaml(**_service(**{"approvals:": "    ttl: 1h\napprovals:"})))
    assert state.services[0].ttl == 3600


def test_error_names_the_line() -> None:
    text = valid_yaml(**{"  - name: globex\n": "  - name: glo/bex\n"})
    line = text.splitlines().index("  - name: glo/bex") + 1
    with pytest.raises(ConfigError) as err:
        loader.parse(text, "clawql.yaml")
    assert f"line {line}: tenants.1.name" in err.value.message


def test_cross_field_error_names_the_line() -> None:
    text = valid_yaml(**{"tenants: [acme, globex]": "tenants: [acme, initech]"})
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "initech" in ln)
    with pytest.raises(ConfigError) as err:
        loader.parse(text)
    assert f"line {line}: roles.0.tenants.1" in err.value.message


def test_example_config_is_valid() -> None:
    from pathlib import Path

    text = Path("examples/clawql.yaml").read_text()
    pem = valid_yaml().split("    - |\n")[1].split("tenants:")[0]
    text = text.replace(
        "  public_key_files: [../.clawql/gateway-exchange/public.pem]\n",
        "  public_keys:\n    - |\n" + pem,
    )
    state = loader.parse(text, "examples/clawql.yaml")
    assert len(state.tenants) == 2 and len(state.roles) >= 3
