"""The anomaly rules, pure, and the windows they judge (in-memory registry, fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clawql_secrets.gateway.anomaly import (
    CALL_RATE,
    DENIED_BURST,
    OUT_OF_SCOPE,
    AnomalySettings,
    Detector,
    Hit,
    Window,
    foreign_schemas,
    tenant_schemas_from_state,
)
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import ENDED, MemoryRegistry, Opened
from clawql_secrets.provision.model import DesiredState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _det(**kw: object) -> tuple[Detector, Clock]:
    return Detector(AnomalySettings.model_validate(kw)), Clock()


def _claims(sid: str) -> SessionClaims:
    return SessionClaims(
        sid=sid, tenant="acme", agent="bot", agent_role="analyst", sub="acme/bot", exp=2**31,
        iat=0, jti="j",
    )  # fmt: skip


# The shipped example's tenants (examples/clawql.yaml): acme owns acme; globex
# owns globex and globex_reports. The same names are MariaDB databases.
EXAMPLE = {"acme": ["acme"], "globex": ["globex", "globex_reports"]}

# (case, SQL acme's agent sends, the schemas of other tenants it names)
FOREIGN = [
    ("qualified_table", "SELECT * FROM globex.facts", ["globex"]),
    ("second_schema_of_the_tenant", "SELECT * FROM globex_reports.daily", ["globex_reports"]),
    ("unquoted_upper_case_folds", "select * from GLOBEX.facts", ["globex"]),
    ("double_quoted", 'SELECT * FROM "globex".facts', ["globex"]),
    ("double_quoted_spaced", 'SELECT * FROM "globex" . "facts"', ["globex"]),
    ("backquoted_mariadb", "SELECT * FROM `globex`.`facts`", ["globex"]),
    ("backquoted_upper_case_mariadb", "SELECT * FROM `GLOBEX`.facts", ["globex"]),
    ("unicode_escaped_identifier", 'SELECT * FROM U&"\\0067lobex".facts', ["globex"]),
    (
        "unicode_escaped_with_uescape",
        "SELECT * FROM U&\"!0067lobex\" UESCAPE '!' .facts",
        ["globex"],
    ),
    ("comment_between_name_and_dot", "SELECT * FROM globex /* c */ .facts", ["globex"]),
    ("join", "SELECT a.id FROM items a JOIN globex.items b USING (id)", ["globex"]),
    ("subquery", "SELECT * FROM acme.x WHERE id IN (SELECT id FROM globex.y)", ["globex"]),
    ("column_of_qualified_table", "SELECT globex.facts.secret FROM acme.x", ["globex"]),
    ("catalog_qualified", "SELECT * FROM clawql.globex.facts", ["globex"]),
    ("function_in_other_schema", "SELECT globex.leak(1)", ["globex"]),
    ("insert_into", "INSERT INTO globex.facts (id) VALUES (1)", ["globex"]),
    ("alias_named_like_schema_in_from_list", "SELECT * FROM p globex, globex.facts", ["globex"]),
    ("second_statement", "SELECT 1; SELECT * FROM globex.facts", ["globex"]),
    ("set_search_path", "SET search_path TO globex, public", ["globex"]),
    ("set_local_search_path_quoted", 'SET LOCAL search_path = "globex"', ["globex"]),
    ("set_search_path_string_folds", "SET search_path = 'GLOBEX'", ["globex"]),
    (
        "set_config_search_path",
        "SELECT set_config('search_path', '\"$user\", globex_reports', false)",
        ["globex_reports"],
    ),
    (
        "escaped_string_in_search_path",
        "SELECT set_config('search_path', E'\\x67lob\\145x', false)",
        ["globex"],
    ),
    ("set_schema", "SET SCHEMA 'globex'", ["globex"]),
    ("use_database_mariadb", "USE globex", ["globex"]),
    ("use_backquoted_mariadb", "USE `globex`", ["globex"]),
    ("show_tables_from_mariadb", "SHOW TABLES FROM globex", ["globex"]),
    ("on_schema", "GRANT USAGE ON SCHEMA globex TO PUBLIC", ["globex"]),
    (
        "two_schemas_in_order",
        "SELECT * FROM globex_reports.r, globex.f",
        ["globex_reports", "globex"],
    ),
    # What one dialect reads as a comment or string, the other may run.
    ("hash_is_an_operator_in_postgresql", "SELECT 1 # 2 FROM globex.facts", ["globex"]),
    ("dashdash_without_space_is_minus_in_mariadb", "SELECT 1--1 FROM globex.facts", ["globex"]),
    ("executable_comment_mariadb", "SELECT 1 /*!50100 FROM globex.facts */", ["globex"]),
    ("nested_comment_ends_early_in_mariadb", "SELECT 1 /* /* */ FROM globex.f */", ["globex"]),
    ("backslash_ends_string_in_postgresql", "SELECT '\\' FROM globex.facts -- '", ["globex"]),
]

NOT_FOREIGN = [
    ("unqualified", "SELECT * FROM items"),
    ("own_schema", "SELECT * FROM acme.items"),
    ("own_schema_quoted", 'SELECT * FROM "acme".items'),
    ("own_search_path", "SET search_path TO acme"),
    ("quoted_upper_case_is_another_name", 'SELECT * FROM "GLOBEX".facts'),
    ("doubled_quote_is_another_name", 'SELECT * FROM "glo""bex".facts'),
    ("line_comment", "SELECT 1 -- globex.facts"),
    ("block_comment", "SELECT 1 /* globex.facts */"),
    ("string_data", "SELECT * FROM users WHERE email LIKE '%@globex.com'"),
    ("named_in_a_string_reaches_nothing", "SELECT has_schema_privilege('globex', 'USAGE')"),
    ("alias_named_like_schema", "SELECT globex.name FROM partners globex"),
    ("alias_after_as", "SELECT * FROM facts AS globex WHERE globex.id = 1"),
    ("table_named_like_schema", "SELECT globex.id FROM acme.globex"),
    ("extract_from_alias", "SELECT extract(year FROM globex.d) FROM orders globex"),
    ("is_distinct_from_alias", "SELECT 1 FROM t globex WHERE globex.a IS DISTINCT FROM globex.b"),
    ("column_named_like_schema", "SELECT globex FROM acme.partners"),
    ("prefix_of_a_schema_name", "SELECT * FROM globe.x, acme_old.y"),
    ("ordinary_sql", "SELECT 5 % 2; SELECT x FROM t WHERE y LIKE 'x%' AND z = $1"),
]


@pytest.mark.parametrize(("sql", "expected"), [c[1:] for c in FOREIGN], ids=[c[0] for c in FOREIGN])
def test_foreign_schema_found(sql: str, expected: list[str]) -> None:
    assert foreign_schemas(sql, "acme", EXAMPLE) == expected


@pytest.mark.parametrize("sql", [c[1] for c in NOT_FOREIGN], ids=[c[0] for c in NOT_FOREIGN])
def test_no_foreign_schema(sql: str) -> None:
    assert foreign_schemas(sql, "acme", EXAMPLE) == []


# Fragments where the two dialects' lexers disagree, to be glued in any order.
_FRAGMENTS = [
    "globex",
    "GLOBEX",
    "acme",
    "from",
    "use",
    "search_path",
    "E",
    "u&",
    *".,;()'\"`\\#",
    *("$$", "$t$", "--", "/*", "*/", "/*!", " ", "\n"),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join))
def test_any_text_is_judged_without_error(sql: str) -> None:
    found = foreign_schemas(sql, "acme", EXAMPLE)
    assert set(found) <= {"globex", "globex_reports"}
    assert len(found) == len(set(found))


def test_each_tenant_is_judged_by_the_others_schemas() -> None:
    sql = "SELECT * FROM acme.a JOIN globex.g USING (id) JOIN globex_reports.r USING (id)"
    assert foreign_schemas(sql, "acme", EXAMPLE) == ["globex", "globex_reports"]
    assert foreign_schemas(sql, "globex", EXAMPLE) == ["acme"]
    # a tenant the map does not know owns nothing: every known schema is another's
    assert foreign_schemas(sql, "initech", EXAMPLE) == ["acme", "globex", "globex_reports"]
    assert foreign_schemas(sql, "acme", {}) == []


def test_out_of_scope_hit_names_schema_not_sql() -> None:
    det, _ = _det(tenant_schemas=EXAMPLE)
    hit = det.scope("acme", "sql.query", {"sql": "SELECT secret FROM globex.items"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert "globex" in hit.detail and "SELECT" not in hit.detail
    assert det.scope("globex", "sql.query", {"sql": "SELECT * FROM globex_reports.r"}) is None


def test_without_tenant_schemas_the_rule_is_inert() -> None:
    det, _ = _det()
    assert det.scope("acme", "sql.query", {"sql": "SELECT * FROM globex.items"}) is None


def test_scope_fields_are_per_tool_and_configurable() -> None:
    det, _ = _det(tenant_schemas=EXAMPLE)
    assert det.scope("acme", "http.request", {"sql": "globex.items"}) is None
    det, _ = _det(tenant_schemas=EXAMPLE, scope_fields={"mariadb.query": ["query"]})
    assert det.scope("acme", "sql.query", {"sql": "SELECT * FROM globex.x"}) is None
    hit = det.scope("acme", "mariadb.query", {"query": "SELECT * FROM `globex`.x"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert det.scope("acme", "mariadb.query", {"query": 42}) is None


def test_tenant_schemas_from_the_example_state() -> None:
    state = DesiredState.model_validate(
        {
            "version": 1,
            "exchange": {"jwks_url": "https://gateway.clawql.local/jwks"},
            "tenants": [{"name": "acme"}, {"name": "globex", "schemas": EXAMPLE["globex"]}],
            "approvals": {"approvers": ["alice", "bob"], "threshold": 2},
        }
    )
    assert tenant_schemas_from_state(state) == EXAMPLE
    AnomalySettings(tenant_schemas=tenant_schemas_from_state(state))


def _calls(reg: MemoryRegistry, det: Detector, sid: str = "s1") -> Hit | None:
    return det.rate(reg.open(_claims(sid), det.calls_window).calls)


def _denied(reg: MemoryRegistry, det: Detector, sid: str = "s1") -> Hit | None:
    return det.denied(reg.count_denied(sid, det.denied_window))


def test_call_rate_over_bound_hits_within_window_only() -> None:
    det, clock = _det(rate_max=3, rate_window=10)
    reg = MemoryRegistry(clock=clock)
    for _ in range(3):
        assert _calls(reg, det) is None
        clock.now += 1
    hit = _calls(reg, det)
    assert hit is not None and hit.rule == CALL_RATE
    # another session is counted separately
    assert _calls(reg, det, "s2") is None
    # spread out: never over the bound
    det, clock = _det(rate_max=3, rate_window=10)
    reg = MemoryRegistry(clock=clock)
    for _ in range(20):
        assert _calls(reg, det) is None
        clock.now += 4


def test_denied_burst() -> None:
    det, clock = _det(denied_max=2, denied_window=5)
    reg = MemoryRegistry(clock=clock)
    assert _denied(reg, det) is None
    assert _denied(reg, det) is None
    clock.now += 6  # the first two fall out of the window
    assert _denied(reg, det) is None
    assert _denied(reg, det) is None
    hit = _denied(reg, det)
    assert hit is not None and hit.rule == DENIED_BURST


def test_counts_are_capped_and_dropped_when_the_session_ends() -> None:
    _, clock = _det(rate_max=3, rate_window=100)
    reg = MemoryRegistry(clock=clock)
    counts = [reg.open(_claims("s1"), Window(100, 4)).calls for _ in range(50)]
    assert counts[:4] == [1, 2, 3, 4] and set(counts[4:]) == {4}
    reg.end("s1", exp=_claims("s1").exp, reason="ended")
    # an ended session is not counted (its calls are refused before any rule)
    assert reg.open(_claims("s1"), Window(100, 4)) == Opened(ENDED, 0)


def test_disabled_never_hits() -> None:
    det, clock = _det(enabled=False, rate_max=1, denied_max=1, tenant_schemas=EXAMPLE)
    reg = MemoryRegistry(clock=clock)
    assert det.calls_window.seconds == 0 and det.denied_window.seconds == 0
    for _ in range(5):
        assert det.scope("acme", "sql.query", {"sql": "SELECT * FROM globex.x"}) is None
        assert _calls(reg, det) is None
        assert _denied(reg, det) is None
    assert (
        reg.open(_claims("s1"), Window(det.calls_window.seconds, 2)).calls == 0
    )  # nothing counted


# (case, settings, text expected in the error)
BAD_SETTINGS = [
    ("zero_denied_max", {"denied_max": 0}, "denied_max"),
    ("unknown_key", {"unknown": 1}, "unknown"),
    ("schema_prefix_is_gone", {"schema_prefix": "t_"}, "tenant_schemas_from_state"),
    ("tenant_not_a_name", {"tenant_schemas": {"Acme": ["acme"]}}, "tenant_schemas"),
    ("schema_not_a_name", {"tenant_schemas": {"acme": ["acme.*"]}}, "tenant_schemas"),
    (
        "schema_of_two_tenants",
        {"tenant_schemas": {"acme": ["shared"], "globex": ["shared"]}},
        "belongs to both",
    ),
]


@pytest.mark.parametrize(
    ("settings", "expected"), [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_bad_settings_are_refused(settings: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        AnomalySettings.model_validate(settings)
    assert expected in str(info.value)
