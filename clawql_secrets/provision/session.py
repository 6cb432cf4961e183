"""Connecting to the local stack as the right identity (never a root token)."""

from __future__ import annotations

from pathlib import Path

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer


def open_stack(data_dir: Path) -> tuple[StackSettings, OpenBaoClient, LocalIssuer]:
    settings = stack.load_settings(data_dir.resolve())
    issuer = LocalIssuer.load_or_create(settings.issuer_dir, stack.ISSUER_URL)
    return settings, stack.client_for(settings, retry_for=20), issuer


def person_login(client: OpenBaoClient, issuer: LocalIssuer, name: str) -> str:
    """A person's own token (author/approver) through the change-participant role.

    Locally the stack's issuer stands in for the people's identity provider.
    """
    jwt = issuer.mint(
        name,
        bootstrap.WORKLOAD_AUDIENCE,
        ttl=60,
        **{bootstrap.CHANGE_PARTICIPANT_CLAIM: bootstrap.CHANGE_PARTICIPANT.role},
    )
    resp = client.request(
        "POST",
        f"auth/{bootstrap.WORKLOAD_MOUNT}/login",
        body={"role": bootstrap.CHANGE_PARTICIPANT.role, "jwt": jwt},
        token="",
    )
    token = str((resp.get("auth") or {}).get("client_token") or "")
    if not token:
        raise OpenBaoError(f"login as {name} returned no token")
    return token


def workload_accessor(client: OpenBaoClient, token: str) -> str:
    auth = client.read("sys/auth", token=token).get("data") or {}
    entry = auth.get(f"{bootstrap.WORKLOAD_MOUNT}/") or {}
    acc = str(entry.get("accessor") or "")
    if not acc:
        raise OpenBaoError("the workload auth mount has no accessor")
    return acc
