"""Gateway benchmarks, side by side in one run on one machine, on the shipped configuration.

OpenBao is configured as ``up`` configures it (``tests/shipped.py``: the example
desired state applied by the provisioner, policies through four-eyes), and the
gateway process runs the configuration ``up`` writes for it
(``Shipped.gateway_config``; only its port and its registry namespace are its own,
so it is the only replica of its sessions).

1. ``sql.query SELECT 1`` on ``pg_main`` through the gateway process (warm session:
   its anchor token and DB user exist) vs the raw floor, which is what the gateway
   itself must do per call: sign an exchange assertion with the gateway's key, log
   in with it to the agents mount (``analyst``: a batch token, ``call_token_ttl``)
   and run the same query on an open psycopg connection. p50/p99 and throughput at
   1 and 8 concurrent sessions, ``REPS`` times interleaved (raw, gateway, raw,
   gateway, ...), the medians reported; plus the CPU per call of each part
   (OpenBao nodes, audit shipper, gateway, Redis, PostgreSQL, load generator, whole
   machine), read from ``/proc`` around the timed loops only.
2. OpenBao's raft writes per tool call: the leader's ``raft_committed_index``
   (``sys/leader``, unauthenticated, itself no write) around bounded loops of
   calls, against an idle window of the same length.
3. OpenBao's CPU per batch login, back to back vs spaced by a sleep: what the
   time a gateway spends between two logins does to OpenBao alone.

Both paths use the same lean client: a standard-library ``http.client``
connection kept alive per worker (plain HTTP to the gateway, TLS verified
against the cluster CA to OpenBao). The raw path once logged in through
``OpenBaoClient`` (httpx) and the gateway side used ``httpx.Client``: 2.1-2.8
and 1.8-2.6 ms of load-generator CPU per call against 0.7-1.1 and 0.55-0.8 ms
with ``http.client``; on 2 shared cores that slowed the raw floor more and
made the gateway's ratio look better than it is (ADR 0005, "Performance").

Loopback only; every loop is bounded in count (and the barriers in time). The
revocation latencies are ``bench_revocation``'s.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from clawql_secrets.cluster import redis_registry, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.exchange import AssertionSpec, ExchangeSigner
from clawql_secrets.gateway.jwt_check import SessionClaims
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live
from tests.shipped import Shipped, provisioned

ROLE, TENANT, DATABASE = "analyst", "acme", "pg_main"
CALLS_1 = 300
CALLS_8 = 80  # per session
REPS = 5
RAFT_CALLS = 300  # per raft-write loop
RAFT_SESSIONS = 5  # sessions whose first call and end are counted
_TICK = os.sysconf("SC_CLK_TCK")
Worker = Callable[[int, threading.Barrier], list[float]]


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine (every core; idle and iowait excluded)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / _TICK


def _groups(s: StackSettings, gw_pid: int | None = None) -> dict[str, list[int]]:
    """The processes whose CPU the gateway path and the raw path spend, by part."""
    nodes = [str(s.node_config(n)) for n in NODE_IDS]
    # The stack's registry Redis (TLS, ADR 0011), not the machine's on 6379.
    registry = json.loads(redis_registry.marker_path(s).read_text())
    out: dict[str, list[int]] = {
        "OpenBao nodes": [],
        "audit shipper": [],
        "PostgreSQL": [],
        "Redis": [int(registry["redis_pid"])],
        "gateway": [gw_pid] if gw_pid else [],
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if any(n in cmd for n in nodes) and " server " in cmd:
            out["OpenBao nodes"].append(int(entry.name))
        elif str(s.shipper_config) in cmd:
            out["audit shipper"].append(int(entry.name))
        elif comm == "postgres":
            out["PostgreSQL"].append(int(entry.name))
    return out


def _snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    snap = {name: sum(_proc_cpu(p) for p in pids) for name, pids in groups.items()}
    snap["load generator"] = time.process_time()
    snap["whole machine"] = _machine_cpu()
    return snap


def _load(
    worker: Worker, n: int, groups: Callable[[], dict[str, list[int]]]
) -> tuple[list[float], float, dict[str, float]]:
    """Latencies, calls/s and CPU seconds per part (``_snapshot``): timed loops only.

    Four barrier phases: set-up done (first call, DB user), counters read (the loops
    start), loops done, counters read again. No call is made while the counters are
    read, and workers end their sessions only after the last phase, so no process
    whose CPU is counted exits inside the window.
    """
    out: list[list[float]] = [[] for _ in range(n)]
    gate = threading.Barrier(n + 1, timeout=300)

    def run(i: int) -> None:
        try:
            out[i] = worker(i, gate)
        except BaseException:
            gate.abort()
            raise

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        gate.wait()
        procs = groups()
        before, t0 = _snapshot(procs), time.perf_counter()
        gate.wait()
        gate.wait()
        wall = time.perf_counter() - t0
        after = _snapshot(procs)
        gate.wait()
    finally:
        for t in threads:
            t.join()
    lat = [x for xs in out for x in xs]
    return lat, len(lat) / wall, {k: after[k] - before[k] for k in after}


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s = stack.free_settings(d / "stack")
        try:
            stack.up(s)
            with provisioned(s, d) as sh:
                port = live.free_port()
                cfg = sh.gateway_config(port=port, registry_prefix=live.registry_prefix("bench"))
                path = d / "gateway.json"
                path.write_text(cfg.model_dump_json())
                rep = live.start_process(path, port, d / "gateway.log")
                try:
                    return _measure(sh, cfg, rep.url, rep.proc.pid)
                finally:
                    rep.stop()
        finally:
            stack.down(s)


def _measure(sh: Shipped, cfg: GatewayConfig, url: str, gw_pid: int) -> str:
    s = sh.settings
    ca = ssl.create_default_context(cafile=str(s.node_ca_dir / "ca.pem"))
    gw_host, gw_port = url.removeprefix("http://").split(":")
    sessions = session_issuer.load_issuer(s.data_dir)
    x = cfg.exchange
    signer = ExchangeSigner.from_file(
        x.key_file, AssertionSpec(x.issuer, x.audience, x.actor, x.ttl)
    )
    mount = cfg.sessions.mount
    login_path = f"/v1/auth/{mount}/login"
    creds_path = f"database/creds/{TENANT}-{ROLE}-{DATABASE}"  # provision.render's name

    def jwt(agent: str, ttl: int = 900) -> str:
        return _session_jwt(sessions, s, agent, ttl)

    def login_body(claims: SessionClaims, role: str = ROLE) -> bytes:
        """What the gateway sends per call: a fresh assertion signed with its key."""
        use = "session" if role.endswith(".session") else "call"
        jwt = signer.assertion(claims, time.time(), use=use)
        return json.dumps({"role": role, "jwt": jwt}).encode()

    def gateway_worker(calls: int) -> Worker:
        def work(i: int, gate: threading.Barrier) -> list[float]:
            token = jwt(f"gw{i}-{time.monotonic_ns() % 10**7}")
            lat = []
            h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            body = json.dumps({"sql": "SELECT 1", "database": DATABASE}).encode()
            conn = http.client.HTTPConnection(gw_host, int(gw_port), timeout=30)
            try:
                _post(conn, "/v1/tools/sql.query", body, h)  # warm: anchor token, DB user
                gate.wait()
                gate.wait()
                for _ in range(calls):
                    t0 = time.perf_counter()
                    _post(conn, "/v1/tools/sql.query", body, h)
                    lat.append(time.perf_counter() - t0)
                gate.wait()
                gate.wait()
                conn.request("DELETE", f"/v1/sessions/{session_id(token)}", headers=h)
                conn.getresponse().read()
            finally:
                conn.close()
            return lat

        return work

    def raw_worker(calls: int) -> Worker:
        def work(i: int, gate: threading.Barrier) -> list[float]:
            claims = _claims(f"raw{i}-{time.monotonic_ns() % 10**7}")
            lat = []
            h = {"Content-Type": "application/json"}
            with (
                stack.client_for(s, retry_for=5) as bao,
                _session_credential(bao, claims, login_body, mount, creds_path) as creds,
            ):
                conn = _bao_conn(s, ca, login_path, login_body(claims), h)
                try:
                    with psycopg.connect(
                        host="127.0.0.1",
                        dbname=sh.pg_database,
                        user=creds["username"],
                        password=creds["password"],
                        autocommit=True,
                    ) as db:
                        gate.wait()
                        gate.wait()
                        for _ in range(calls):
                            t0 = time.perf_counter()
                            _post(conn, login_path, login_body(claims), h)
                            db.execute("SELECT 1").fetchall()
                            lat.append(time.perf_counter() - t0)
                        gate.wait()
                        gate.wait()
                finally:
                    conn.close()
            return lat

        return work

    paths = (("raw exchange login + psycopg", raw_worker), ("gateway sql.query", gateway_worker))
    background = [_background()]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(REPS):
        for n, calls in ((1, CALLS_1), (8, CALLS_8)):
            for name, make in paths:
                lat, tput, cpu = _load(make(calls), n, lambda: _groups(s, gw_pid))
                if make is raw_worker:
                    cpu["gateway"] = 0.0  # idle, not part of this path
                runs.setdefault((name, n), []).append(
                    {
                        "p50": _pct(lat, 50),
                        "p99": _pct(lat, 99),
                        "tput": tput,
                        "calls": len(lat),
                        **{f"cpu:{k}": v / len(lat) * 1000 for k, v in cpu.items()},
                    }
                )

    def med(name: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[(name, n)])

    raw, gw = paths[0][0], paths[1][0]
    rows = []
    for n in (1, 8):
        for name in (raw, gw):
            rows.append(
                f"| {name} | {n} | {med(name, n, 'calls'):.0f} | {med(name, n, 'p50'):.2f} "
                f"| {med(name, n, 'p99'):.2f} | {med(name, n, 'tput'):.0f} |"
            )
    parts = _PARTS
    cpu_rows = []
    for n in (1, 8):
        for name in (raw, gw):
            cells = " | ".join(f"{med(name, n, 'cpu:' + k):.2f}" for k in parts)
            cpu_rows.append(f"| {name} | {n} | {cells} |")
    d_p50 = [g["p50"] - r["p50"] for r, g in zip(runs[(raw, 1)], runs[(gw, 1)], strict=True)]
    ratio = [g["tput"] / r["tput"] for r, g in zip(runs[(raw, 8)], runs[(gw, 8)], strict=True)]
    background.append(_background())
    # A gateway that used no CPU, on the parts measured (the machine also runs others'
    # processes, see ``background``): the raw path's CPU per call over the gateway
    # path's without the gateway process.
    ours = [p for p in _PARTS if p not in ("whole machine", "gateway")]

    def spent(r: dict[str, float]) -> float:
        return sum(r["cpu:" + p] for p in ours)

    rest = [spent(g) for g in runs[(gw, 8)]]
    ceiling = [spent(r) / x for r, x in zip(runs[(raw, 8)], rest, strict=True)]
    raft = _raft(s, ca, url, jwt, _claims, login_body, login_path, sh, mount, creds_path)
    spacing = _spacing(s, ca, _claims, login_body, login_path)
    within = statistics.median(d_p50) <= 1.5
    meets = statistics.median(ratio) >= 0.70
    return "\n".join(
        [
            "## Gateway",
            "",
            "`.venv/bin/python -m benchmarks.run bench_gateway` (`benchmarks/bench_gateway.py`).",
            "",
            "`sql.query SELECT 1` on `pg_main`, warm session, through one gateway process",
            "running the configuration `up` ships (`tests/shipped.py`: the example desired",
            "state applied by the provisioner; per-call batch tokens living `call_token_ttl`",
            "15 s, one anchor service token per session credential; gateway log level `info`)",
            "vs the raw floor: what the gateway itself must do per call, i.e. sign an exchange",
            "assertion with the gateway's Ed25519 key, log in with it to the agents mount",
            "(`analyst`, a batch token) and run the same query on an open psycopg connection.",
            "Both through a kept-alive standard-library `http.client` connection per worker.",
            f"Medians of {REPS} interleaved repetitions:",
            "",
            "| path | sessions | calls | p50 ms | p99 ms | calls/s |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"p50 above raw at 1 session, per repetition: "
            f"{', '.join(f'{v:+.2f}' for v in d_p50)} ms (median {statistics.median(d_p50):+.2f};"
            f" target ≤ +1.5: {'met' if within else 'missed'}).",
            f"8-session throughput vs raw, per repetition: "
            f"{', '.join(f'{v * 100:.0f} %' for v in ratio)} "
            f"(median {statistics.median(ratio) * 100:.0f} %; target ≥ 70 %: "
            f"{'met' if meets else 'missed'}).",
            "",
            "CPU per call (ms) in the same windows, by part: `/proc` counters of the stack's",
            "OpenBao nodes, audit shipper and registry Redis, every PostgreSQL process, the",
            "gateway process (0 on the raw path: it is idle there), this load generator, and the",
            "whole machine (`/proc/stat`, every process, both cores). Throughput at 8 sessions",
            "is bound by the whole machine's CPU per call:",
            "",
            "| path | sessions | " + " | ".join(parts) + " |",
            "|---|---|" + "---|" * len(parts),
            *cpu_rows,
            "",
            "The whole machine also runs what is not this benchmark's (other test runs on a",
            "shared box): with no call of ours in flight it was busy "
            f"{background[0]:.2f} cores before the repetitions and {background[1]:.2f} after,",
            "which its column spreads over the calls of each window (more per call on the",
            "slower path). On the parts measured (OpenBao, shipper, Redis, PostgreSQL, load",
            "generator), the gateway path without the gateway process costs "
            f"{statistics.median(rest):.2f} ms per call at 8 sessions (raw: "
            f"{statistics.median(spent(r) for r in runs[(raw, 8)]):.2f} ms), so a gateway "
            f"that used no CPU at all would reach {statistics.median(ceiling) * 100:.0f} % of "
            f"raw throughput in this run ({min(ceiling) * 100:.0f}-{max(ceiling) * 100:.0f} % "
            "over the repetitions).",
            "",
            *raft,
            "",
            *spacing,
            "",
            'ADR 0005 "Performance" reads these tables.',
        ]
    )


_PARTS = [
    "whole machine",
    "OpenBao nodes",
    "audit shipper",
    "gateway",
    "Redis",
    "PostgreSQL",
    "load generator",
]


def _background(seconds: float = 3.0) -> float:
    """Cores the machine keeps busy while this benchmark makes no call."""
    c0, t0 = _machine_cpu(), time.perf_counter()
    time.sleep(seconds)
    return (_machine_cpu() - c0) / (time.perf_counter() - t0)


def _claims(agent: str, ttl: int = 900) -> SessionClaims:
    """A session's verified claims, as the gateway holds them after its local check."""
    now = int(time.time())
    return SessionClaims(
        sid=secrets.token_urlsafe(18),
        tenant=TENANT,
        agent=agent,
        agent_role=ROLE,
        sub=f"{TENANT}/{agent}",
        exp=now + ttl,
        iat=now,
        jti=secrets.token_urlsafe(12),
    )


