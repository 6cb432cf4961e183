"""Fair shares and slow clients (issue 13, item 6 and "Fairness").

The pools' logic in isolation (``fairness.Pool``, ``FairShare``; a fake clock
for the Retry-After estimate), then a real uvicorn serving the app over a
gateway whose OpenBao is in memory, with a tool that blocks until the test
opens a gate: one tenant floods, another tenant's call is answered while every
flooding call is still blocked (ordering and counts, never timings), and
bodies that stall or trickle are cut off with 408 and a closed connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.app import build_app
from clawql_secrets.gateway.core import Gateway
from clawql_secrets.gateway.edge_settings import EdgeLimits
from clawql_secrets.gateway.fairness import Busy, FairShare, Overloaded, Pool
from clawql_secrets.gateway.registry import MemoryRegistry
from clawql_secrets.gateway.tools import ToolContext
from clawql_secrets.issuer import LocalIssuer
from tests.gateway import live
from tests.gateway.fakes import mock_openbao, unit_config
from tests.gateway.test_app import EchoTool, fake_exchange, serving


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(fn: Callable[[], Any]) -> Any:
    async def go() -> Any:
        return await fn()

    return anyio.run(go)


# -- Pool ----------------------------------------------------------------------------------
def test_pool_counts_per_key_and_forgets_idle_keys() -> None:
    pool = Pool(2)
    assert pool.try_acquire("a") and pool.try_acquire("a")
    assert not pool.try_acquire("a")
    assert pool.try_acquire("b")  # another key has its own share
    assert (pool.held("a"), pool.held("b"), len(pool)) == (2, 1, 2)
    pool.release("a")
    assert pool.try_acquire("a")
    for key in ("a", "a", "b"):
        pool.release(key)
    assert len(pool) == 0  # nothing kept for keys no call holds


def test_pool_refuses_at_once_with_no_wait() -> None:
    pool = Pool(1)
    assert pool.try_acquire("a")
    assert _run(lambda: pool.acquire("a", 0)) is False
    assert (pool.held("a"), pool.waiting("a")) == (1, 0)


def test_pool_wait_times_out_and_leaves_no_waiter() -> None:
    pool = Pool(1)
    assert pool.try_acquire("a")
    assert _run(lambda: pool.acquire("a", 0.01)) is False
    assert (pool.held("a"), pool.waiting("a")) == (1, 0)
    pool.release("a")
    assert len(pool) == 0


def test_pool_hands_slots_to_waiters_in_order_without_barging() -> None:
    pool = Pool(1)
    order: list[str] = []

    async def waiter(name: str) -> None:
        assert await pool.acquire("a", 30)
        order.append(name)

    async def go() -> None:
        assert pool.try_acquire("a")
        async with anyio.create_task_group() as tg:
            for name in ("w1", "w2", "w3"):
                tg.start_soon(waiter, name)
                await anyio.wait_all_tasks_blocked()
            assert pool.waiting("a") == 3
            pool.release("a")  # to w1, directly
            assert not pool.try_acquire("a")  # a newcomer queues behind the waiters
            for _ in range(3):
                await anyio.wait_all_tasks_blocked()
                pool.release("a")
        assert order == ["w1", "w2", "w3"]

    anyio.run(go)
    assert len(pool) == 0


def test_pool_cancelled_waiter_gives_a_handed_slot_on() -> None:
    pool = Pool(1)
    got: list[str] = []

    async def waiter(name: str) -> None:
        if await pool.acquire("a", 30):
            got.append(name)

    async def go() -> None:
        assert pool.try_acquire("a")
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()
            tg.start_soon(_in_scope, first, waiter, "w1")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, "w2")
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # w1 is cancelled, and before it runs …
            pool.release("a")  # … the slot is handed to it: it must pass it on to w2
            await anyio.wait_all_tasks_blocked()
            assert pool.held("a") == 1 and pool.waiting("a") == 0
            pool.release("a")

    anyio.run(go)
    assert got == ["w2"]
    assert len(pool) == 0


async def _in_scope(scope: anyio.CancelScope, fn: Any, *args: Any) -> None:
    with scope:
        await fn(*args)


# -- FairShare -------------------------------------------------------------------------
def _share(clock: Clock | None = None, **kw: Any) -> FairShare:
    limits = EdgeLimits(**{"per_session": 1, "per_tenant": 2, "total": 3, "slot_wait": 0, **kw})
    return FairShare(limits, clock=clock or Clock())


@pytest.mark.parametrize(
    ("case", "held", "call", "error", "code", "status"),
    [
        ("session_over_share", [("s1", "t1")], ("s1", "t1"), Busy, "session_busy", 429),
        (
            "tenant_over_share",
            [("s1", "t1"), ("s2", "t1")],
            ("s3", "t1"),
            Busy,
            "tenant_busy",
            429,
        ),
        (
            "gateway_full",
            [("s1", "t1"), ("s2", "t1"), ("s3", "t2")],
            ("s4", "t3"),
            Overloaded,
            "gateway_busy",
            503,
        ),
    ],
)
def test_over_a_share_is_refused_with_nothing_held(
    case: str,
    held: list[tuple[str, str]],
    call: tuple[str, str],
    error: type[Exception],
    code: str,
    status: int,
) -> None:
    share = _share()

    async def go() -> None:
        for sid, tenant in held:
            await share.acquire(sid, tenant)
        with pytest.raises(error) as err:
            await share.acquire(*call)
        assert (getattr(err.value, "code", None), getattr(err.value, "status", None)) == (
            code,
            status,
        )
        assert getattr(err.value, "retry_after", 0) >= 1

    anyio.run(go)
    sid, tenant = call
    # What the refused call took on the way is given back.
    assert share.sessions.held(sid) == sum(1 for s, _ in held if s == sid)
    assert share.tenants.held(tenant) == sum(1 for _, t in held if t == tenant)
    assert share.gateway.held("") == len(held)


def test_a_waiting_call_gets_the_slot_a_finished_call_frees() -> None:
    share = _share(per_session=1, per_tenant=1, total=1, slot_wait=5)
    got: list[str] = []

    async def second() -> None:
        started = await share.acquire("s1", "t1")
        got.append("second")
        share.release("s1", "t1", started)

    async def go() -> None:
        started = await share.acquire("s1", "t1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert got == [] and share.sessions.waiting("s1") == 1
            share.release("s1", "t1", started)

    anyio.run(go)
    assert got == ["second"]
    assert (len(share.sessions), len(share.tenants), len(share.gateway)) == (0, 0, 0)


def test_retry_after_follows_how_long_calls_hold_their_slots() -> None:
    clock = Clock()
    share = _share(clock, per_session=4, per_tenant=4, total=4)
    assert share.retry_after == 1

    async def hold(seconds: float) -> None:
        started = await share.acquire("s", "t")
        clock.now += seconds
        share.release("s", "t", started)

    async def go() -> None:
        for _ in range(60):
            await hold(5.0)

    anyio.run(go)
    assert share.retry_after == 5
    for _ in range(200):
        anyio.run(hold, 400.0)
    assert share.retry_after == 30  # bounded


@pytest.mark.parametrize(
    "limits",
    [
        {"per_session": 5, "per_tenant": 4},
        {"per_tenant": 100, "total": 64},
        {"per_session": 0},
        {"slot_wait": -1},
        {"body_timeout": 0},
        {"unknown": 1},
    ],
)
def test_edge_limits_refuse_nonsense(limits: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EdgeLimits(**limits)


def test_edge_limit_defaults() -> None:
    d = EdgeLimits()
    assert (d.per_session, d.per_tenant, d.total, d.slot_wait) == (4, 16, 64, 0.25)
    assert (d.body_timeout, d.max_json_depth) == (10.0, 64)


# -- a real server, a tool that blocks until the test opens the gate -----------------------
class SlowArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Gate:
    opened: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: list[tuple[str, str]] = field(default_factory=list)


class SlowTool:
    """Holds its worker thread until the gate opens (at most 60 s: a failing test ends)."""

    name = "slow"
    args_model = SlowArgs

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def run(self, ctx: ToolContext, args: SlowArgs) -> dict[str, Any]:
        with self.gate.lock:
            self.gate.inside.append((ctx.claims.tenant, ctx.claims.sid))
        self.gate.opened.wait(60)
        return {"slow": True}


@dataclass
class Served:
    url: str
    gw: Gateway
    issuer: LocalIssuer
    gate: Gate
    http: httpx.Client

    def jwt(self, tenant: str, agent: str = "bot") -> str:
        return session_issuer.issue(
            self.issuer, tenant=tenant, agent=agent, role="analyst", ttl=600
        )

    def call(self, jwt: str, tool: str, args: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(
            f"{self.url}/v1/tools/{tool}",
            json=args or {},
            headers={"Authorization": f"Bearer {jwt}"},
        )

    def mcp_call(self, jwt: str, tool: str, args: dict[str, Any]) -> httpx.Response:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": args},
        }
        return self.http.post(
            f"{self.url}/mcp",
            json=body,
            headers={
                "Authorization": f"Bearer {jwt}",
                "Accept": "application/json, text/event-stream",
                "Mcp-Protocol-Version": "2025-11-25",
            },
        )


@contextlib.contextmanager
def served(tmp_path: Path, **edge: Any) -> Iterator[Served]:
    issuer = session_issuer.load_issuer(tmp_path)
    port = live.free_port()
    cfg = unit_config(
        tmp_path,
        sessions={
            "jwks_file": str(tmp_path / "sessions-issuer" / "jwks.json"),
            "audience": session_issuer.SESSION_AUDIENCE,
        },
        roles={"analyst": {"tools": ["slow", "echo"]}},
        edge=edge,
    )
    gate = Gate()
    bao = mock_openbao(fake_exchange("s.fairness", []))
    tools: dict[str, Any] = {"slow": SlowTool(gate), "echo": EchoTool()}
    gw = Gateway(cfg, bao=bao, registry=MemoryRegistry(), tools=tools)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    try:
        with (
            serving(build_app(gw, sweeper=False), port) as url,
            httpx.Client(timeout=60, limits=limits, trust_env=False) as http,
        ):
            try:
                yield Served(url, gw, issuer, gate, http)
            finally:
                gate.opened.set()
    finally:
        bao.close()


def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for ``predicate`` (a guard against a hung test, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def _flood(
    pool: ThreadPoolExecutor, s: Served, jwts: list[str], per_jwt: int
) -> list[Future[httpx.Response]]:
    return [pool.submit(s.call, jwt, "slow") for jwt in jwts for _ in range(per_jwt)]


def test_a_flooding_tenant_does_not_delay_another(tmp_path: Path) -> None:
    """Tenant acme floods with 18 calls over 6 sessions; globex's call is answered
    while all of acme's admitted calls still hold their threads."""
    with (
        served(tmp_path, per_session=2, per_tenant=4, total=16, slot_wait=0.05) as s,
        ThreadPoolExecutor(max_workers=40) as pool,
    ):
        acme = [s.jwt("acme", f"bot{i}") for i in range(6)]
        flood = _flood(pool, s, acme, 3)
        _until(lambda: len(s.gate.inside) == 4, "acme fills its tenant share")
        _until(lambda: sum(f.done() for f in flood) == 14, "the rest of the flood is refused")
        refused = [f.result() for f in flood if f.done()]
        # globex, REST and MCP, while acme's four calls are still inside the tool:
        other = s.call(s.jwt("globex"), "echo", {"text": "hi"})
        mcp = s.mcp_call(s.jwt("globex", "mcp"), "echo", {"text": "hi"})
        still_blocked = sum(not f.done() for f in flood)
        s.gate.opened.set()
        admitted = [f.result() for f in flood if f.result() not in refused]

    assert other.status_code == 200 and other.json()["result"]["tenant"] == "globex"
    assert mcp.status_code == 200 and mcp.json()["result"]["structuredContent"]["echo"] == "hi"
    assert still_blocked == 4  # globex was answered before any acme call finished
    assert [r.status_code for r in admitted] == [200] * 4
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} <= {"session_busy", "tenant_busy"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # No session ever had more than its share inside the tool.
    per_sid: dict[str, int] = {}
    for _, sid in s.gate.inside:
        per_sid[sid] = per_sid.get(sid, 0) + 1
    assert max(per_sid.values()) <= 2 and {t for t, _ in s.gate.inside} == {"acme"}


def test_45_calls_of_one_session_leave_the_default_thread_pool_alone(tmp_path: Path) -> None:
    """The issue's numbers, with the shares raised so that all 45 are admitted: they run
    on the tool-call limiter, not on anyio's default pool (40 threads), so another
    tenant's call and the session endpoints are still served while all 45 block."""
    with (
        served(tmp_path, per_session=45, per_tenant=45, total=50, slot_wait=0.05) as s,
        ThreadPoolExecutor(max_workers=60) as pool,
    ):
        jwt = s.jwt("acme")
        flood = _flood(pool, s, [jwt], 45)
        _until(lambda: len(s.gate.inside) == 45, "all 45 calls inside the tool")
        globex = s.jwt("globex")
        other = s.call(globex, "echo", {"text": "hi"})
        sid = json.loads(_b64(globex.split(".")[1]))["sid"]
        info = s.http.get(
            f"{s.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {globex}"}
        )
        still_blocked = sum(not f.done() for f in flood)
        s.gate.opened.set()
        statuses = [f.result().status_code for f in flood]
    assert other.status_code == 200
    assert info.status_code == 200 and info.json()["state"] == "active"
    assert still_blocked == 45
    assert statuses == [200] * 45


