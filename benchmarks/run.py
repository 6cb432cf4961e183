"""Runs the benchmarks and rewrites docs/benchmarks.md.

Usage: ``make bench`` (all), or ``python -m benchmarks.run bench_hsm bench_cluster``
to re-run some: the sections of the others are kept as they were, each marked
with the commit and date it was measured at.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

MODULES = [
    "bench_hsm",
    "bench_cluster",
    "bench_audit",
    "bench_redact",
    "bench_shipper",
    "bench_witness",
    "bench_provision",
    "bench_gateway",
    "bench_revocation",
    "bench_fairness",
]
OUT = Path("docs/benchmarks.md")
_SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", re.DOTALL)


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
    wanted = [m for m in MODULES if not argv or m in argv]
    unknown = set(argv) - set(MODULES)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    old = dict(_SECTION.findall(OUT.read_text())) if OUT.exists() else {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    stamp = (
        f"_Measured at commit `{commit}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, {_machine()}._"
    )
    sections = dict(old)
    for name in wanted:
        print(f"running {name} ...", file=sys.stderr)
        t0 = time.monotonic()
        body = importlib.import_module(f"benchmarks.{name}").run()
        sections[name] = f"{body.rstrip()}\n\n{stamp}\n"
        print(f"  done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    header = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (= `.venv/bin/python -m benchmarks.run`; one module:",
        "`.venv/bin/python -m benchmarks.run bench_hsm`). Clients share the 2 cores with",
        "the servers, so absolute figures are lower bounds and noisy; the ratios against",
        "a baseline measured in the same run are the figures to compare.",
        "",
    ]
    parts = [
        f"<!-- bench:{m} -->\n{sections[m]}<!-- /bench:{m} -->\n" for m in MODULES if m in sections
    ]
    OUT.write_text("\n".join(header) + "\n" + "\n".join(parts))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
