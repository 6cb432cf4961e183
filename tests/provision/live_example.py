"""The example desired state with a private admin user name, for live tests.

Runs the same example as `clawql-secrets up` under an admin of its own, so a test
never touches the admin of a developer's stack on the same machine; that admin is
dropped from PostgreSQL and MariaDB afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pymysql

from clawql_secrets.provision.localstack import EXAMPLE


@contextlib.contextmanager
def private_example(directory: Path, admin: str) -> Iterator[Path]:
    """``directory/clawql.yaml``: the example with ``admin`` as its database admin."""
    path = directory / "clawql.yaml"
    path.write_text(EXAMPLE.read_text().replace("username: clawql_admin", f"username: {admin}"))
    try:
        yield path
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(
                host="127.0.0.1", user="postgres", dbname="clawql", autocommit=True
            ) as conn,
        ):
            # The seed granted it the tenants' schemas WITH GRANT OPTION: gone first.
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [admin]).fetchone():
                conn.execute(f'DROP OWNED BY "{admin}"')
            conn.execute(f'DROP ROLE IF EXISTS "{admin}"')
        with contextlib.suppress(pymysql.MySQLError):
            maria = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
            with maria, maria.cursor() as cur:
                cur.execute(f"DROP USER IF EXISTS '{admin}'@'%'")
