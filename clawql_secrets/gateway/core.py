"""The gateway's core: verify, exchange, run a tool, and end sessions.

Synchronous on purpose: one tool call is a short chain of blocking calls
(OpenBao login, maybe a creds read, a SQL query) run in one worker thread by
the ASGI layer, so the token of a call lives in one stack frame and is gone
when the frame returns.

Per tool call (see docs/adr/0010-exchange-assertion.md):

1. Verify the session JWT locally (``jwt_check``), check the role may call the
   tool, and refuse an ended session (registry).
2. Exchange: sign a seconds-lived assertion naming the agent (subject) and this
   gateway (actor) with the exchange key, and log in with it to the agent role's
   per-call JWT role: a batch token, so OpenBao re-checks the identity on every
   call at no raft write. OpenBao trusts no session JWT; the token's metadata
   must name the JWT's tenant and role and this gateway as actor.
3. Run the tool; a first use creates the session's resources on this replica.
   A dynamic credential is read with a session anchor (``anchor``): a service
   token of the session's own, its accessor recorded in the registry first, its
   TTL and the credential's lease set to the session's remaining life, so OpenBao
   itself revokes them at the session's ``exp`` even if every gateway is dead.
4. Drop the tokens: nothing keeps a reference once the call returns.

Anomaly rules (``anomaly``) see every call with validated arguments and every
denied call; a hit ends the session with reason ``anomaly`` and leaves an
audit trail: a create-only KV write by the gateway's identity to
``secret/data/clawql-anomalies/<sid>/<rule>`` (so OpenBao's audit log carries
path, rule and gateway entity in clear), the lease revocations, and a log line.

Ending a session (DELETE, admin revoke, sweeper, anomaly): flip the registry state,
revoke every lease, then every anchor by accessor, with the gateway's own identity
(a fresh login per batch, its token revoked right after), close this replica's
resources. What could not be revoked leaves the session ``revocation_pending``
(never "ended") and is retried by the sweeper with backoff. Another replica
notices at its next sweep or call and closes its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ClawQLError, ConfigError, NotLeaderError, OpenBaoError
from clawql_secrets.gateway import identity, jwt_check
from clawql_secrets.gateway.anomaly import Detector, Hit
from clawql_secrets.gateway.bao_login import LoginClient
from clawql_secrets.gateway.config import GatewayConfig
from clawql_secrets.gateway.errors import (
    AccessDenied,
    BackendUnavailable,
    RequestRejected,
    TokenRejected,
)
from clawql_secrets.gateway.exchange import AssertionSpec, ExchangeSigner
from clawql_secrets.gateway.jwt_check import JWTLimits, JWTPolicy, KeySet, SessionClaims
from clawql_secrets.gateway.metrics import Metrics
from clawql_secrets.gateway.registry import ACTIVE, Registry
from clawql_secrets.gateway.tools import Resource, Tool

log = logging.getLogger("clawql_secrets.gateway")
R = TypeVar("R", bound=Resource)
# Registry entries that are anchor token accessors, not lease ids (which start
# with their mount's path and so never with this).
ACCESSOR_PREFIX = "accessor:"
REVOCATION_PENDING = "revocation_pending"
_RETRY_FIRST, _RETRY_MAX = 1.0, 300.0
_PENDING_BATCH = 100  # pending sessions looked at per sweep


class _Token:
    """An OpenBao token that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def drop(self) -> None:
        self._value = ""

    def __repr__(self) -> str:
        return "_Token(<redacted>)"


@dataclass(frozen=True)
class LeaseInfo:
    lease_id: str
    lease_duration: int
    data: Mapping[str, Any]

    def __repr__(self) -> str:
        return f"LeaseInfo(lease_id={self.lease_id!r}, lease_duration={self.lease_duration})"


