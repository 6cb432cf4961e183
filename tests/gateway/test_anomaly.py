"""The anomaly rules, pure, and the windows they judge (in-memory registry, fake clock)."""

from __future__ import annotations

import pytest
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
)
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.gateway.registry import ENDED, MemoryRegistry, Opened


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
    hit = det.scope("acme", "sql.query", {"sql": "SELECT secret FROM t_globex.items"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert "t_globex" in hit.detail and "SELECT" not in hit.detail


def test_scope_fields_are_per_tool_and_configurable() -> None:
    det, _ = _det()
    assert det.scope("acme", "http.request", {"sql": "t_globex.items"}) is None
    det, _ = _det(scope_fields={"mariadb.query": ["query"]}, schema_prefix="tenant_")
    assert det.scope("acme", "sql.query", {"sql": "SELECT * FROM t_globex.x"}) is None
    hit = det.scope("acme", "mariadb.query", {"query": "SELECT * FROM tenant_b.x"})
    assert hit is not None and hit.rule == OUT_OF_SCOPE
    assert det.scope("acme", "mariadb.query", {"query": 42}) is None


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
    det, clock = _det(enabled=False, rate_max=1, denied_max=1)
    reg = MemoryRegistry(clock=clock)
    assert det.calls_window.seconds == 0 and det.denied_window.seconds == 0
    for _ in range(5):
        assert det.scope("acme", "sql.query", {"sql": "SELECT * FROM t_b.x"}) is None
        assert _calls(reg, det) is None
        assert _denied(reg, det) is None
    assert (
        reg.open(_claims("s1"), Window(det.calls_window.seconds, 2)).calls == 0
    )  # nothing counted


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"denied_max": 0})
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"schema_prefix": "t_.*"})
    with pytest.raises(ValidationError):
        AnomalySettings.model_validate({"unknown": 1})
