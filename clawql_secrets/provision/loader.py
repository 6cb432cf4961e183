"""Read ``clawql.yaml`` keeping line numbers, so every error names its line.

PyYAML's ``compose`` gives nodes with marks; we build plain Python values from
them ourselves (refusing duplicate keys, anchors/aliases and non-string keys,
which ``safe_load`` would silently accept) and remember the line of every
value by its path. pydantic's error locations are then mapped back to lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from clawql_secrets.errors import ConfigError
from clawql_secrets.provision.model import DesiredState

Loc = tuple[str | int, ...]
MAX_CONFIG_BYTES = 1_000_000
_SCALARS = yaml.constructor.SafeConstructor()


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    raise _err(key_node, "only plain string keys are allowed (no merge keys)")
                key = str(key_node.value)
                if key in out:
                    raise _err(key_node, f"duplicate key {key!r}")
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            # Resolve the scalar exactly as safe_load would (ints, bools, null, strings).
            return _SCALARS.construct_object(node, deep=True)
        raise _err(node, "unsupported YAML node")

    def line_of(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


def _err(node: yaml.Node, message: str) -> ConfigError:
    return ConfigError(f"line {node.start_mark.line + 1}: {message}")


def parse(text: str, source: str = "clawql.yaml", base_dir: Path | None = None) -> DesiredState:
    """Validate ``text``; raise ``ConfigError`` naming ``source``, line and field."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source}: {where}: malformed YAML: {problem}") from exc
    if root is None:
        raise ConfigError(f"{source}: the file is empty")
    if _has_alias(root):
        raise ConfigError(f"{source}: YAML anchors/aliases are not allowed")
    builder = _Builder()
    try:
        data = builder.build(root, ())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: line 1: the top level must be a mapping")
    _inline_key_files(data, base_dir, source, builder)
    try:
        return DesiredState.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            msg = str(e["msg"]).removeprefix("Value error, ")
            if not e["loc"]:
                # Cross-field rules: each message line starts with its dotted path.
                for item in msg.splitlines():
                    dotted, _, text = item.partition(": ")
                    loc = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
                    msgs.append(f"{source}: line {builder.line_of(loc)}: {dotted}: {text}")
                continue
            loc = tuple(e["loc"])
            field = ".".join(str(p) for p in loc)
            msgs.append(f"{source}: line {builder.line_of(loc)}: {field}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(msgs)) from exc


def _has_alias(node: yaml.Node, seen: set[int] | None = None) -> bool:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return True
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        return any(_has_alias(k, seen) or _has_alias(v, seen) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return any(_has_alias(n, seen) for n in node.value)
    return False


def load(path: Path) -> DesiredState:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({type(exc).__name__})") from exc
    return parse(text, str(path), path.parent)


def _inline_key_files(
    data: dict[str, Any], base_dir: Path | None, source: str, b: _Builder
) -> None:
    """``exchange.public_key_files`` → ``public_keys`` (paths relative to the file)."""
    si = data.get("exchange")
    if not isinstance(si, dict) or "public_key_files" not in si:
        return
    files = si.pop("public_key_files")
    line = b.line_of(("exchange", "public_key_files"))
    if not isinstance(files, list) or "public_keys" in si:
        raise ConfigError(
            f"{source}: line {line}: public_key_files must be a list, without public_keys"
        )
    keys = []
    for f in files:
        path = (base_dir or Path.cwd()) / str(f)
        try:
            keys.append(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{source}: line {line}: cannot read public key file {path} ({type(exc).__name__})"
            ) from exc
    si["public_keys"] = keys
    b.lines[("exchange", "public_keys")] = line or 0
