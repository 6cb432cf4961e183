"""One name grammar: what the desired state accepts, the gateway accepts, and back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clawql_secrets import names
from clawql_secrets.errors import InputError
from clawql_secrets.gateway import jwt_check, session_issuer
from clawql_secrets.gateway.errors import TokenRejected
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.policy import binding
from clawql_secrets.provision import model, render

CHECKS: dict[str, Callable[[object], str]] = {
    "tenant": names.check_tenant,
    "role": names.check_role,
    "connection": names.check_connection,
    "schema": names.check_schema,
    "agent": names.check_agent,
    "secret": names.check_secret,
}

# (kind, name)
ACCEPTED = [
    ("tenant", "acme"),
    ("tenant", "acme_eu"),
    ("tenant", "a"),
    ("tenant", "t2"),
    ("tenant", "a" * 31),
    ("role", "data_reader"),
    ("role", "analyst"),
    ("connection", "pg_main"),
    ("schema", "globex_reports"),
    ("schema", "select"),  # a keyword, but generated SQL quotes every schema
    ("agent", "bot"),
    ("agent", "data-reader"),
    ("agent", "bot_1"),
    ("agent", "4f1c9e-77aa"),
    ("agent", "a" * 63),
    ("secret", "github_token"),
    ("secret", "api-key"),
]

# (case, kind, name): each named after why it is refused
REFUSED = [
    ("tenant_empty", "tenant", ""),
    ("tenant_hyphen_makes_db_role_names_ambiguous", "tenant", "acme-eu"),
    ("tenant_upper_case_folds_in_sql", "tenant", "Acme"),
    ("tenant_digit_first_needs_quoting", "tenant", "1acme"),
    ("tenant_underscore_first", "tenant", "_acme"),
    ("tenant_longer_than_31", "tenant", "a" * 32),
    ("tenant_path_segment", "tenant", "acme/eu"),
    ("tenant_dotdot", "tenant", ".."),
    ("tenant_glob", "tenant", "acme*"),
    ("tenant_trailing_newline", "tenant", "acme\n"),
    ("tenant_not_ascii", "tenant", "acmé"),
    ("tenant_not_a_string", "tenant", 7),
    ("role_hyphen", "role", "data-reader"),
    ("role_dot_is_the_session_anchor_suffix", "role", "analyst.session"),
    ("role_space", "role", "r r"),
    ("connection_hyphen", "connection", "pg-main"),
    ("schema_quote_breaks_sql", "schema", 'x"; DROP ROLE postgres; --'),
    ("schema_backtick_breaks_sql", "schema", "x`"),
    ("schema_public_is_shared", "schema", "public"),
    ("schema_pg_prefix_is_reserved", "schema", "pg_catalog"),
    ("schema_mysql_holds_password_hashes", "schema", "mysql"),
    ("schema_information_schema", "schema", "information_schema"),
    ("schema_performance_schema", "schema", "performance_schema"),
    ("schema_sys", "schema", "sys"),
    ("agent_slash_adds_a_segment", "agent", "a/b"),
    ("agent_dot", "agent", "bot.v2"),
    ("agent_dotdot", "agent", ".."),
    ("agent_hyphen_first", "agent", "-bot"),
    ("agent_upper_case", "agent", "Bot"),
    ("agent_longer_than_63", "agent", "a" * 64),
    ("agent_trailing_newline", "agent", "bot\n"),
    ("secret_slash", "secret", "a/b"),
    ("secret_digit_first", "secret", "1key"),
]


@pytest.mark.parametrize(("kind", "name"), ACCEPTED, ids=[f"{k}-{n[:12]}" for k, n in ACCEPTED])
def test_name_accepted(kind: str, name: str) -> None:
    assert CHECKS[kind](name) == name


@pytest.mark.parametrize(("kind", "name"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_name_refused(kind: str, name: object) -> None:
    with pytest.raises(ValueError, match=kind):
        CHECKS[kind](name)


def test_every_importer_uses_the_one_grammar() -> None:
    assert model.NAME_RE == names.NAME_RE
    assert binding.ROLE_RE is names.ROLE_RE
    assert jwt_check.NAME_RE is names.AGENT_RE  # the agent part of ``sub``


# -- composed names -----------------------------------------------------------

_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True)


@given(_NAME, _NAME, _NAME)
def test_db_role_names_split_one_way_only(tenant: str, role: str, connection: str) -> None:
    composed = render.db_role_name(role, tenant, connection)
    assert names.db_role_name(tenant, role, connection) == composed
    assert names.parse_db_role_name(composed) == (tenant, role, connection)


@pytest.mark.parametrize(
    "composed",
    ["acme-data-reader-pg", "acme-reader", "acme-reader-pg-main", "Acme-r-pg", "acme--pg"],
    ids=["four_parts", "two_parts", "hyphenated_connection", "upper_case", "empty_role"],
)
def test_ambiguous_db_role_name_refused(composed: str) -> None:
    with pytest.raises(ValueError):
        names.parse_db_role_name(composed)


def test_role_names_cannot_collide_with_session_anchors() -> None:
    # "<role>.session" is never itself a role, so the controller's suffix strip is exact.
    assert not names.ROLE_RE.fullmatch("analyst" + names.SESSION_ROLE_SUFFIX)


def test_schemas_are_quoted_for_each_engine() -> None:
    assert names.quote_pg("select") == '"select"'
    assert names.quote_mariadb("globex_reports") == "`globex_reports`"
    with pytest.raises(ValueError):
        names.quote_pg('x"y')
    with pytest.raises(ValueError):
        names.quote_mariadb("mysql")


# OpenBao's default username templates: "v-<display 8>-<role 8>-<random 20>-<unix time>"
# truncated to 63 (PostgreSQL); the mysql plugin's to 32.
PG_DEFAULT_USER = "v-agents-a-acme-ana-" + "A1b2C3d4E5f6G7h8I9j0" + "-1767225600"


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        (PG_DEFAULT_USER, "postgresql"),
        ("v" * 63, "postgresql"),
        ("v-agents-acme-ana-A1b2C3d4E5f6G7", "mariadb"),
        ("cgw1a2b3c4d-xyz", "mariadb"),
    ],
    ids=["openbao_default", "63_bytes", "mysql_plugin_default", "test_fixture_prefix"],
)
def test_generated_db_user_accepted(name: str, engine: Literal["postgresql", "mariadb"]) -> None:
    assert names.check_db_user(name, engine) == name


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        ("v" * 64, "postgresql"),
        ("é" * 32, "postgresql"),
        ("v" * 33, "mariadb"),
        ("v-x'y", "postgresql"),
        ('v-x"y', "postgresql"),
        ("v-x`y", "mariadb"),
        ("v-x\\y", "mariadb"),
        ("v x", "postgresql"),
        ("", "postgresql"),
    ],
    ids=[
        "postgresql_would_truncate",
        "length_is_bytes_not_characters",
        "longer_than_mysql_plugin",
        "single_quote",
        "double_quote",
        "backtick",
        "backslash",
        "space",
        "empty",
    ],
)
def test_generated_db_user_refused(name: str, engine: Literal["postgresql", "mariadb"]) -> None:
    with pytest.raises(ValueError):
        names.check_db_user(name, engine)


def test_uri_san_and_kv_path_take_checked_names_only() -> None:
    template = "spiffe://clawql/tenants/{tenant}/agents/{agent}"
    assert (
        names.agent_uri_san(template, "acme_eu", "data-reader")
        == "spiffe://clawql/tenants/acme_eu/agents/data-reader"
    )
    assert (
        names.kv_agent_secret_path("acme_eu", "data-reader", "github_token")
        == "tenants/acme_eu/agents/data-reader/github_token"
    )
    for tenant, agent in (("acme", "a/../../x"), ("ac/me", "bot"), ("acme", "*")):
        with pytest.raises(ValueError):
            names.agent_uri_san(template, tenant, agent)
        with pytest.raises(ValueError):
            names.kv_agent_secret_path(tenant, agent, "k")


@pytest.mark.parametrize("name", ["acme", "globex", "globex_reports"])
def test_the_example_schemas_are_in_the_grammar(name: str) -> None:
    assert names.check_tenant(name) == names.check_schema(name) == name


# -- the provisioner and the gateway agree ------------------------------------
# Candidates near the grammar's edges: every character class it allows or refuses,
# and lengths around 31 and 63.
_CANDIDATE = st.one_of(
    st.text(alphabet="abz09_-./A \n", max_size=66),
    st.from_regex(r"[a-z0-9_-][a-z0-9_.-]{0,66}", fullmatch=True),
    st.integers(0, 70).map(lambda n: "a" * n),
)
_JWKS_URL = "https://gateway.clawql.local/jwks"


def _state(tenant: str = "acme", role: str | None = None) -> model.DesiredState:
    data: dict[str, object] = {
        "version": 1,
        "exchange": {"jwks_url": _JWKS_URL},
        "tenants": [{"name": tenant}],
        "approvals": {"approvers": ["alice", "bob"], "threshold": 2},
    }
    if role is not None:
        data["roles"] = [{"name": role, "tenants": [tenant]}]
    return model.DesiredState.model_validate(data)


def _model_accepts(*, tenant: str = "acme", role: str | None = None) -> bool:
    try:
        _state(tenant, role)
    except ValidationError:
        return False
    return True


def _gateway_accepts(issuer: LocalIssuer, *, tenant: str, agent: str, role: str) -> bool:
    """``verify_session`` on a token signed without any name check."""
    token = issuer.mint(
        f"{tenant}/{agent}",
        session_issuer.SESSION_AUDIENCE,
        ttl=600,
        sid="s" * 24,
        tenant=tenant,
        agent=agent,
        agent_role=role,
    )
    policy = jwt_check.JWTPolicy(
        session_issuer.SESSIONS_ISSUER_URL, session_issuer.SESSION_AUDIENCE
    )
    try:
        jwt_check.verify_session(token, jwt_check.KeySet(issuer.jwks()), policy, now=time.time())
    except TokenRejected as exc:
        assert exc.code == "token_bad_claim"
        return False
    return True


def _issuer_accepts(issuer: LocalIssuer, *, tenant: str, agent: str, role: str) -> bool:
    try:
        session_issuer.issue(issuer, tenant=tenant, agent=agent, role=role, ttl=60)
    except InputError:
        return False
    return True


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> LocalIssuer:
    return session_issuer.load_issuer(tmp_path_factory.mktemp("sessions"))


@settings(max_examples=150, deadline=None)
@given(name=_CANDIDATE)
def test_tenant_accepted_by_apply_iff_by_the_gateway(issuer: LocalIssuer, name: str) -> None:
    expected = _model_accepts(tenant=name)
    assert _gateway_accepts(issuer, tenant=name, agent="bot", role="analyst") == expected
    assert _issuer_accepts(issuer, tenant=name, agent="bot", role="analyst") == expected


@settings(max_examples=150, deadline=None)
@given(name=_CANDIDATE)
def test_role_accepted_by_apply_iff_by_the_gateway(issuer: LocalIssuer, name: str) -> None:
    expected = _model_accepts(role=name)
    assert _gateway_accepts(issuer, tenant="acme", agent="bot", role=name) == expected
    assert _issuer_accepts(issuer, tenant="acme", agent="bot", role=name) == expected


@settings(max_examples=150, deadline=None)
@given(name=_CANDIDATE)
def test_agent_accepted_by_the_issuer_iff_by_the_gateway(issuer: LocalIssuer, name: str) -> None:
    # Agents are not declared in the desired state; the platform names them.
    expected = names.AGENT_RE.fullmatch(name) is not None
    assert _gateway_accepts(issuer, tenant="acme", agent=name, role="analyst") == expected
    assert _issuer_accepts(issuer, tenant="acme", agent=name, role="analyst") == expected


@pytest.mark.parametrize(
    ("tenant", "agent", "role"),
    [("acme_eu", "data-reader", "data_reader"), ("a" * 31, "b" * 63, "c" * 31)],
    ids=["underscores_and_hyphens", "longest_names"],
)
def test_names_apply_accepts_open_a_session(
    issuer: LocalIssuer, tenant: str, agent: str, role: str
) -> None:
    assert _model_accepts(tenant=tenant, role=role)
    token = session_issuer.issue(issuer, tenant=tenant, agent=agent, role=role, ttl=60)
    policy = jwt_check.JWTPolicy(
        session_issuer.SESSIONS_ISSUER_URL, session_issuer.SESSION_AUDIENCE
    )
    claims = jwt_check.verify_session(
        token, jwt_check.KeySet(issuer.jwks()), policy, now=time.time()
    )
    assert (claims.tenant, claims.agent, claims.agent_role) == (tenant, agent, role)
    assert names.parse_db_role_name(render.db_role_name(role, tenant, "pg_main")) == (
        tenant,
        role,
        "pg_main",
    )
