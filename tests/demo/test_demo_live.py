"""`clawql-secrets demo` as an end-to-end test: the whole promise on a live stack."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.demo.run import run
from clawql_secrets.provision.localstack import EXAMPLE, provision_example

pytestmark = pytest.mark.cluster
ADMIN = f"clawql_admin_d{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def provisioned(
    live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackSettings]:
    path = tmp_path_factory.mktemp("demo") / "clawql.yaml"
    path.write_text(EXAMPLE.read_text().replace("username: clawql_admin", f"username: {ADMIN}"))
    try:
        provision_example(live_stack, lambda _: None, path)
        yield live_stack
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(
                host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
            ) as conn,
        ):
            conn.execute(f'DROP ROLE IF EXISTS "{ADMIN}"')
        with contextlib.suppress(pymysql.MySQLError):
            maria = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
            with maria, maria.cursor() as cur:
                cur.execute(f"DROP USER IF EXISTS '{ADMIN}'@'%'")


def test_demo_promise_holds_at_every_step(provisioned: StackSettings) -> None:
    log: list[dict[str, Any]] = []
    steps = run(provisioned, lambda name, verdict, shown: log.append(
        {"step": name, "verdict": verdict, "shown": shown}))  # fmt: skip
    assert steps and all(s.ok for s in steps)
    names = " | ".join(s.name for s in steps)
    for expected in ("dynamic PostgreSQL user", "refused", "DELETE", "anomaly", "audit verify",
                     "inclusion proof"):  # fmt: skip
        assert expected in names
    # What the demo printed is what an agent or operator may see: no credential in it.
    text = json.dumps(log, default=str)
    assert "password" not in text.lower()
    assert re.search(r"\b(hvs|hvb|s|b)\.[A-Za-z0-9_-]{20,}", text) is None
