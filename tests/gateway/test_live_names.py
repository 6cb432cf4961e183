"""Every name ``apply`` accepts works end to end (issue 13 item 9).

A tenant ``acme_eu`` (an underscore: the grammar allows it in tenants, roles,
connections and schemas), a role ``data_reader`` and an agent ``data-reader_1``
(agents may also carry ``-``) go through the shipped path: the desired state
applied by the provisioner and approved four-eyes, a session JWT from the
session issuer, the gateway's exchange, a dynamic PostgreSQL and MariaDB user,
and the session's end. Before ``names.py`` the desired state accepted
``acme_eu`` and the gateway refused it (``token_bad_claim``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.gateway import session_issuer
from tests import shipped
from tests.gateway import live

pytestmark = [pytest.mark.cluster, pytest.mark.gateway]

TENANT, ROLE, AGENT = "acme_eu", "data_reader", "data-reader_1"
EXTRA_ROLE = f"""\
  - name: {ROLE}
    tenants: [{TENANT}]
    tools: [sql.query]
    databases:
      - connection: pg_main
        schema: "{{tenant}}"
        privileges: [SELECT]
      - connection: maria_main
        privileges: [SELECT]
"""


def _edit(text: str) -> str:
    """The example plus tenant acme_eu and role data_reader."""
    text = text.replace("  - name: globex\n", f"  - name: {TENANT}\n  - name: globex\n", 1)
    return text.replace("roles:\n", "roles:\n" + EXTRA_ROLE, 1)


@pytest.fixture(scope="module")
def replica(
    live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[live.InProcessReplica, shipped.Shipped]]:
    d = tmp_path_factory.mktemp("names")
    with shipped.provisioned(live_stack, d, edit=_edit) as sh:
        cfg = live.config_for(sh, live.free_port())
        a = live.start_in_process(cfg, live.Canaries())
        try:
            yield a, sh
        finally:
            a.stop()


def test_underscored_tenant_role_and_hyphenated_agent_work_end_to_end(
    replica: tuple[live.InProcessReplica, shipped.Shipped],
) -> None:
    a, sh = replica
    assert {t.name for t in sh.state.tenants} >= {TENANT}
    jwt = session_issuer.issue(
        session_issuer.load_issuer(sh.settings.data_dir),
        tenant=TENANT,
        agent=AGENT,
        role=ROLE,
        ttl=300,
        audience=a.gateway.config.sessions.audience,
    )
    agent = live.Agent()
    try:

        def sql(database: str, text: str) -> Any:
            return agent.call(a.url, jwt, "sql.query", {"database": database, "sql": text})

        pg = sql("pg_main", f"SELECT v FROM {TENANT}.facts")
        assert pg.status_code == 200, pg.text
        assert pg.json()["result"]["rows"] == [[TENANT]]
        maria = sql("maria_main", "SELECT v FROM facts")
        assert maria.status_code == 200, maria.text
        assert maria.json()["result"]["rows"] == [[TENANT]]
        me = sql("pg_main", "SELECT current_user")
        user = str(me.json()["result"]["rows"][0][0])
        assert user in shipped.session_users(sh.pg_database)
        # Another tenant's schema, named from the new tenant: refused (the scope rule
        # knows acme's schema from the desired state and ends the session).
        other = sql("pg_main", "SELECT v FROM acme.facts")
        assert other.status_code == 403, other.text
        end = agent.send("DELETE", f"{a.url}/v1/sessions/{live.sid(jwt)}", jwt)
        assert end.status_code == 200 and end.json()["state"] == "ended", end.text
        live.wait_until(lambda: user not in shipped.session_users(sh.pg_database), timeout=5)
    finally:
        with contextlib.suppress(Exception):
            agent.close()
