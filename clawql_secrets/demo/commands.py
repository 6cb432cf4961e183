"""CLI: ``clawql-secrets demo [--data-dir D] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from clawql_secrets.cluster import stack


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="watch the whole promise happen on the running stack")
    p.add_argument("--data-dir", type=Path, default=Path(".clawql"))
    p.add_argument("--json", action="store_true", help="one JSON document, for machines")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from clawql_secrets.demo.run import DemoFailure, run

    settings = stack.load_settings(args.data_dir.resolve())
    st = stack.status(settings)
    if not (st.get("gateway") or {}).get("pid"):
        print(
            "error: the stack's gateway is not running; run `clawql-secrets up` first",
            file=sys.stderr,
        )
        return 1
    console = Console()  # colours only on a terminal (rich decides)
    log: list[dict[str, Any]] = []

    def say(name: str, verdict: str, shown: Any) -> None:
        log.append({"step": name, "verdict": verdict, "shown": shown})
        if args.json:
            return
        mark = "[green]✔[/]" if verdict == "ok" else "[bold red]✘[/]"
        console.print(f"{mark} {name}")
        if shown is not None:
            console.print(
                json.dumps(shown, indent=2, default=str), style="dim", markup=False, highlight=False
            )

    try:
        run(settings, say)
    except DemoFailure as exc:
        if args.json:
            print(json.dumps({"ok": False, "failed": exc.message, "steps": log}, indent=2))
        return 1
    if args.json:
        print(json.dumps({"ok": True, "steps": log}, indent=2, default=str))
    else:
        console.print("[bold green]the promise held at every step[/]")
    return 0
