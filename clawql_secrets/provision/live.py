"""The adapter: read live OpenBao state and apply a plan, as the provisioner.

Only this module talks to OpenBao for ``provision``. It reads what the pure
diff needs (projections of the compared fields, listings of managed
collections) and executes changes one by one. An apply that fails halfway
raises ``ApplyError`` saying what was done and what failed; because every
step is "make this object look like that", rerunning converges.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clawql_secrets.cluster import kv
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ConfigError, OpenBaoError
from clawql_secrets.provision import diff as diffmod
from clawql_secrets.provision.model import DesiredState
from clawql_secrets.provision.render import (
    DB_MOUNT,
    PKI_INT,
    PKI_ROOT,
    Obj,
    normalise,
    render,
)

Progress = Callable[[str], None]


class ApplyError(OpenBaoError):
    """Apply stopped halfway; ``done`` lists what was applied before the failure."""

    def __init__(self, message: str, done: list[str], *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.done = done


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def _quiet(_: str) -> None:
    return None


class Provisioner:
    """Reads and writes OpenBao with one (provisioner) token."""

    def __init__(self, client: OpenBaoClient, token: str) -> None:
        self.client = client
        self._token = token

    # -- reading ----------------------------------------------------------------
    def _get(self, path: str) -> Mapping[str, Any] | None:
        try:
            resp = self.client.read(path, token=self._token)
        except OpenBaoError as exc:
            if exc.status == 404:
                return None
            raise
        data = resp.get("data")
        return data if isinstance(data, Mapping) else None

    def _list(self, path: str) -> list[str]:
        try:
            resp = self.client.request("LIST", path, token=self._token)
        except OpenBaoError as exc:
            if exc.status == 404:
                return []
            raise
        keys = (resp.get("data") or {}).get("keys") or []
        return [str(k) for k in keys]

    def live_policy(self, name: str) -> str | None:
        try:
            resp = self.client.read(f"sys/policies/acl/{name}", token=self._token)
        except OpenBaoError as exc:
            if exc.status == 404:
                return None
            raise
        return str((resp.get("data") or {}).get("policy", ""))

    def accessor(self, mount: str) -> str | None:
        auth = self._get("sys/auth") or {}
        entry = auth.get(f"{mount}/")
        return str(entry["accessor"]) if isinstance(entry, Mapping) else None

    def read_live(self, desired: list[Obj], state: DesiredState) -> diffmod.LiveState:
        auth = self._get("sys/auth") or {}
        mounts = self._get("sys/mounts") or {}
        objects: dict[str, Mapping[str, Any] | None] = {}
        for obj in desired:
            objects[obj.path] = self._project(obj, auth, mounts)
        mount = state.exchange.mount
        listed: dict[str, frozenset[str]] = {}

        def collect(kind: str, base: str, present: bool) -> None:
            if present:
                listed[kind] = frozenset(f"{base}/{k}" for k in self._list(base))

        collect("jwt-role", f"auth/{mount}/role", f"{mount}/" in auth)
        collect("db-role", f"{DB_MOUNT}/roles", f"{DB_MOUNT}/" in mounts)
        collect("db-connection", f"{DB_MOUNT}/config", f"{DB_MOUNT}/" in mounts)
        collect("pki-role", f"{PKI_INT}/roles", f"{PKI_INT}/" in mounts)
        collect("oidc-role", "identity/oidc/role", True)
        collect("oidc-key", "identity/oidc/key", True)
        # The built-in "default" OIDC key is OpenBao's own, not ours.
        if "oidc-key" in listed:
            listed["oidc-key"] = listed["oidc-key"] - {"identity/oidc/key/default"}
        return diffmod.LiveState(objects, listed)

    def _project(
        self, obj: Obj, auth: Mapping[str, Any], mounts: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        if obj.kind in ("auth-mount", "mount"):
            name = obj.path.split("/", 2)[2] + "/"
            entry = (auth if obj.kind == "auth-mount" else mounts).get(name)
            if not isinstance(entry, Mapping):
                return None
            live = {"type": entry.get("type")}
            if "options" in obj.compare:
                live["options"] = {"version": (entry.get("options") or {}).get("version")}
            return {k: normalise(k, v) for k, v in live.items()}
        if obj.kind in ("pki-root-ca", "pki-int-ca", "kv-config"):
            mount = obj.path.split("/", 1)[0]
            if f"{mount}/" not in mounts:
                return None
        if obj.kind in ("pki-root-ca", "pki-int-ca"):
            data = self._get(obj.path)
            present = bool(data and str(data.get("certificate") or "").strip())
            return {"present": True} if present else None
        data = self._kv_config(obj.path) if obj.kind == "kv-config" else self._get(obj.path)
        if data is None:
            return None
        if obj.kind == "db-connection":
            details = data.get("connection_details") or {}
            data = {**data, **{k: details.get(k) for k in ("connection_url", "username")}}
        return {k: normalise(k, data.get(k)) for k in obj.compare}

    def _kv_config(self, path: str) -> Mapping[str, Any] | None:
        try:
            return self._get(path)
        except OpenBaoError as exc:
            if exc.status != 403:
                raise
            # Clusters initialised before the provisioner's policy named this path.
            raise ConfigError(
                f"the provisioner may not read {path}, so it cannot make sure the "
                "KV mount keeps no older version of a rotated secret",
                fix="start a new stack (`clawql-secrets up --data-dir NEW`), or add "
                f'`path "{path}" {{ capabilities = ["read", "update"] }}` to the '
                "clawql-provisioner policy (cluster/bootstrap.py PROVISIONER) with "
                "`clawql-secrets break-glass root-token`",
            ) from exc

    # -- planning ---------------------------------------------------------------
    def plan(self, state: DesiredState) -> tuple[list[Obj], diffmod.Plan]:
        desired = render(state, self.accessor(state.exchange.mount))
        return desired, diffmod.diff(desired, self.read_live(desired, state))

    # -- applying ---------------------------------------------------------------
    def apply(
        self,
        state: DesiredState,
        *,
        env: Mapping[str, str] | None = None,
        progress: Progress = _quiet,
    ) -> ApplyResult:
        env = os.environ if env is None else env
        result = ApplyResult()
        _, plan = self.plan(state)
        self._precheck(plan, state, env)
        if self.accessor(state.exchange.mount) is None:
            # The accessor is part of rendered templates: create the mount, then re-plan.
            first = [c for c in plan.changes if c.kind == "auth-mount"]
            self._run(first, state, env, result, progress)
            _, plan = self.plan(state)
        self._run(list(plan.changes), state, env, result, progress)
        return result

    def _precheck(self, plan: diffmod.Plan, state: DesiredState, env: Mapping[str, str]) -> None:
        """Refuse before touching anything: type changes and missing admin passwords."""
        refused = [c for c in plan.changes if c.action == "replace-refused"]
        if refused:
            raise ConfigError(
                "these objects exist with a different type and are not replaced automatically: "
                + ", ".join(c.path for c in refused),
                fix="move or remove them by hand after checking nothing depends on them",
            )
        for c in plan.changes:
            if c.kind == "db-connection" and c.action != "delete":
                db = state.database(c.path.rsplit("/", 1)[1])
                if not env.get(db.password_env):
                    raise ConfigError(
                        f"connection {db.name} must be written but ${db.password_env} is not set",
                        fix="export the database admin's current password for this apply; "
                        "it is rotated away right after",
                    )

    def _run(
        self,
        changes: list[diffmod.Change],
        state: DesiredState,
        env: Mapping[str, str],
        result: ApplyResult,
        progress: Progress,
    ) -> None:
        for change in changes:
            try:
                self._execute(change, state, env)
            except OpenBaoError as exc:
                raise ApplyError(
                    f"apply stopped at {change.action} {change.path} after "
                    f"{len(result.applied)} change(s): {exc.message}",
                    list(result.applied),
                    fix="fix the cause and rerun apply: it continues from where it stopped",
                ) from exc
            done = f"{change.action} {change.kind} {change.path}"
            result.applied.append(done)
            progress(done)

    def _w(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.client.write(path, body, token=self._token)

    def _execute(self, change: diffmod.Change, state: DesiredState, env: Mapping[str, str]) -> None:
        if change.action == "delete":
            self.client.delete(change.path, token=self._token)
            return
        obj = change.obj
        if obj is None:  # pragma: no cover - diff always attaches the object
            raise ConfigError(f"internal: no object for {change.path}")
        body = dict(obj.body)
        if obj.kind == "auth-mount":
            self._w(obj.path, {**body, "description": "ClawQL agent sessions"})
        elif obj.kind == "mount":
            self._w(obj.path, body)
        elif obj.kind == "kv-config":
            # The KV mount may have been enabled a moment ago by this same apply.
            kv.write_config(self.client, self._token, body)
        elif obj.kind == "db-connection":
            name = obj.path.rsplit("/", 1)[1]
            db = state.database(name)
            # The admin password exists in this process only for this one call,
            # then the engine replaces it with one nobody knows.
            self._w(obj.path, {**body, "password": env[db.password_env]})
            self._w(f"{DB_MOUNT}/rotate-root/{name}", {})
        elif obj.kind == "pki-root-ca":
            self._w(
                f"{PKI_ROOT}/root/generate/internal",
                {
                    "common_name": body["common_name"],
                    "ttl": body["ttl"],
                    "key_type": "ec",
                    "key_bits": 256,
                    "issuer_name": "root",
                },
            )
        elif obj.kind == "pki-int-ca":
            csr = self._w(
                f"{PKI_INT}/intermediate/generate/internal",
                {"common_name": body["common_name"], "key_type": "ec", "key_bits": 256},
            )
            signed = self._w(
                f"{PKI_ROOT}/root/sign-intermediate",
                {
                    "csr": (csr.get("data") or {}).get("csr", ""),
                    "common_name": body["common_name"],
                    "ttl": body["ttl"],
                    "format": "pem_bundle",
                },
            )
            cert = str((signed.get("data") or {}).get("certificate", ""))
            self._w(f"{PKI_INT}/intermediate/set-signed", {"certificate": cert})
        else:
            self._w(obj.path, body)
