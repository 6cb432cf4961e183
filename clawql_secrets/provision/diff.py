"""Desired objects vs live state → a plan (pure).

``LiveState`` is what the adapter read: for every path it looked at, the
projection of the live object onto the compared fields (``None`` if absent),
and for every managed collection the paths that exist, so objects nobody
declares any more are planned for deletion. Mounts and CAs are never deleted
by a plan: losing one destroys data, so that stays a human decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from clawql_secrets.provision.render import ORDER, Obj

Action = Literal["create", "update", "delete", "replace-refused"]


@dataclass(frozen=True)
class FieldChange:
    name: str
    live: Any
    desired: Any


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    path: str
    fields: tuple[FieldChange, ...] = ()
    obj: Obj | None = None

    def describe(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-", "replace-refused": "!"}[self.action]
        head = f"{sign} {self.action:<7} {self.kind:<14} {self.path}"
        lines = [head]
        for f in self.fields:
            lines.append(f"      {f.name}: {_short(f.live)} -> {_short(f.desired)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LiveState:
    objects: Mapping[str, Mapping[str, Any] | None]
    # kind -> every live path of that kind in the collections we manage
    listed: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]

    @property
    def pending(self) -> bool:
        return bool(self.changes)

    def render(self) -> str:
        if not self.changes:
            return "No changes: OpenBao matches the desired state."
        body = "\n".join(c.describe() for c in self.changes)
        counts = {
            a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "delete")
        }
        return (
            f"{body}\n\nPlan: {counts['create']} to create, {counts['update']} to update, "
            f"{counts['delete']} to delete."
        )


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


def diff(desired: Sequence[Obj], live: LiveState) -> Plan:
    changes: list[Change] = []
    wanted = {o.path for o in desired}
    for obj in desired:
        current = live.objects.get(obj.path)
        if current is None:
            changes.append(Change("create", obj.kind, obj.path, obj=obj))
            continue
        deltas = tuple(
            FieldChange(k, current.get(k), v) for k, v in obj.compare.items() if current.get(k) != v
        )
        if not deltas:
            continue
        action: Action = "replace-refused" if obj.create_only else "update"
        changes.append(Change(action, obj.kind, obj.path, deltas, obj))
    deletes = [
        Change("delete", kind, path)
        for kind, paths in live.listed.items()
        for path in sorted(paths)
        if path not in wanted
    ]
    deletes.sort(key=lambda c: -ORDER.index(c.kind))
    return Plan(tuple(changes + deletes))
