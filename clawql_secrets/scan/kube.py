"""Kubernetes ``Secret`` objects in manifests and Helm output: their values, decoded.

A ``Secret``'s ``data`` is base64, so a line scan sees only an opaque blob;
each value is decoded here and handed to the detector with its position in
the file. ``stringData`` values are returned as they are. Unparseable YAML
(an unrendered Helm template) yields what parsed before the error: the line
scan still covers the rest.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

from clawql_secrets.scan import entropy


@dataclass(frozen=True)
class SecretEntry:
    """One ``data``/``stringData`` entry of a ``Secret``: where it is, its key and value."""

    line: int
    column: int
    end_line: int
    """Last line of the value (block scalars span several)."""
    key: str
    value: str
    """Decoded text; for binary data, the original base64 (judged as a token)."""


def secret_entries(text: str) -> list[SecretEntry]:
    """Every entry of every ``Secret`` (also inside ``kind: List``) in a YAML/JSON stream."""
    out: list[SecretEntry] = []
    for doc in _documents(text):
        out.extend(_from_object(doc))
    return out


def env_entries(text: str) -> list[SecretEntry]:
    """Container ``env`` items (``- name: DB_PASSWORD`` / ``value: ...``), anywhere.

    The name and the value sit on two lines, so a line scan cannot pair them;
    paired here, the value is judged under its variable's name.
    """
    out: list[SecretEntry] = []
    stack = _documents(text)
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            name, value = _get(node, "name"), _get(node, "value")
            if isinstance(name, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode):
                out.append(_entry(value, name.value, value.value))
            stack.extend(v for _, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return out


def _documents(text: str) -> list[yaml.Node]:
    docs: list[yaml.Node] = []
    try:
        for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError:
        pass
    return docs


def _get(node: yaml.Node, name: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == name:
            found: yaml.Node = v
            return found
    return None


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _from_object(node: yaml.Node) -> Iterator[SecretEntry]:
    kind = _scalar(_get(node, "kind"))
    if kind == "List" or kind == "SecretList":
        items = _get(node, "items")
        if isinstance(items, yaml.SequenceNode):
            for item in items.value:
                yield from _from_object(item)
        return
    if kind != "Secret":
        return
    for section, encoded in (("data", True), ("stringData", False)):
        entries = _get(node, section)
        if not isinstance(entries, yaml.MappingNode):
            continue
        for k, v in entries.value:
            key, value = _scalar(k), _scalar(v)
            if key is None or value is None:
                continue
            yield _entry(v, key, _decoded(value, encoded))


def _entry(node: yaml.Node, key: str, value: str) -> SecretEntry:
    start, end = node.start_mark, node.end_mark
    # A block scalar ends at the start of the next line: do not claim that line.
    end_line = end.line + 1 if end.column > 0 or end.line == start.line else end.line
    return SecretEntry(start.line + 1, start.column + 1, end_line, key, value)


def _decoded(value: str, encoded: bool) -> str:
    if not encoded:
        return value
    compact = "".join(value.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return value
    text = entropy.as_text(data)
    return text if text is not None else compact
