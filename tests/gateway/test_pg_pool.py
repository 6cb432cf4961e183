"""``PGPool``'s timeout reset off the critical path, against the local PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg

from clawql_secrets.gateway.tools.sql import PGPool


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)


def _slow(seconds: float) -> bytes:
    return f"DO $$ BEGIN PERFORM pg_sleep({seconds}); END $$".encode()


def test_the_reset_undoes_a_set_made_during_the_call() -> None:
    pool = PGPool(_connect, 1, "postgres", b"SET statement_timeout = 1234")
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SET statement_timeout = 0")
        with pool.connection() as conn:
            row = conn.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')")
            assert row.fetchone() == (pid, "1234ms")
    finally:
        pool.close()


def test_taking_waits_for_a_reset_still_running() -> None:
    pool = PGPool(_connect, 1, "postgres", _slow(0.3), wait=5.0)
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with pool.connection() as conn:  # the reset is still sleeping on the server
            assert conn.info.backend_pid == pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_a_reset_without_an_answer_in_time_replaces_the_connection() -> None:
    pool = PGPool(_connect, 1, "postgres", _slow(2), wait=0.05)
    try:
        with pool.connection() as conn:
            first = conn
            pid = conn.info.backend_pid
        with pool.connection() as conn:
            assert conn.info.backend_pid != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert first.closed
    finally:
        pool.close()


def test_a_failed_reset_replaces_the_connection() -> None:
    pool = PGPool(_connect, 1, "postgres", b"SET statement_timeout = 'not a duration'")
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with pool.connection() as conn:
            assert conn.info.backend_pid != pid
    finally:
        pool.close()
