"""Getting a CSR signed by OpenBao, as the renewer's own workload identity.

The renewer holds no static token. Before it needs one it reads the workload
JWT the platform keeps fresh in ``identity.jwt_file`` (re-read every time:
projected service-account tokens rotate), logs in on the JWT auth mount, and
keeps the resulting short-lived token in memory for half its TTL at most. A
403 drops the token and logs in again once. Neither the JWT nor the token ever
appears in a log line, metric or error message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from clawql_secrets.certs.config import Identity, Service
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import AuthenticationError, ConfigError, OpenBaoError

MAX_JWT_BYTES = 16 * 1024


class Authority(Protocol):
    """Signs a CSR for a service; returns the leaf PEM and the CA chain PEMs."""

    def sign(self, service: Service, csr_pem: bytes) -> tuple[bytes, list[bytes]]: ...


def read_jwt(identity: Identity) -> str:
    try:
        with identity.jwt_file.open("rb") as f:
            raw = f.read(MAX_JWT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the workload JWT {identity.jwt_file} ({type(exc).__name__})",
            fix="mount the service-account token (or run the local issuer) at that path",
        ) from exc
    if len(raw) > MAX_JWT_BYTES:
        raise ConfigError(f"the workload JWT {identity.jwt_file} is larger than 16 KiB")
    text = raw.decode("ascii", errors="replace").strip()
    if text.count(".") != 2:
        raise ConfigError(f"{identity.jwt_file} does not hold a JWT")
    return text


class OpenBaoAuthority:
    def __init__(
        self,
        client: OpenBaoClient,
        identity: Identity,
        pki_mount: str,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._identity = identity
        self._mount = pki_mount
        self._clock = clock
        self._token: str | None = None
        self._token_until = 0.0

    def _login(self) -> str:
        if self._token is not None and self._clock() < self._token_until:
            return self._token
        self._token = None
        ident = self._identity
        try:
            resp = self._client.write(
                f"auth/{ident.mount}/login",
                {"role": ident.role, "jwt": read_jwt(ident)},
                token="",
            )
        except OpenBaoError as exc:
            if exc.status in (400, 401, 403):
                raise AuthenticationError(
                    f"OpenBao refused the renewer's login as {ident.role} on auth/{ident.mount} "
                    f"(HTTP {exc.status})",
                    fix="check the role's bound subject/audience and that the JWT is fresh",
                ) from exc
            raise
        auth = resp.get("auth") or {}
        token = str(auth.get("client_token") or "")
        if not token:
            raise OpenBaoError(f"login as {ident.role} returned no token")
        ttl = float(auth.get("lease_duration") or 0)
        self._token, self._token_until = token, self._clock() + max(ttl / 2, 0)
        return token

    def sign(self, service: Service, csr_pem: bytes) -> tuple[bytes, list[bytes]]:
        body = {
            "csr": csr_pem.decode("ascii"),
            "common_name": service.common_name,
            "alt_names": ",".join(service.dns_sans),
            "uri_sans": ",".join(service.uri_sans),
            "ttl": f"{service.ttl}s",
            "format": "pem",
        }
        path = f"{self._mount}/sign/{service.pki_role}"
        for attempt in (1, 2):
            token = self._login()
            try:
                resp = self._client.write(path, body, token=token)
                break
            except OpenBaoError as exc:
                if exc.status == 403 and attempt == 1:
                    self._token = None  # expired or revoked: log in afresh, once
                    continue
                raise
        data = resp.get("data") or {}
        leaf = str(data.get("certificate") or "")
        chain = [str(c) for c in (data.get("ca_chain") or []) if c]
        if not chain and data.get("issuing_ca"):
            chain = [str(data["issuing_ca"])]
        if not leaf:
            raise OpenBaoError(f"OpenBao's answer to {path} holds no certificate")
        return leaf.encode("ascii"), [c.encode("ascii") for c in chain]
