"""Gateway benchmarks, side by side in one run on one machine.

1. ``sql.query SELECT 1`` through a gateway process (warm session: its DB user
   exists) vs the raw floor: batch JWT login to OpenBao + the same query on an
   open psycopg connection. p50/p99 and throughput at 1 and 8 concurrent
   sessions.
2. Session end → DB role gone and connections terminated, over 100 sessions.

Loopback only; every loop is bounded in count. The OpenBao configuration comes
from ``tests/gateway/openbao_setup.py`` until ``provision apply`` replaces it.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.gateway import session_issuer
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live, openbao_setup

ROLE = "analyst"
CALLS_1 = 300
CALLS_8 = 80  # per session
END_SESSIONS = 100


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


def _load(worker: Callable[[int], list[float]], n: int) -> tuple[list[float], float]:
    out: list[list[float]] = [[] for _ in range(n)]

    def run(i: int) -> None:
        out[i] = worker(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [x for xs in out for x in xs]
    return lat, len(lat) / wall


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s = stack.free_settings(d / "stack")
        fx: openbao_setup.PGFixture | None = None
        rep: live.ProcessReplica | None = None
        prefix = "clawql:gwbench"
        try:
            stack.up(s)
            workload = LocalIssuer.load_or_create(s.issuer_dir, stack.ISSUER_URL)
            sessions = session_issuer.load_issuer(d)
            fx, admin_pw = openbao_setup.setup_postgres(("acme",))
            with stack.client_for(s) as client:
                openbao_setup.configure(
                    client,
                    workload,
                    sessions,
                    fx,
                    admin_pw,
                    agent_role=ROLE,
                    audience=session_issuer.SESSION_AUDIENCE,
                )
            port = live.free_port()
            cfg: dict[str, Any] = {
                "port": port,
                "openbao": {
                    "addrs": [s.api_addr(n) for n in NODE_IDS],
                    "ca_file": str(s.node_ca_dir / "ca.pem"),
                },
                "sessions": {"jwks_file": str(d / "sessions-issuer" / "jwks.json")},
                "identity": {
                    "local_issuer_dir": str(s.issuer_dir),
                    "local_issuer_url": stack.ISSUER_URL,
                },
                "registry": {"prefix": prefix},
                "databases": {"default": {"host": "127.0.0.1", "dbname": fx.dbname}},
                "log_level": "warning",
            }
            rep = live.start_process(live.write_config(d / "gw.yaml", cfg), port, d / "gw.log")
            return _measure(s, fx, sessions, rep.url)
        finally:
            if rep is not None:
                rep.stop()
            if fx is not None:
                openbao_setup.teardown_postgres(fx)
            r = redis.Redis()
            for key in r.scan_iter(f"{prefix}:*"):
                r.delete(key)
            r.close()
            stack.down(s)


def _measure(s: StackSettings, fx: openbao_setup.PGFixture, sessions: LocalIssuer, url: str) -> str:
    def jwt(agent: str, ttl: int = 900) -> str:
        return session_issuer.issue(sessions, tenant="acme", agent=agent, role=ROLE, ttl=ttl)

    def gateway_worker(calls: int) -> Callable[[int], list[float]]:
        def work(i: int) -> list[float]:
            token = jwt(f"gw{i}-{time.monotonic_ns() % 10**6}")
            lat = []
            with httpx.Client(base_url=url, timeout=30) as http:
                h = {"Authorization": f"Bearer {token}"}
                body = {"sql": "SELECT 1"}
                http.post("/v1/tools/sql.query", json=body, headers=h).raise_for_status()  # warm
                for _ in range(calls):
                    t0 = time.perf_counter()
                    http.post("/v1/tools/sql.query", json=body, headers=h).raise_for_status()
                    lat.append(time.perf_counter() - t0)
                sid = session_id(token)
                http.delete(f"/v1/sessions/{sid}", headers=h)
            return lat

        return work

    def raw_worker(calls: int) -> Callable[[int], list[float]]:
        def work(i: int) -> list[float]:
            token = jwt(f"raw{i}-{time.monotonic_ns() % 10**6}")
            lat = []
            with stack.client_for(s, retry_for=5) as bao:
                login = bao.request(
                    "POST", "auth/sessions/login", body={"role": ROLE, "jwt": token}, token=""
                )
                creds = bao.read(f"database/creds/{ROLE}-acme", token=login["auth"]["client_token"])
                with psycopg.connect(
                    host="127.0.0.1",
                    dbname=fx.dbname,
                    user=creds["data"]["username"],
                    password=creds["data"]["password"],
                    autocommit=True,
                ) as conn:
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        bao.request(
                            "POST",
                            "auth/sessions/login",
                            body={"role": ROLE, "jwt": token},
                            token="",
                        )
                        conn.execute("SELECT 1").fetchall()
                        lat.append(time.perf_counter() - t0)
            return lat

        return work

    rows = []
    for n, calls in ((1, CALLS_1), (8, CALLS_8)):
        for name, make in (
            ("raw batch login + psycopg", raw_worker),
            ("gateway sql.query", gateway_worker),
        ):
            lat, tput = _load(make(calls), n)
            p50, p99 = _pct(lat, 50), _pct(lat, 99)
            rows.append(f"| {name} | {n} | {len(lat)} | {p50:.2f} | {p99:.2f} | {tput:.0f} |")

    # session end → role gone (DELETE is synchronous; the check runs right after it)
    ends: list[float] = []
    with (
        httpx.Client(base_url=url, timeout=30) as http,
        psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
        ) as su,
    ):
        for i in range(END_SESSIONS):
            token = jwt(f"end{i}")
            h = {"Authorization": f"Bearer {token}"}
            r = http.post("/v1/tools/sql.query", json={"sql": "SELECT current_user"}, headers=h)
            user = r.json()["result"]["rows"][0][0]
            t0 = time.perf_counter()
            http.delete(f"/v1/sessions/{session_id(token)}", headers=h).raise_for_status()
            deadline = t0 + 5
            while time.perf_counter() < deadline:
                gone = su.execute("SELECT 1 FROM pg_roles WHERE rolname=%s", [user]).fetchone()
                conns = su.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE usename=%s", [user]
                ).fetchone()
                if gone is None and conns is None:
                    break
                time.sleep(0.002)
            ends.append(time.perf_counter() - t0)
    return "\n".join(
        [
            "## Gateway",
            "",
            "`sql.query SELECT 1` on a warm session through one gateway process vs the raw floor",
            "(batch JWT login + the same query on an open psycopg connection), same run:",
            "",
            "| path | sessions | calls | p50 ms | p99 ms | calls/s |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Session end → DB role gone and connections terminated, {len(ends)} sessions: "
            f"p50 {_pct(ends, 50):.1f} ms, p99 {_pct(ends, 99):.1f} ms, "
            f"median {statistics.median(ends) * 1000:.1f} ms.",
        ]
    )


def session_id(token: str) -> str:
    import base64
    import json

    seg = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))["sid"])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        print(run())