@dataclass
class _LocalSession:
    """What this replica holds for one session: resources with credentials inside."""

    claims: SessionClaims
    lock: threading.Lock = field(default_factory=threading.Lock)
    resources: dict[str, Resource] = field(default_factory=dict)

    def close(self) -> None:
        with self.lock:
            items = list(self.resources.values())
            self.resources.clear()
        for res in items:
            with contextlib.suppress(Exception):
                res.close()


class JWKSCache:
    """The session issuer's JWKS, reloaded (at most every ``min_interval``) on unknown kid."""

    def __init__(self, path: Path, *, min_interval: float = 10.0) -> None:
        self._path = path
        self._min = min_interval
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self.keys = self._load()

    def _load(self) -> KeySet:
        import json

        try:
            doc = json.loads(self._path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the JWKS file {self._path} cannot be read ({type(exc).__name__})",
                fix="point the gateway at the session issuer's jwks.json",
            ) from exc
        self._loaded_at = time.monotonic()
        return KeySet(doc)

    def for_kid(self, kid: object) -> KeySet:
        if kid in self.keys:
            return self.keys
        with self._lock:
            if time.monotonic() - self._loaded_at >= self._min:
                with contextlib.suppress(ClawQLError):
                    self.keys = self._load()
        return self.keys


@dataclass(frozen=True)
class _Verified:
    claims: SessionClaims
    keys: KeySet
    at: float