def test_default_shares_refuse_the_45_call_burst(tmp_path: Path) -> None:
    with (
        served(tmp_path, slot_wait=0.05) as s,
        ThreadPoolExecutor(max_workers=60) as pool,
    ):
        flood = _flood(pool, s, [s.jwt("acme")], 45)
        _until(lambda: len(s.gate.inside) == 4, "the session's four slots in use")
        _until(lambda: sum(f.done() for f in flood) == 41, "41 refused")
        codes = {f.result().json()["error"]["code"] for f in flood if f.done()}
        other = s.call(s.jwt("globex"), "echo", {"text": "hi"})
        s.gate.opened.set()
        statuses = sorted(f.result().status_code for f in flood)
    assert codes == {"session_busy"}
    assert other.status_code == 200
    assert statuses == [200] * 4 + [429] * 41


def _b64(seg: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


# -- slow and stalled bodies -------------------------------------------------------------------
def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes, bool]:
    """Status, body and whether the server closed the connection after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    return status, rest[:length], closed


def _head(path: str, jwt: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {jwt}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize("path", ["/v1/tools/echo", "/mcp"])
@pytest.mark.parametrize("how", ["stalled", "trickled"])
def test_a_slow_body_is_cut_off_with_408(tmp_path: Path, path: str, how: str) -> None:
    """Headers, then a body that stops (or arrives a byte at a time, far slower than the
    read timeout allows): 408 ``body_timeout`` and the connection closed."""
    with served(tmp_path, body_timeout=0.5) as s:
        sock = _raw(s.url)
        stop = threading.Event()
        try:
            sock.sendall(_head(path, s.jwt("acme"), 10_000) + b'{"text": "')
            if how == "trickled":

                def trickle() -> None:
                    with contextlib.suppress(OSError):
                        while not stop.wait(0.05):
                            sock.sendall(b"x")

                threading.Thread(target=trickle, daemon=True).start()
            status, body, closed = _read_response(sock)
        finally:
            stop.set()
            sock.close()
    assert (status, json.loads(body)["error"]["code"]) == (408, "body_timeout")
    assert closed


def test_a_stalled_body_holds_no_slot(tmp_path: Path) -> None:
    """With one slot per session, a request whose body stalls does not keep the
    session's next call out: that call is answered first."""
    with served(tmp_path, per_session=1, per_tenant=1, total=1, body_timeout=2) as s:
        jwt = s.jwt("acme")
        sock = _raw(s.url)
        try:
            sock.sendall(_head("/v1/tools/echo", jwt, 100) + b"{")
            other = s.call(jwt, "echo", {"text": "meanwhile"})
            status, _, _ = _read_response(sock)
        finally:
            sock.close()
    assert other.status_code == 200
    assert status == 408


# -- failed authentications per address (red team: a forged-token flood) ---------------
def test_an_address_past_its_failure_budget_is_refused_before_verifying() -> None:
    from clawql_secrets.gateway.fairness import AuthFailures, Busy

    now = [100.0]
    budget = AuthFailures(3, 10.0, clock=lambda: now[0])
    for _ in range(3):
        budget.check("10.0.0.9")
        budget.failed("10.0.0.9")
    with pytest.raises(Busy) as err:
        budget.check("10.0.0.9")
    assert err.value.code == "auth_failures" and err.value.status == 429
    assert 1 <= err.value.retry_after <= 10
    budget.check("10.0.0.10")  # another address is not affected
    now[0] += 10.5  # the failures age out
    budget.check("10.0.0.9")


def test_no_budget_means_no_refusal() -> None:
    from clawql_secrets.gateway.fairness import AuthFailures

    off = AuthFailures(0, 10.0)
    for _ in range(100):
        off.failed("x")
        off.check("x")
