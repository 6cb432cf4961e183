"""Runs every benchmark and rewrites docs/benchmarks.md. Usage: make bench."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODULES = [
    "benchmarks.bench_hsm",
    "benchmarks.bench_cluster",
    "benchmarks.bench_audit",
    "benchmarks.bench_redact",
    "benchmarks.bench_shipper",
    "benchmarks.bench_provision",
    "benchmarks.bench_gateway",
]


def _machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
        f"{mem:.0f} GiB, Python {platform.python_version()}"
    )


def main(argv: list[str]) -> int:
    only = set(argv)
    sections = []
    for name in MODULES:
        if only and name.rsplit(".", 1)[1] not in only:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            print(f"skip {name}: {exc}", file=sys.stderr)
            continue
        print(f"running {name} ...", file=sys.stderr)
        t0 = time.monotonic()
        sections.append(mod.run())
        print(f"  done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out = Path("docs/benchmarks.md")
    header = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (= `.venv/bin/python -m benchmarks.run`), "
        f"commit `{commit}`, {time.strftime('%Y-%m-%d')}.",
        f"Machine: {_machine()}. Clients share the cores with the servers, so absolute",
        "figures are lower bounds and noisy; ratios against a baseline measured in the",
        "same run are the figures to compare.",
        "",
    ]
    out.write_text("\n".join(header + sections))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
