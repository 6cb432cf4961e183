"""KV allow-list and walk over an in-memory mount (the live test uses real OpenBao)."""

from __future__ import annotations

from typing import Any

import pytest

from clawql_secrets.errors import InputError
from clawql_secrets.scan import kv, sources
from clawql_secrets.scan.model import SECRET


def meta(version: int = 1, *, deleted: str = "", destroyed: bool = False) -> dict[str, Any]:
    return {
        "current_version": version,
        "versions": {str(version): {"deletion_time": deleted, "destroyed": destroyed}},
    }


TREE: dict[str, Any] = {
    "ops/": {
        "db": meta(),
        "injected/": {"stripe": meta(3), "github": meta()},
        "old": meta(2, deleted="2020-01-01T00:00:00.123456789Z"),
        "gone": meta(1, destroyed=True),
        "later": meta(1, deleted="2999-01-01T00:00:00Z"),
    },
    "tenants/": None,  # listing denied
}


def lister(prefix: str) -> list[str] | None:
    node: Any = {"": TREE}[""]
    for part in [p + "/" for p in prefix.strip("/").split("/") if p]:
        node = node.get(part)
        if node is None:
            return None
    return list(node)


def reader(path: str) -> dict[str, Any] | None:
    node: Any = TREE
    *dirs, leaf = path.split("/")
    for d in dirs:
        node = node[d + "/"]
    result: dict[str, Any] = node[leaf]
    return result


def test_walk_finds_live_secrets_and_reports_denied_prefixes() -> None:
    walked = kv.walk(lister, reader)
    assert walked.secrets == [
        ("ops/db", 1),
        ("ops/injected/github", 1),
        ("ops/injected/stripe", 3),
        ("ops/later", 1),
    ]
    assert walked.denied == ["tenants/"]


def test_walk_below_a_prefix() -> None:
    walked = kv.walk(lister, reader, "ops/injected")
    assert [p for p, _ in walked.secrets] == ["ops/injected/github", "ops/injected/stripe"]


def test_allow_listed_secrets_are_not_reported() -> None:
    walked = kv.walk(lister, reader, "ops")
    allow = kv.AllowList.parse("# injected third-party secrets\nops/injected/*\n\n")
    result = sources.kv_result(walked, allow, "secret")
    assert [(f.category, f.location.name) for f in result.findings] == [
        (SECRET, "secret/ops/db"),
        (SECRET, "secret/ops/later"),
    ]
    assert all("values not read" in f.preview for f in result.findings)


@pytest.mark.parametrize(
    ("glob", "path", "allowed"),
    [
        ("ops/injected/*", "ops/injected/stripe", True),
        ("ops/injected/*", "ops/injected/a/b", False),
        ("agents/**/stripe", "agents/t1/a1/stripe", True),
        ("agents/*/stripe", "agents/t1/a1/stripe", False),
        ("ops/db", "ops/db2", False),
    ],
)
def test_allow_list_globs(glob: str, path: str, allowed: bool) -> None:
    assert kv.AllowList.of([glob]).allows(path) is allowed


def test_empty_allow_list_allows_nothing() -> None:
    assert not kv.AllowList.of([]).allows("ops/anything")


def test_allow_list_refuses_dotdot() -> None:
    with pytest.raises(InputError):
        kv.AllowList.of(["ops/../tenants/*"])


def test_denied_walk_makes_the_scan_incomplete() -> None:
    walked = kv.walk(lister, reader)
    result = sources.kv_result(walked, kv.AllowList.of(["ops/**"]), "secret")
    assert result.findings == [] and result.incomplete and result.exit_code() == 3
