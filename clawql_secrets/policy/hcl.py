"""A strict reader for OpenBao ACL policies: ``path "…" { capabilities = [...] }``.

Enough HCL for policies (strings, lists, nested objects, numbers, booleans,
comments) and nothing more: anything it does not understand is an error, so
the linter never passes a policy it could not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clawql_secrets.errors import InputError

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<punct>[{}\[\]=,:])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class PathRule:
    pattern: str
    capabilities: tuple[str, ...]
    line: int
    attributes: tuple[str, ...] = ()


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.toks: list[tuple[str, str, int]] = []
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise InputError(f"{source}: line {line}: cannot read {text[pos : pos + 10]!r}")
            kind = m.lastgroup or ""
            val = m.group()
            if kind not in ("ws", "nl", "comment"):
                self.toks.append((kind, val, line))
            line += val.count("\n")
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise InputError(f"{self.source}: unexpected end of policy")
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            raise InputError(f"{self.source}: line {tok[2]}: unexpected {tok[1]!r}")
        self.i += 1
        return tok

    def value(self) -> Any:
        kind, val, _line = self.take()
        if kind == "string":
            return _unquote(val)
        if kind == "number":
            return float(val)
        if kind == "ident":
            return {"true": True, "false": False}.get(val, val)
        if val == "[":
            items = []
            while (t := self.peek()) is not None and t[1] != "]":
                items.append(self.value())
                if (t := self.peek()) is not None and t[1] == ",":
                    self.take()
            self.take(value="]")
            return items
        if val == "{":
            obj: dict[str, Any] = {}
            while (t := self.peek()) is not None and t[1] != "}":
                k = self.take()
                if k[0] not in ("ident", "string"):
                    raise InputError(f"{self.source}: line {k[2]}: bad key {k[1]!r}")
                sep = self.take()
                if sep[1] not in ("=", ":"):
                    raise InputError(f"{self.source}: line {sep[2]}: expected '='")
                obj[_unquote(k[1]) if k[0] == "string" else k[1]] = self.value()
                if (t := self.peek()) is not None and t[1] == ",":
                    self.take()
            self.take(value="}")
            return obj
        raise InputError(f"{self.source}: line {_line}: unexpected {val!r}")

    def rules(self) -> list[PathRule]:
        out = []
        while self.peek() is not None:
            kw = self.take("ident")
            if kw[1] != "path":
                raise InputError(f"{self.source}: line {kw[2]}: only path blocks are allowed")
            pattern = _unquote(self.take("string")[1])
            start = self.peek()
            body = self.value()
            if not isinstance(body, dict) or start is None or start[1] != "{":
                raise InputError(f"{self.source}: line {kw[2]}: path needs a {{ }} block")
            caps = body.get("capabilities", [])
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise InputError(f"{self.source}: line {kw[2]}: capabilities must be a list")
            out.append(
                PathRule(pattern, tuple(caps), kw[2], tuple(k for k in body if k != "capabilities"))
            )
        return out


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def parse(text: str, source: str = "<policy>") -> list[PathRule]:
    return _Parser(text, source).rules()


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
