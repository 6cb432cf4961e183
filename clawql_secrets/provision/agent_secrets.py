"""An operator sets an agent's injected secret, and never sees it again.

``http.request`` injects a field of ``secret/data/tenants/<tenant>/agents/<agent>/<name>``
into a header; someone has to put the value there. That someone logs in as the
``secrets-writer`` service identity, which may create a new version of such a
secret and do nothing else: it cannot read a value back (not even the one it just
wrote), list names, delete versions or reach any other path. The value comes from
stdin or a no-echo prompt, never from an argument (shell history, ``ps``), and no
message of this module contains it.

A put writes a new version holding exactly one field: other fields of the
previous version are not carried over (that would need reading it).
"""

from __future__ import annotations

import contextlib
import getpass
import re
from dataclasses import dataclass
from typing import BinaryIO

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.errors import ClawQLError, ConfigError, InputError, OpenBaoError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.names import AGENT_RE, SECRET_RE, TENANT_RE
from clawql_secrets.provision.render import KV_MOUNT

# The names a role may list under ``secrets:`` (provision.model.SecretName).
SECRET_NAME_RE = SECRET_RE
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# Injected values go into one HTTP header: a few KiB at most, one line.
MAX_VALUE_BYTES = 8192
_FORBIDDEN_CHARS = frozenset("\r\n\0")
# A tenant must be both a clawql.yaml tenant and what a session JWT can carry.
_RULES: dict[str, tuple[tuple[re.Pattern[str], ...], str]] = {
    "tenant": (
        (TENANT_RE,),
        "a tenant of clawql.yaml: lower-case letters and digits, at most 31, letter first",
    ),
    "agent": ((AGENT_RE,), "lower-case letters, digits, '_' and '-', at most 63"),
    "secret name": (
        (SECRET_NAME_RE,),
        "a name from the role's `secrets:` list: [a-z][a-z0-9_-], at most 63",
    ),
    "field": ((FIELD_RE,), "letters, digits, '_' and '-', at most 64, not a digit first"),
}


@dataclass(frozen=True)
class AgentSecretRef:
    """Which agent secret, and which of its fields; every part a safe path segment."""

    tenant: str
    agent: str
    name: str
    field: str = "value"

    def __post_init__(self) -> None:
        parts = {
            "tenant": self.tenant,
            "agent": self.agent,
            "secret name": self.name,
            "field": self.field,
        }
        for what, value in parts.items():
            patterns, rule = _RULES[what]
            if not all(p.fullmatch(value) for p in patterns):
                raise InputError(f"invalid {what} {value[:80]!r}", fix=f"use {rule}")

    @property
    def path(self) -> str:
        """The KV v2 data path (agents' policies read exactly this)."""
        return f"{KV_MOUNT}/data/tenants/{self.tenant}/agents/{self.agent}/{self.name}"

    def describe(self) -> str:
        return f"{self.tenant}/{self.agent}'s secret {self.name!r} (field {self.field!r})"


def check_value(value: str) -> None:
    """Refuse what cannot be an injected header value. Messages never quote it."""
    if not value:
        raise InputError(
            "the secret value is empty",
            fix="pipe the value on stdin, e.g. `printenv TOKEN | clawql-secrets agent-secret "
            "put ...`, or run it on a terminal to be prompted",
        )
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise InputError(
            f"the secret value is longer than {MAX_VALUE_BYTES} bytes",
            fix="an injected secret goes into one HTTP header; store a shorter value",
        )
    if _FORBIDDEN_CHARS.intersection(value):
        raise InputError(
            "the secret value contains a line break or NUL inside it",
            fix="an injected secret goes into one HTTP header: one line, no NUL "
            "(a single trailing newline on stdin is removed for you)",
        )


def read_value(stream: BinaryIO, *, interactive: bool, prompt: str) -> str:
    """The value from a no-echo prompt on a terminal, else all of ``stream``.

    One trailing newline (``echo`` adds it) is removed; the result is checked.
    """
    if interactive:
        value = getpass.getpass(prompt)
    else:
        raw = stream.read(MAX_VALUE_BYTES + 3)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                "the secret value on stdin is not UTF-8 text",
                fix="pipe the value as text (base64-encode binary values)",
            ) from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    check_value(value)
    return value


def put(client: OpenBaoClient, token: str, ref: AgentSecretRef, value: str) -> int:
    """Write ``value`` as the only field of a new version of ``ref``; its version number."""
    check_value(value)
    body = {"data": {ref.field: value}}
    try:
        resp = client.request("POST", ref.path, body=body, token=token)
    except OpenBaoError as exc:
        if exc.status == 403:
            raise OpenBaoError(
                f"OpenBao refused to store {ref.describe()} for this identity",
                status=403,
                fix="log in as the secrets-writer identity; its policy allows "
                "secret/data/tenants/+/agents/+/+ only",
            ) from exc
        raise
    finally:
        body.clear()
    version = (resp.get("data") or {}).get("version")
    if not isinstance(version, int) or version < 1:
        raise OpenBaoError(f"OpenBao stored {ref.describe()} but returned no version")
    return version


def writer_login(client: OpenBaoClient, issuer: LocalIssuer) -> str:
    """A short-lived ``secrets-writer`` token; a clear error on a stack that lacks it."""
    try:
        return bootstrap.login(client, issuer, bootstrap.SECRETS_WRITER)
    except OpenBaoError as exc:
        if exc.status in (400, 403):
            raise ConfigError(
                "cannot log in as the secrets-writer identity: this cluster has no "
                f"such role (HTTP {exc.status})",
                fix="clusters initialised before it existed lack it: start a new stack "
                "(`clawql-secrets up --data-dir NEW`), or add the role and its policy "
                "(cluster/bootstrap.py SECRETS_WRITER) with `break-glass root-token`",
            ) from exc
        raise


def put_on_stack(settings: StackSettings, ref: AgentSecretRef, value: str) -> int:
    """``put`` on the local stack as ``secrets-writer``; the token is revoked afterwards."""
    check_value(value)
    issuer = LocalIssuer.load(settings.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(settings, retry_for=20) as client:
        token = writer_login(client, issuer)
        try:
            return put(client, token, ref, value)
        finally:
            with contextlib.suppress(ClawQLError):
                client.request("POST", "auth/token/revoke-self", token=token, retry_for=2)
