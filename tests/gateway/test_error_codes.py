"""Every stable error code the gateway can raise is listed in its OpenAPI schema."""

from __future__ import annotations

import ast
from pathlib import Path

from clawql_secrets.gateway.openapi import ERROR_CODES, SQL_CLASS_REFUSED

GATEWAY = Path(__file__).resolve().parents[2] / "clawql_secrets" / "gateway"
CODED = {"RequestRejected", "TokenRejected", "TokenMalformed", "AccessDenied", "BackendUnavailable"}


def raised_codes() -> dict[str, str]:
    """code → where, for each coded error built with a literal code in the gateway."""
    out: dict[str, str] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in CODED
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                out.setdefault(node.args[0].value, f"{path.name}:{node.lineno}")
    return out


def test_every_raised_code_is_documented() -> None:
    import re

    codes = raised_codes()
    assert len(codes) > 40  # the scan finds the gateway's errors at all
    missing = {
        c: where
        for c, where in codes.items()
        if c not in ERROR_CODES and not re.fullmatch(SQL_CLASS_REFUSED, c)
    }
    assert not missing, f"add to openapi.ERROR_CODES: {missing}"
