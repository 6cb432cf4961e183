"""Helpers: run the ``scan`` command in-process and capture what it prints."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from clawql_secrets.scan import commands

RunScan = Callable[..., tuple[int, str]]


@pytest.fixture
def run_scan(capsys: pytest.CaptureFixture[str]) -> RunScan:
    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="clawql-secrets")
        commands.register(parser.add_subparsers())
        args = parser.parse_args(["scan", *argv])
        code = args.func(args)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def leaks(secret: str, text: str) -> bool:
    """True if ``text`` holds ``secret`` or any 12-character piece of it."""
    if not secret:
        return False
    if secret in text:
        return True
    n = 12
    return any(secret[i : i + n] in text for i in range(0, max(1, len(secret) - n + 1)))