def _session_jwt(sessions: LocalIssuer, s: StackSettings, agent: str, ttl: int = 900) -> str:
    return session_issuer.issue(
        sessions, tenant=TENANT, agent=agent, role=ROLE, ttl=ttl, audience=s.gateway_addr
    )


@contextlib.contextmanager
def _session_credential(
    bao: OpenBaoClient,
    claims: SessionClaims,
    login_body: Callable[..., bytes],
    mount: str,
    creds_path: str,
) -> Iterator[dict[str, str]]:
    """The raw path's DB user, obtained as the gateway obtains one (anchor token, creds
    read, both bounded to the session); revoking the anchor afterwards drops it."""
    auth = bao.request(
        "POST",
        f"auth/{mount}/login",
        body=json.loads(login_body(claims, ROLE + ".session")),
        token="",
    )["auth"]
    anchor = str(auth["client_token"])
    try:
        bao.request(
            "POST",
            "auth/token/renew-self",
            body={"increment": claims.exp - int(time.time())},
            token=anchor,
        )
        creds = bao.read(creds_path, token=anchor)["data"]
        yield {"username": str(creds["username"]), "password": str(creds["password"])}
    finally:
        bao.request("POST", "auth/token/revoke-self", token=anchor, retry_for=10)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, h: dict[str, str]) -> Any:
    conn.request("POST", path, body, h)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {resp.status}")
    return json.loads(data)


