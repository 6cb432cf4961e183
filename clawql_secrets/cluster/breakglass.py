"""Break-glass: a root token from a quorum of recovery shares, for one operation.

OpenBao's generate-root takes ``threshold`` recovery shares (auto-unseal
clusters use recovery keys, not unseal keys) and returns the new root token
XOR-ed with a one-time pad that only this process saw. Since OpenBao 2.6 the
unauthenticated ``sys/generate-root`` endpoints are off; the authenticated
``sys/generate-root-token`` ones need an identity with the break-glass policy
AND the quorum: two independent controls, which is what we want anyway. We use the token for
the single operation asked and revoke it; or, only when explicitly asked,
mint a child token with a short TTL, print it once and still revoke the root.
The root token never touches disk and never appears in an error.

Procedure:
  1. cancel any attempt in progress (a stale one would consume our shares);
  2. start an attempt: OpenBao returns a nonce and the OTP;
  3. submit shares with the nonce until OpenBao reports completion;
  4. decode the encoded token with the OTP;
  5. do the one operation (or mint the short-lived token);
  6. revoke the root token, whatever happened in 5.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ClawQLError, InputError, OpenBaoError


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in {"GET", "POST", "PUT", "DELETE", "LIST"}:
            raise InputError(f"unsupported method {self.method!r}")
        if not self.path or self.path.startswith("/") or ".." in self.path.split("/"):
            raise InputError(f"bad OpenBao path {self.path!r}", fix="e.g. sys/policies/acl/name")


def decode_token(encoded: str, otp: str) -> str:
    """Undo OpenBao's OTP encoding: base64 (unpadded) of token XOR otp."""
    raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    pad = otp.encode()
    if len(raw) != len(pad):
        raise OpenBaoError("generate-root returned a token whose length does not match the OTP")
    return bytes(a ^ b for a, b in zip(raw, pad, strict=True)).decode()


_ATTEMPT = "sys/generate-root-token/attempt"
_UPDATE = "sys/generate-root-token/update"


def generate_root(client: OpenBaoClient, shares: Sequence[str], token: str) -> str:
    """Steps 1-4. ``shares`` are base64 recovery keys, ``token`` the break-glass identity's."""
    if not shares:
        raise InputError("no recovery shares given")

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = (
            client.request(method, path, body=body, token=token).get("data") or {}
        )
        return data

    # 1.
    with contextlib.suppress(OpenBaoError):
        client.request("DELETE", _ATTEMPT, token=token)
    # 2.
    attempt = call("PUT", _ATTEMPT, {})
    nonce, otp = str(attempt.get("nonce", "")), str(attempt.get("otp", ""))
    required = int(attempt.get("required", 0))
    if not nonce or not otp:
        raise OpenBaoError("generate-root did not return a nonce and a one-time pad")
    if len(shares) < required:
        client.request("DELETE", _ATTEMPT, token=token)
        raise InputError(
            f"{len(shares)} recovery shares given, {required} required",
            fix="gather more key holders",
        )
    # 3.
    resp: dict[str, Any] = {}
    for i, share in enumerate(shares, start=1):
        try:
            resp = call("PUT", _UPDATE, {"key": share.strip(), "nonce": nonce})
        except OpenBaoError as exc:
            with contextlib.suppress(OpenBaoError):
                client.request("DELETE", _ATTEMPT, token=token)
            raise InputError(
                f"recovery share #{i} was refused by OpenBao (HTTP {exc.status}): "
                "it is not a recovery share of this cluster, or it was altered",
            ) from exc
        if resp.get("complete"):
            break
    if not resp.get("complete"):
        with contextlib.suppress(OpenBaoError):
            client.request("DELETE", _ATTEMPT, token=token)
        raise InputError(
            "the recovery shares given did not reconstruct this cluster's recovery key: "
            "at least one is wrong, altered or from another cluster (recovery shares "
            "carry no per-share authentication, so OpenBao cannot say which)"
        )
    # 4.
    return decode_token(str(resp["encoded_token"]), otp)


def run_once(
    client: OpenBaoClient,
    shares: Sequence[str],
    op: Operation | None,
    *,
    token: str,
    print_ttl: str | None = None,
) -> dict[str, Any]:
    """Steps 1-6: the operation's answer, or ``{"token": ..., "ttl": ...}`` if asked."""
    root = generate_root(client, shares, token)
    try:
        # 5.
        if print_ttl:
            resp = client.request(
                "POST",
                "auth/token/create-orphan",
                body={
                    "policies": ["root"],
                    "ttl": print_ttl,
                    "renewable": False,
                    "display_name": "break-glass",
                    "num_uses": 0,
                },
                token=root,
            )
            return {"token": resp["auth"]["client_token"], "ttl": print_ttl}
        if op is None:
            raise InputError("nothing to do: give an operation or --print-token")
        return client.request(op.method, op.path, body=op.body, token=root)
    finally:
        # 6.
        try:
            client.request("POST", "auth/token/revoke-self", token=root, retry_for=30)
        except ClawQLError as exc:
            raise OpenBaoError(
                "the break-glass root token could NOT be revoked: revoke it now "
                "(bao token revoke -self) before anything else"
            ) from exc
