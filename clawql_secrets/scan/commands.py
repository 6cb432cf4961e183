"""CLI: ``scan`` — files, process environments and a live KV mount.

Exit codes: 0 no static credential and every bootstrap item protected; 1 a
static credential or a loosely protected bootstrap item (or an error); 3
nothing found but part could not be scanned (unreadable, permission denied).
Tokens for ``--openbao`` come from a file or an environment variable, never
an argument (arguments are visible to every local user in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from clawql_secrets.cluster import bootstrap as cluster_bootstrap
from clawql_secrets.cluster import stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import ConfigError, InputError
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.scan import kv, output, sources
from clawql_secrets.scan.detect import Detector
from clawql_secrets.scan.model import ScanResult


def register(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="prove there is no static credential (files, environments, KV)",
        description="Find static credentials; report named bootstrap trust with its protection.",
    )
    p.add_argument("paths", nargs="*", type=Path, help="files or directories to scan")
    p.add_argument("--env", action="store_true", help="scan this process's environment")
    p.add_argument(
        "--pid", type=int, action="append", default=[], help="scan /proc/PID/environ (repeatable)"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="DIRNAME",
        help="directory name to skip (in addition to .git, .venv, ...)",
    )
    g = p.add_argument_group("live OpenBao (KV v2)")
    g.add_argument("--openbao", action="store_true", help="list a KV v2 mount for static secrets")
    g.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".clawql"),
        help="local stack: addresses, CA and the operator identity (default ./.clawql)",
    )
    g.add_argument("--addr", action="append", default=[], help="OpenBao address (repeatable)")
    g.add_argument("--ca", type=Path, default=None, help="CA certificate that verifies OpenBao")
    tok = g.add_mutually_exclusive_group()
    tok.add_argument("--token-file", type=Path, help="file holding the token to list with")
    tok.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    g.add_argument("--mount", default="secret", help="KV v2 mount (default secret)")
    g.add_argument("--kv-prefix", default="", help="only walk below this path")
    g.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="GLOB",
        help="allow-listed injected secret path (relative to the mount)",
    )
    g.add_argument("--allow-list", type=Path, help="file of allow-listed path globs, one a line")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sarif", type=Path, metavar="FILE", help="also write SARIF 2.1.0 to FILE")
    p.set_defaults(func=_scan)


def _scan(args: argparse.Namespace) -> int:
    if not (args.paths or args.env or args.pid or args.openbao):
        raise InputError("nothing to scan", fix="give paths, --env, --pid N or --openbao")
    detector = Detector()
    if args.exclude:
        detector = Detector(
            replace(
                detector.config,
                exclude_dirs=detector.config.exclude_dirs | frozenset(args.exclude),
            )
        )
    result = ScanResult()
    if args.paths:
        result.extend(sources.scan_paths(args.paths, detector))
    if args.env:
        result.extend(sources.scan_environment(dict(os.environ), "self", detector))
    for pid in args.pid:
        result.extend(sources.scan_environment(sources.read_environ(pid), str(pid), detector))
    if args.openbao:
        result.extend(_scan_openbao(args))
    if args.sarif is not None:
        try:
            args.sarif.write_text(json.dumps(output.sarif(result), indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"cannot write SARIF to {args.sarif} ({exc.strerror})") from exc
    if args.json:
        print(json.dumps(output.to_json(result), indent=2))
    else:
        print(output.text(result))
    return result.exit_code()


def _allow_list(args: argparse.Namespace) -> kv.AllowList:
    globs = list(args.allow)
    if args.allow_list is not None:
        try:
            globs.extend(args.allow_list.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the allow-list {args.allow_list}") from exc
    return kv.AllowList.of(globs)


def _scan_openbao(args: argparse.Namespace) -> ScanResult:
    allow = _allow_list(args)
    data_dir = args.data_dir.resolve()
    settings = stack.load_settings(data_dir) if (data_dir / "stack.json").exists() else None
    addrs = args.addr or ([settings.api_addr(n) for n in NODE_IDS] if settings is not None else [])
    ca = args.ca or (settings.node_ca_dir / "ca.pem" if settings is not None else None)
    if not addrs or ca is None:
        raise ConfigError(
            f"no OpenBao address or CA: {data_dir} is not a local stack",
            fix="pass --addr and --ca, or --data-dir of a stack started with `up`",
        )
    with OpenBaoClient(addrs, ca, retry_for=15) as client:
        token = _token(args, client, settings)
        return sources.scan_kv(sources.KVSource(client, token, args.mount), allow, args.kv_prefix)


def _token(args: argparse.Namespace, client: OpenBaoClient, settings: StackSettings | None) -> str:
    token: str
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the token file {args.token_file}") from exc
    elif args.token_env is not None:
        token = os.environ.get(args.token_env, "").strip()
    elif settings is not None:
        # The local stack's operator: a short-lived token from a workload JWT.
        issuer = LocalIssuer.load(settings.issuer_dir, stack.ISSUER_URL)
        token = cluster_bootstrap.operator_login(client, issuer)
    else:
        raise ConfigError(
            "no token for --openbao", fix="use --token-file, --token-env, or a local --data-dir"
        )
    if not token:
        raise InputError("the token source is empty")
    return token