class _VerifiedCache:
    """Claims of session JWTs whose signature and claims already verified, until ``exp``.

    Keyed by the SHA-256 of the token (the token itself is not kept). A hit
    needs the same key set object that verified it (a JWKS reload drops every
    entry), a clock not earlier than the first verification and before ``exp``:
    in that window a full ``jwt_check.verify_session`` gives the same answer, so
    a hit only skips repeating the signature check and the claim parsing.
    Failures are never cached. The registry check and the OpenBao login still
    happen on every call.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._d: dict[bytes, _Verified] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes, keys: KeySet, now: float) -> SessionClaims | None:
        v = self._d.get(digest)
        if v is None or v.keys is not keys or not v.at <= now < v.claims.exp:
            return None
        return v.claims

    def put(self, digest: bytes, v: _Verified) -> None:
        with self._lock:
            if len(self._d) >= self._max:
                now = v.at
                self._d = {k: e for k, e in self._d.items() if e.claims.exp > now}
                if len(self._d) >= self._max:
                    self._d.clear()
            self._d[digest] = v


class _Context:
    """The ``ToolContext`` of one call: reads with the agent's token, never exposes it."""

    def __init__(self, gw: Gateway, claims: SessionClaims, token: _Token, local: _LocalSession):
        self.claims = claims
        self._gw = gw
        self._token = token
        self._local = local

    def read_secret(self, path: str) -> LeaseInfo:
        """GET ``path`` with the agent's token (creds, KV values).

        A dynamic credential (``<mount>/creds/<role>``: a lease meant to live as long
        as the session) is read with a session anchor token instead of the call's
        batch token, so that the lease is not capped at the batch token's seconds and
        dies with the anchor at the session's ``exp`` (ADR 0010).
        """
        if "/creds/" in path:
            anchor = self._gw.anchor(self.claims)
            try:
                return self._call("GET", path, None, anchor)
            finally:
                anchor.drop()
        return self._call("GET", path, None, self._token)

    def write_secret(self, path: str, body: Mapping[str, Any]) -> LeaseInfo:
        """POST ``path`` with the agent's token (e.g. ``pki_int/issue/...``)."""
        return self._call("POST", path, dict(body), self._token)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, token: _Token
    ) -> LeaseInfo:
        verb = "read" if method == "GET" else "write"
        try:
            resp = self._gw.bao.request(method, path, body=body, token=token.reveal())
        except NotLeaderError as exc:
            raise BackendUnavailable("openbao_unavailable", "OpenBao is unavailable") from exc
        except OpenBaoError as exc:
            if exc.status == 403:
                raise AccessDenied(
                    "openbao_denied", f"OpenBao does not allow this session to {verb} {path}"
                ) from exc
            if exc.status == 404:
                raise RequestRejected(
                    "secret_not_found", f"nothing at {path} for this session", status=404
                ) from exc
            if exc.status == 400:
                raise RequestRejected(
                    "openbao_refused", f"OpenBao refused a {verb} of {path}"
                ) from exc
            raise BackendUnavailable(
                "openbao_error", f"OpenBao failed to answer a {verb} of {path}", status=502
            ) from exc
        lease = LeaseInfo(
            str(resp.get("lease_id") or ""),
            int(resp.get("lease_duration") or 0),
            dict(resp.get("data") or {}),
        )
        resp.clear()
        if lease.lease_id and not self._gw.registry.add_lease(self.claims.sid, lease.lease_id):
            # The session ended while the credential was being created: kill it now.
            self._gw.revoke_leases(self.claims.sid, [lease.lease_id])
            raise TokenRejected("session_ended", "this session has ended")
        if lease.lease_id:
            self._gw.metrics.leases.inc()
            ttl = self._gw.bound_lease(self.claims, lease, token)
            lease = LeaseInfo(lease.lease_id, ttl, lease.data)
        return lease

    def resource(self, key: str, create: Callable[[], R]) -> R:
        with self._local.lock:
            res = self._local.resources.get(key)
            if res is None:
                res = create()
                self._local.resources[key] = res
        return res  # type: ignore[return-value]


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        bao: OpenBaoClient,
        registry: Registry,
        tools: Mapping[str, Tool],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        login_client: LoginClient | None = None,
    ) -> None:
        self.config = config
        self.bao = bao
        # The per-call session login over keep-alive connections (``bao_login``);
        # without one, ``bao`` does it.
        self.login_client = login_client
        self.registry = registry
        self.tools = dict(tools)
        self.metrics = metrics or Metrics()
        self.clock = clock
        s = config.sessions
        self.jwks = JWKSCache(s.jwks_file)
        self.session_policy = JWTPolicy(
            s.issuer,
            s.audience,
            limits=JWTLimits(s.max_token_bytes, s.clock_skew, s.max_lifetime),
        )
        self._verified = _VerifiedCache()
        self.admin_keys: KeySet | None = None
        if config.admin is not None:
            self.admin_keys = JWKSCache(config.admin.jwks_file).keys
        self._local: dict[str, _LocalSession] = {}
        self._local_lock = threading.Lock()
        # Ended sessions whose revocation failed: when to retry, and the last delay.
        self._retry_at: dict[str, tuple[float, float]] = {}
        self._ending: set[str] = set()
        # Role -> the installed tools it may call, looked up on every call.
        self._role_tools = {
            role: frozenset(t for t in policy.tools if t in self.tools)
            for role, policy in config.roles.items()
        }
        self.anomaly = Detector(config.anomaly)
        x = config.exchange
        self.signer = ExchangeSigner.from_file(
            x.key_file, AssertionSpec(x.issuer, x.audience, x.actor, x.ttl)
        )
        self.metrics.active.set_function(self._count_active)

    def _count_active(self) -> float:
        try:
            return float(self.registry.count_active())
        except ClawQLError:
            return float("nan")

    def tools_for(self, agent_role: str) -> list[str]:
        """The installed tools a session of ``agent_role`` may call (the desired state's
        ``roles[].tools``); what is not listed is refused before anything else happens."""
        return sorted(self._role_tools.get(agent_role, ()))

    # -- authentication ----------------------------------------------------------
    def verify_session(self, bearer: str) -> SessionClaims:
        """Step 1: local verification (the registry state is checked by the caller).

        A token that verified before (same key set, not yet expired) is served
        from ``_VerifiedCache``; anything else takes the full check.
        """
        now = self.clock()
        digest, hit = self._cached(bearer, now)
        if hit is not None:
            return hit
        keys = self.jwks.for_kid(_peek_kid(bearer))
        claims = jwt_check.verify_session(bearer, keys, self.session_policy, now=now)
        if digest:
            self._verified.put(digest, _Verified(claims, keys, now))
        return claims

    def cached_session(self, bearer: str) -> SessionClaims | None:
        """The claims of a bearer that already verified (no signature check), or None."""
        return self._cached(bearer, self.clock())[1]

    def _cached(self, bearer: str, now: float) -> tuple[bytes, SessionClaims | None]:
        """The bearer's cache key (empty past the size limit) and its cached claims."""
        if len(bearer) > self.session_policy.limits.max_bytes:
            return b"", None
        digest = hashlib.sha256(bearer.encode("utf-8", "surrogatepass")).digest()
        return digest, self._verified.get(digest, self.jwks.keys, now)

    def verify_admin(self, bearer: str) -> str:
        if self.config.admin is None or self.admin_keys is None:
            raise AccessDenied("admin_disabled", "no admin identity is configured")
        a = self.config.admin
        claims = jwt_check.verify(
            bearer,
            self.admin_keys,
            JWTPolicy(a.issuer, a.audience, limits=self.session_policy.limits),
            now=self.clock(),
        )
        if claims.get("sub") not in a.subjects:
            raise AccessDenied("not_admin", "this identity is not a gateway admin")
        return str(claims["sub"])

    def is_admin_token(self, bearer: str) -> bool:
        """Routing only (no trust): does the token claim to come from the admin issuer?"""
        if self.config.admin is None:
            return False
        return _peek_claim(bearer, "iss") == self.config.admin.issuer

    # -- exchange ------------------------------------------------------------------
    def _login(self, claims: SessionClaims, *, anchor: bool = False) -> tuple[_Token, str]:
        """Step 2: an exchange assertion signed by the gateway for an agent token.

        ``anchor=False``: the role's per-call batch token (seconds-lived, no raft
        write). ``anchor=True``: the session's anchor role, a service token whose
        accessor is returned so the session's end can revoke it. Either way the
        token's metadata must name the JWT's tenant and role and this gateway as
        actor, and an anchor's also this session (``sid`` is mapped there only).
        """
        s, x = self.config.sessions, self.config.exchange
        role = s.role_template.format(agent_role=claims.agent_role, tenant=claims.tenant)
        if anchor:
            role += x.session_role_suffix
        use = "session" if anchor else "call"
        body = {"role": role, "jwt": self.signer.assertion(claims, self.clock(), use=use)}
        try:
            if self.login_client is not None and not anchor:
                resp = self.login_client.login(s.mount, body)
            else:
                resp = self.bao.request("POST", f"auth/{s.mount}/login", body=body, token="")
        except NotLeaderError as exc:
            self.metrics.exchanges.labels("unavailable").inc()
            raise BackendUnavailable("openbao_unavailable", "OpenBao is unavailable") from exc
        except OpenBaoError as exc:
            self.metrics.exchanges.labels("refused").inc()
            if exc.status in (400, 403):
                raise AccessDenied(
                    "exchange_refused", "OpenBao refused this session's exchange"
                ) from exc
            raise BackendUnavailable(
                "openbao_error", "OpenBao failed the exchange", status=502
            ) from exc
        finally:
            body.clear()
        auth = resp.pop("auth", None) or {}
        token = _Token(str(auth.pop("client_token", "") or ""))
        accessor = str(auth.pop("accessor", "") or "")
        meta = auth.get("metadata") or {}
        auth.clear()
        if not token.reveal() or (anchor and not accessor):
            token.drop()
            raise BackendUnavailable(
                "openbao_error", "OpenBao's exchange returned no token", status=502
            )
        if (
            meta.get("tenant") != claims.tenant
            or meta.get("agent_role") != claims.agent_role
            or meta.get("actor") != x.actor
            or (anchor and meta.get("sid") != claims.sid)  # mapped on the anchor role only
        ):
            token.drop()
            self.metrics.exchanges.labels("mismatch").inc()
            raise AccessDenied(
                "exchange_mismatch", "OpenBao's identity for this session does not match the JWT"
            )
        self.metrics.exchanges.labels("ok").inc()
        return token, accessor

    def anchor(self, claims: SessionClaims) -> _Token:
        """A service token of the session living exactly until its ``exp``.

        Its accessor is recorded with the session before anything else, so that
        ending the session revokes it (and with it every lease it created); then it
        is renewed with ``increment = exp - now``, which sets its TTL to the
        session's remaining life (ADR 0010). If the gateway dies in between, the
        token dies at the anchor role's short initial TTL. Used for one credential
        read and dropped: the gateway keeps its accessor, never the token.
        """
        token, accessor = self._login(claims, anchor=True)
        entry = ACCESSOR_PREFIX + accessor
        if not self.registry.add_lease(claims.sid, entry):
            token.drop()
            self.revoke_leases(claims.sid, [entry])
            raise TokenRejected("session_ended", "this session has ended")
        remaining = int(claims.exp - self.clock())
        ttl = -1
        if remaining >= 1:
            try:
                resp = self.bao.request(
                    "POST",
                    "auth/token/renew-self",
                    body={"increment": remaining},
                    token=token.reveal(),
                )
                ttl = int((resp.get("auth") or {}).get("lease_duration") or -1)
            except OpenBaoError as exc:
                log.warning("anchor bound failed sid=%s status=%s", claims.sid, exc.status)
        if not 0 < ttl <= max(remaining, 1):
            token.drop()
            self._unbounded(claims.sid, entry, remaining)
        self.metrics.anchors.inc()
        return token

    def _unbounded(self, sid: str, entry: str, remaining: int) -> NoReturn:
        """Fail closed: what could not be bounded to the session's life is revoked now."""
        self.revoke_leases(sid, [entry])
        if remaining < 1:
            raise TokenRejected("session_expired", "this session has expired")
        raise BackendUnavailable(
            "lease_unbounded", "a credential could not be bounded to the session's life"
        )

    # -- tool calls --------------------------------------------------------------------
    def call_tool(
        self, bearer: str, tool_name: str, args: Any, *, verified: SessionClaims | None = None
    ) -> dict[str, Any]:
        """One tool call. ``verified``: the bearer's claims when the HTTP edge has
        already verified it (``verify_session``), so it is not looked up twice."""
        tool = self.tools.get(tool_name)
        label = tool_name if tool else "unknown"
        start = time.perf_counter()
        outcome = "error"
        claims: SessionClaims | None = None
        try:
            claims = verified if verified is not None else self.verify_session(bearer)
            if claims.exp <= self.clock():
                # The clock-skew grace of jwt_check does not extend a session: its
                # leases end at exp (bound_lease) and the sweeper ends it at exp.
                raise TokenRejected("session_expired", "this session has expired")
            if tool is None:
                raise RequestRejected(
                    "unknown_tool", f"no tool named {tool_name[:64]!r}", status=404
                )
            if tool_name not in self._role_tools.get(claims.agent_role, ()):
                raise AccessDenied(
                    "tool_not_allowed", f"role {claims.agent_role} may not call {tool_name}"
                )
            try:
                parsed = tool.args_model.model_validate(args)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(body)"
                raise RequestRejected(
                    "invalid_arguments", f"invalid arguments at {where}: {first['msg']}", status=422
                ) from None
            opened = self.registry.open(claims, self.anomaly.calls_window)
            if opened.state != ACTIVE:
                self._drop_local(claims.sid)
                raise TokenRejected("session_ended", "this session has ended")
            hit = self.anomaly.scope(claims.tenant, tool_name, dict(parsed)) or self.anomaly.rate(
                opened.calls
            )
            if hit is not None:
                self._on_anomaly(claims, tool_name, hit)
            token, _ = self._login(claims)
            try:
                local = self._local_session(claims)
                result = tool.run(_Context(self, claims, token, local), parsed)
            finally:
                token.drop()  # step 4
            outcome = "ok"
            return result
        except AccessDenied as exc:
            outcome = "denied"
            if claims is not None and exc.code != "anomaly_revoked":
                hit = self._denied_hit(claims.sid)
                if hit is not None:
                    self._on_anomaly(claims, tool_name, hit)
            raise
        except TokenRejected:
            outcome = "denied"
            raise
        except RequestRejected:
            outcome = "rejected"
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.calls.labels(label, outcome).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            log.info("tool call tool=%s outcome=%s ms=%.1f", label, outcome, elapsed * 1000)

    def _denied_hit(self, sid: str) -> Hit | None:
        """Count one denied call in the shared registry; a registry failure is logged, and
        the call's own denial stands (the registry's outage must not mask it)."""
        try:
            return self.anomaly.denied(self.registry.count_denied(sid, self.anomaly.denied_window))
        except BackendUnavailable as exc:
            log.warning("denied-call count failed sid=%s (%s)", sid, exc.code)
            return None

    def _on_anomaly(self, claims: SessionClaims, tool_name: str, hit: Hit) -> None:
        """Revoke the session now, then record why; always raises ``anomaly_revoked``."""
        self.metrics.anomalies.labels(hit.rule).inc()
        log.warning(
            "anomaly sid=%s tenant=%s agent=%s rule=%s tool=%s: %s; revoking the session",
            claims.sid,
            claims.tenant,
            claims.agent,
            hit.rule,
            tool_name[:64],
            hit.detail,
        )
        try:
            self.end_session(claims.sid, exp=claims.exp, reason="anomaly")
        finally:
            self._record_anomaly(claims, tool_name, hit)
        raise AccessDenied(
            "anomaly_revoked", f"this session was revoked by the anomaly rule {hit.rule}"
        )

    def _record_anomaly(self, claims: SessionClaims, tool_name: str, hit: Hit) -> None:
        """A create-only KV entry by the gateway identity: OpenBao audits path and entity."""
        try:
            token = self._gateway_login()
        except ClawQLError as exc:
            log.warning("anomaly record failed sid=%s (%s)", claims.sid, type(exc).__name__)
            return
        try:
            self.bao.write(
                f"secret/data/clawql-anomalies/{claims.sid}/{hit.rule}",
                {
                    "data": {
                        "sid": claims.sid,
                        "tenant": claims.tenant,
                        "agent": claims.agent,
                        "agent_role": claims.agent_role,
                        "rule": hit.rule,
                        "detail": hit.detail,
                        "tool": tool_name[:64],
                        "at": int(self.clock()),
                    },
                    "options": {"cas": 0},
                },
                token=token.reveal(),
            )
        except ClawQLError as exc:
            log.warning("anomaly record failed sid=%s (%s)", claims.sid, type(exc).__name__)
        finally:
            self._gateway_logout(token)

    def bound_lease(self, claims: SessionClaims, lease: LeaseInfo, token: _Token) -> int:
        """Set ``lease``'s TTL to the session's remaining life; returns its new TTL.

        ``sys/leases/renew`` with an increment sets the TTL to the increment in
        OpenBao 2.7 (shorter or longer, up to the role's ``max_ttl``; measured: ADR
        0005), and the database plugin moves the user's ``VALID UNTIL`` along. The
        token that created the lease renews it (the default policy allows its own
        leases), so this costs one request and no extra login. Fails closed: a lease
        that cannot be bounded is revoked and the call fails.
        """
        remaining = int(claims.exp - self.clock())
        if lease.lease_duration and lease.lease_duration == remaining:
            self.metrics.lease_bounds.labels("already").inc()
            return lease.lease_duration
        new_ttl = -1
        if remaining >= 1:
            try:
                resp = self.bao.write(
                    "sys/leases/renew",
                    {"lease_id": lease.lease_id, "increment": remaining},
                    token=token.reveal(),
                )
                new_ttl = int(resp.get("lease_duration") or -1)
            except OpenBaoError as exc:
                log.warning("lease bound failed sid=%s status=%s", claims.sid, exc.status)
        if 0 < new_ttl <= max(remaining, 1):
            self.metrics.lease_bounds.labels("ok").inc()
            return new_ttl
        self.metrics.lease_bounds.labels("failed").inc()
        self._unbounded(claims.sid, lease.lease_id, remaining)

    def _local_session(self, claims: SessionClaims) -> _LocalSession:
        with self._local_lock:
            local = self._local.get(claims.sid)
            if local is None:
                local = self._local[claims.sid] = _LocalSession(claims)
            return local

    def _drop_local(self, sid: str) -> None:
        with self._local_lock:
            local = self._local.pop(sid, None)
        if local is not None:
            local.close()

    # -- sessions --------------------------------------------------------------------------
    def session_info(self, sid: str) -> dict[str, Any]:
        rec = self.registry.get(sid)
        if rec is None:
            raise RequestRejected("unknown_session", "no such session", status=404)
        state = rec.state
        if state != ACTIVE and rec.leases:
            state = REVOCATION_PENDING  # ended, but not everything is confirmed revoked
        return {
            "sid": rec.sid,
            "state": state,
            "tenant": rec.tenant,
            "agent": rec.agent,
            "agent_role": rec.agent_role,
            "expires_at": rec.exp,
            "lease_count": len(rec.leases),
            "ended_reason": rec.ended_reason or None,
        }

    def end_session(self, sid: str, *, exp: int, reason: str) -> dict[str, Any]:
        """End ``sid`` everywhere: state first, then every lease, then local resources."""
        started = time.perf_counter()
        with self._local_lock:
            self._ending.add(sid)
        try:
            return self._end_session(sid, exp, reason, started)
        finally:
            with self._local_lock:
                self._ending.discard(sid)

    def _end_session(self, sid: str, exp: int, reason: str, started: float) -> dict[str, Any]:
        result = self.registry.end(sid, exp, reason)
        self._drop_local(sid)
        revoked = self.revoke_leases(sid, list(result.leases)) if result.leases else 0
        pending = len(result.leases) - revoked
        if pending:
            self._retry_at[sid] = (self.clock() + _RETRY_FIRST, _RETRY_FIRST)
        if result.transitioned:
            self.metrics.session_ends.labels(reason).inc()
            log.info(
                "session ended sid=%s reason=%s leases_revoked=%d ms=%.1f",
                sid,
                reason,
                revoked,
                (time.perf_counter() - started) * 1000,
            )
        # Tell the truth: a session whose credentials are not all confirmed revoked is
        # not "ended" yet; the sweeper retries with backoff and the metric carries it.
        return {
            "sid": sid,
            "state": REVOCATION_PENDING if pending else "ended",
            "leases_revoked": revoked,
            "revocation_pending": pending,
        }

    def revoke_leases(self, sid: str, lease_ids: list[str]) -> int:
        """Revoke with the gateway's own identity; its token dies right after."""
        if not lease_ids:
            return 0
        try:
            token = self._gateway_login()
        except ClawQLError:
            self.metrics.revoke_failures.labels("identity").inc(len(lease_ids))
            raise
        done = 0
        try:
            # Leases first (each revocation drops its user synchronously), then the
            # anchor tokens, whose revocation takes any lease the registry missed.
            for lease in sorted(lease_ids, key=lambda e: e.startswith(ACCESSOR_PREFIX)):
                try:
                    self._revoke_one(lease, token)
                except OpenBaoError as exc:
                    # A 400 for what another replica (or the sweeper) just revoked is done.
                    if not (exc.status == 400 and self._already_gone(lease, token)):
                        self.metrics.revoke_failures.labels("openbao").inc()
                        log.warning("lease revoke failed sid=%s status=%s", sid, exc.status)
                        continue
                self.registry.lease_revoked(sid, lease)
                self.metrics.leases_revoked.inc()
                done += 1
        finally:
            self._gateway_logout(token)
        return done

    def _revoke_one(self, entry: str, token: _Token) -> None:
        if entry.startswith(ACCESSOR_PREFIX):
            self.bao.write(
                "auth/token/revoke-accessor",
                {"accessor": entry[len(ACCESSOR_PREFIX) :]},
                token=token.reveal(),
            )
        else:
            self.bao.write("sys/leases/revoke", {"lease_id": entry}, token=token.reveal())

    def _already_gone(self, entry: str, token: _Token) -> bool:
        """After a 400 on a revocation: is the token or lease gone anyway? (Two replicas,
        or a DELETE and the sweeper, revoking at once: the second one gets a 400.)"""
        if entry.startswith(ACCESSOR_PREFIX):
            path, body = "auth/token/lookup-accessor", {"accessor": entry[len(ACCESSOR_PREFIX) :]}
        else:
            path, body = "sys/leases/lookup", {"lease_id": entry}
        try:
            self.bao.write(path, body, token=token.reveal())
        except OpenBaoError as exc:
            return exc.status == 400  # "invalid accessor" / "invalid lease": gone
        return False

    def _gateway_logout(self, token: _Token) -> None:
        """Revoke a ``_gateway_login`` token (best effort: it is short-lived) and drop it."""
        with contextlib.suppress(ClawQLError):
            self.bao.request("POST", "auth/token/revoke-self", token=token.reveal(), retry_for=1)
        token.drop()

    def _gateway_login(self) -> _Token:
        return _Token(identity.login(self.bao, self.config.identity).token)

    def sweep(self) -> int:
        """End expired sessions, retry unfinished revocations, close stale local resources."""
        n = 0
        now = self.clock()
        for sid in self.registry.expired(now):
            rec = self.registry.get(sid)
            self.end_session(sid, exp=rec.exp if rec else int(now), reason="expired")
            n += 1
        pending = self.registry.pending(_PENDING_BATCH)
        if len(pending) < _PENDING_BATCH:  # the whole set: forget what was revoked elsewhere
            for sid in set(self._retry_at) - set(pending):
                self._retry_at.pop(sid, None)
        for sid in pending:
            due, delay = self._retry_at.get(sid, (0.0, _RETRY_FIRST / 2))
            with self._local_lock:
                busy = sid in self._ending  # this replica's DELETE is revoking it now
            if now < due or busy:
                continue
            leases = self.registry.leases(sid)
            if not leases:  # its lease set expired with the record: nothing left to revoke
                self.registry.clear_pending(sid)
                self._retry_at.pop(sid, None)
                continue
            done = 0
            with contextlib.suppress(ClawQLError):
                done = self.revoke_leases(sid, leases)
            if done < len(leases):  # back off: 1 s, 2 s, 4 s … at most 5 minutes
                delay = min(delay * 2, _RETRY_MAX)
                self._retry_at[sid] = (now + delay, delay)
            else:
                self._retry_at.pop(sid, None)
        self.metrics.pending_revocation.set(self.registry.count_pending())
        with self._local_lock:
            local_sids = list(self._local)
        for sid in local_sids:
            rec = self.registry.get(sid)
            if rec is None or rec.state != ACTIVE:
                self._drop_local(sid)
        return n

    def close(self) -> None:
        with self._local_lock:
            sids = list(self._local)
        for sid in sids:
            self._drop_local(sid)
        if self.login_client is not None:
            self.login_client.close()
        self.registry.close()  # and with it this replica's Redis user (ADR 0011)


def _peek(bearer: str, part: int) -> dict[str, Any]:
    import base64
    import json

    try:
        seg = bearer.split(".")[part]
        value = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    except (IndexError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _peek_kid(bearer: str) -> object:
    if len(bearer) > 65536:
        return None
    return _peek(bearer, 0).get("kid")


def _peek_claim(bearer: str, name: str) -> object:
    if len(bearer) > 65536:
        return None
    return _peek(bearer, 1).get(name)