def _raft_index(s: StackSettings, ca: ssl.SSLContext) -> int:
    """The leader's committed raft index (``sys/leader``: unauthenticated, no write)."""
    for node in NODE_IDS:
        host, port = s.api_addr(node).removeprefix("https://").split(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=ca)
        try:
            conn.request("GET", "/v1/sys/leader")
            doc = json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            continue
        finally:
            conn.close()
        if doc.get("is_self"):
            return int(doc["raft_committed_index"])
    raise RuntimeError("no OpenBao node says it is the leader")


class _Writes:
    """Raft writes made inside a ``with`` block (the leader's committed index around it)."""

    def __init__(self, s: StackSettings, ca: ssl.SSLContext) -> None:
        self._s, self._ca = s, ca
        self.n, self.wall = 0, 0.0

    def __enter__(self) -> _Writes:
        self._i0, self._t0 = _raft_index(self._s, self._ca), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.n = _raft_index(self._s, self._ca) - self._i0


def _raft(
    s: StackSettings,
    ca: ssl.SSLContext,
    url: str,
    jwt: Callable[..., str],
    claims_for: Callable[..., SessionClaims],
    login_body: Callable[..., bytes],
    login_path: str,
    sh: Shipped,
    mount: str,
    creds_path: str,
) -> list[str]:
    """Raft writes per tool call, on the leader's committed index, one client at a time."""
    gw_host, gw_port = url.removeprefix("http://").split(":")
    pg = json.dumps({"sql": "SELECT 1", "database": DATABASE}).encode()
    maria = json.dumps({"sql": "SELECT 1", "database": "maria_main"}).encode()
    tool = "/v1/tools/sql.query"

    class _Session:
        def __init__(self, agent: str) -> None:
            self.token = jwt(agent)
            self.h = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            self.conn = http.client.HTTPConnection(gw_host, int(gw_port), timeout=30)

        def call(self, body: bytes = pg) -> None:
            _post(self.conn, tool, body, self.h)

        def end(self) -> None:
            self.conn.request("DELETE", f"/v1/sessions/{session_id(self.token)}", headers=self.h)
            self.conn.getresponse().read()
            self.conn.close()

    rows: dict[str, list[int]] = {}
    warm_wall: list[float] = []

    def keep(name: str, w: _Writes) -> None:
        rows.setdefault(name, []).append(w.n)

    for rep in range(REPS):
        tag = f"{rep}-{time.monotonic_ns() % 10**7}"
        a = _Session(f"raft{tag}")
        with _Writes(s, ca) as w:
            a.call()
        keep("first", w)
        a.call()
        with _Writes(s, ca) as w:
            for _ in range(RAFT_CALLS):
                a.call()
        keep("warm", w)
        warm_wall.append(w.wall)
        with _Writes(s, ca) as w:
            time.sleep(warm_wall[-1])  # an idle window as long as the warm loop
        keep("idle", w)
        with _Writes(s, ca) as w:
            a.call(maria)
        keep("second credential", w)
        # A second live session of the same agent (the same entity alias), alternating.
        b = _Session(f"raft{tag}")
        b.call()
        a.call()
        with _Writes(s, ca) as w:
            for _ in range(RAFT_CALLS // 2):
                a.call()
                b.call()
        keep("same agent", w)
        b.end()
        with _Writes(s, ca) as w:
            a.end()
        keep("end", w)
        # The raw floor: the same exchange login + query, warm.
        claims = claims_for(f"rraft{tag}")
        hj = {"Content-Type": "application/json"}
        with (
            stack.client_for(s, retry_for=5) as bao,
            _session_credential(bao, claims, login_body, mount, creds_path) as creds,
            psycopg.connect(
                host="127.0.0.1",
                dbname=sh.pg_database,
                user=creds["username"],
                password=creds["password"],
                autocommit=True,
            ) as db,
        ):
            bconn = _bao_conn(s, ca, login_path, login_body(claims), hj)
            try:
                with _Writes(s, ca) as w:
                    for _ in range(RAFT_CALLS):
                        _post(bconn, login_path, login_body(claims), hj)
                        db.execute("SELECT 1").fetchall()
                keep("raw", w)
            finally:
                bconn.close()

    def m(name: str) -> float:
        return statistics.median(rows[name])

    return [
        "OpenBao's raft writes (the leader's `raft_committed_index` from `sys/leader`, read",
        f"before and after each loop; one client; medians of {REPS} repetitions):",
        "",
        "| what | raft writes | per tool call |",
        "|---|---|---|",
        f"| warm session, {RAFT_CALLS} `sql.query` calls | {m('warm'):.0f} "
        f"| {m('warm') / RAFT_CALLS:.3f} (target 0) |",
        f"| idle, a window as long as that loop ({statistics.median(warm_wall):.1f} s) "
        f"| {m('idle'):.0f} | — |",
        f"| raw floor, {RAFT_CALLS} exchange logins + query | {m('raw'):.0f} "
        f"| {m('raw') / RAFT_CALLS:.3f} |",
        f"| a new agent's first call (`pg_main`: entity, anchor token, DB user) "
        f"| {m('first'):.0f} | — |",
        f"| the same session's first `maria_main` call (a second anchor and user) "
        f"| {m('second credential'):.0f} | — |",
        f"| two live sessions of one agent, {RAFT_CALLS} calls alternating "
        f"| {m('same agent'):.0f} | {m('same agent') / RAFT_CALLS:.3f} |",
        f"| `DELETE /v1/sessions/{{sid}}` (2 leases, 2 anchors; gateway login + logout) "
        f"| {m('end'):.0f} | — |",
        "",
        "Two live sessions of one agent: the per-call role maps no per-session claim into",
        "the entity alias's metadata (only the anchor role maps `sid`, ADR 0010), so their",
        "alternating logins rewrite nothing; mapping `sid` there cost one raft write per call.",
    ]


def _spacing(
    s: StackSettings,
    ca: ssl.SSLContext,
    claims_for: Callable[..., SessionClaims],
    login_body: Callable[..., bytes],
    login_path: str,
) -> list[str]:
    """OpenBao's CPU per batch login, back to back vs with a pause between a client's logins.

    The gateway puts its own work between two logins of a session; this measures
    what spacing alone (a sleep, no CPU) does to OpenBao's CPU per login. Each
    client signs its assertions before its loop (one per login, as the gateway
    would), so the window holds logins only.
    """
    groups = {"OpenBao nodes": _groups(s)["OpenBao nodes"]}
    logins = 300
    idle0 = _snapshot(groups)["OpenBao nodes"]
    time.sleep(3)
    idle = (_snapshot(groups)["OpenBao nodes"] - idle0) / 3
    results: dict[tuple[int, float], list[tuple[float, float]]] = {}

    h = {"Content-Type": "application/json"}

    def connect() -> tuple[http.client.HTTPSConnection, list[bytes]]:
        """A session's login bodies and a kept-alive connection it already logged in on."""
        claims = claims_for(f"sp-{time.monotonic_ns() % 10**8}")
        bodies = [login_body(claims) for _ in range(logins)]
        return _bao_conn(s, ca, login_path, bodies[0], h), bodies

    def client(conn: http.client.HTTPSConnection, bodies: list[bytes], gap: float) -> None:
        for body in bodies:
            conn.request("POST", login_path, body, h)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"login: HTTP {resp.status}")
            if gap:
                time.sleep(gap)

    for _ in range(REPS):
        for clients in (1, 4):
            for gap in (0.0, 0.002):
                conns = [connect() for _ in range(clients)]  # set-up outside the window
                threads = [threading.Thread(target=client, args=(*c, gap)) for c in conns]
                c0, t0 = _snapshot(groups)["OpenBao nodes"], time.perf_counter()
                try:
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    wall = time.perf_counter() - t0
                    cpu = _snapshot(groups)["OpenBao nodes"] - c0
                finally:
                    for conn, _ in conns:
                        conn.close()
                n = clients * logins
                results.setdefault((clients, gap), []).append((n / wall, cpu / n * 1000))
    rows = []
    for (clients, gap), rs in sorted(results.items()):
        rate = statistics.median(r[0] for r in rs)
        rows.append(
            f"| {clients} | {gap * 1000:.0f} ms | {rate:.0f} "
            f"| {statistics.median(r[1] for r in rs):.2f} | {idle / rate * 1000:.2f} |"
        )
    return [
        "OpenBao's CPU per batch login is not a constant. The same exchange logins, back to",
        "back or with a 2 ms sleep between a client's logins (the time a gateway spends",
        f"between two logins of a session), {logins} per client, medians of {REPS}",
        f"repetitions; OpenBao's background CPU with no requests was {idle:.3f} cores:",
        "",
        "| clients | pause | logins/s | OpenBao CPU per login ms | of which idle background |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _bao_conn(
    s: StackSettings, ca: ssl.SSLContext, path: str, body: bytes, h: dict[str, str]
) -> http.client.HTTPSConnection:
    """A kept-alive TLS connection to the first node that answers the login."""
    for node in NODE_IDS:
        host, port = s.api_addr(node).removeprefix("https://").split(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=ca)
        try:
            conn.request("POST", path, body, h)
            resp = conn.getresponse()
            resp.read()
        except OSError:
            conn.close()
            continue
        if resp.status == 200:
            return conn
        conn.close()
    raise RuntimeError("no OpenBao node answered the exchange login")


def session_id(token: str) -> str:
    seg = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))["sid"])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        print(run())
