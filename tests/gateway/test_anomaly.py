"""The anomaly rules, pure: a fake clock, no I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clawql_secrets.gateway.anomaly import (
    CALL_RATE,
    DENIED_BURST,
    OUT_OF_SCOPE,
    AnomalySettings,
    Detector,
    foreign_schemas,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _det(**kw: object) -> tuple[Detector, Clock]:
    clock = Clock()
    return Detector(AnomalySettings.model_validate(kw), clock=clock), clock


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t_globex.items",
        "select * from T_GLOBEX.items",
        'SELECT * FROM "t_globex" . items',
        "SELECT * FROM t_globex /* c */ .items",
        "SELECT a.id FROM items a JOIN t_globex.items b USING (id)",
        "SET search_path TO t_globex",
        "SELECT set_config('search_path', 't_globex', false)",
    ],
)
def test_foreign_schema_found(sql: str) -> None:
    assert foreign_schemas(sql, "acme", "t_") == ["t_globex"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM items",
        "SELECT * FROM t_acme.items",
        'SELECT * FROM "t_acme".items',
        "SET search_path TO t_acme",
        "SELECT has_schema_privilege('t_globex', 'USAGE')",  # names it, reaches nothing
        "SELECT 1 -- t_globex.items",
        "SELECT t_x FROM items",  # a column, not schema-qualified
        "SELECT at_globex.x FROM items at_globex",
    ],
)
def test_no_foreign_schema(sql: str) -> None:
    assert foreign_schemas(sql, "acme", "t_") == []


def test_quoted_schema_is_case_sensitive_and_hyphenated_tenant_matches() -> None:
    assert foreign_schemas('SELECT * FROM "t_my-co".items', "my-co", "t_") == []
    assert foreign_schemas('SELECT * FROM "T_ACME".items', "acme", "t_") == ["T_ACME"]


def test_out_of_scope_hit_names_schema_not_sql() -> None:
    det, _ = _det()
    hit = det.on_call("s1", "acme", "sql.query", {"sql": "SELECT secret FROM t_globex.items"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert "t_globex" in hit.detail and "SELECT" not in hit.detail


def test_scope_fields_are_per_tool_and_configurable() -> None:
    det, _ = _det()
    assert det.on_call("s1", "acme", "http.request", {"sql": "t_globex.items"}) is None
    det, _ = _det(scope_fields={"mariadb.query": ["query"]}, schema_prefix="tenant_")
    assert det.on_call("s1", "acme", "sql.query", {"sql": "SELECT * FROM t_globex.x"}) is None
    hit = det.on_call("s1", "acme", "mariadb.query", {"query": "SELECT * FROM tenant_b.x"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert det.on_call("s1", "acme", "mariadb.query", {"query": 42}) is None


def test_call_rate_over_bound_hits_within_window_only() -> None:
    det, clock = _det(rate_max=3, rate_window=10)
    for _ in range(3):
        assert det.on_call("s1", "acme", "sql.query", {"sql": "SELECT 1"}) is None
        clock.now += 1
    hit = det.on_call("s1", "acme", "sql.query", {"sql": "SELECT 1"})
    assert hit is not None and hit.rule == CALL_RATE
    # another session is counted separately
    assert det.on_call("s2", "acme", "sql.query", {"sql": "SELECT 1"}) is None
    # spread out: never over the bound
    det, clock = _det(rate_max=3, rate_window=10)
    for _ in range(20):
        assert det.on_call("s1", "acme", "sql.query", {"sql": "SELECT 1"}) is None
        clock.now += 4


def test_denied_burst() -> None:
    det, clock = _det(denied_max=2, denied_window=5)
    assert det.on_denied("s1") is None
    assert det.on_denied("s1") is None
    clock.now += 6  # the first two fall out of the window
    assert det.on_denied("s1") is None
    assert det.on_denied("s1") is None
    hit = det.on_denied("s1")
    assert hit is not None and hit.rule == DENIED_BURST


def test_forget_and_prune_bound_memory() -> None:
    det, clock = _det(rate_window=10, denied_window=5)
    det.on_call("s1", "acme", "sql.query", {"sql": "SELECT 1"})
    det.on_denied("s2")
    det.forget("s1")
    assert det.tracked() == 1
    det.on_call("s3", "acme", "sql.query", {"sql": "SELECT 1"})
    clock.now += 11
    det.on_call("s4", "acme", "sql.query", {"sql": "SELECT 1"})
    det.prune()
    assert det.tracked() == 1


def test_disabled_never_hits() -> None:
    det, _ = _det(enabled=False, rate_max=1, denied_max=1)
    for _ in range(5):
        assert det.on_call("s1", "acme", "sql.query", {"sql": "SELECT * FROM t_b.x"}) is None
        assert det.on_denied("s1") is None


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"denied_max": 0})
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"schema_prefix": "t_.*"})
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"unknown": 1})
