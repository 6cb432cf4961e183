"""CLI: ``up``, ``down``, ``status``, ``cluster supervise|stop|start``, ``break-glass``.

``status`` exits 0 when everything is healthy; 3 when the cluster is not (a node
down, sealed or not a voter, or the HSM bridge down); else 4 when an audit
stream is stalled or failing (which includes a shipper that is not running or
whose status is older than two checkpoint intervals); 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from clawql_secrets.audit.shipper import ShipperSettings
from clawql_secrets.cluster import stack
from clawql_secrets.cluster.layout import StackSettings
from clawql_secrets.cluster.supervisor import Supervisor
from clawql_secrets.errors import InputError

DEFAULT_DATA_DIR = Path(".clawql")
EXIT_CLUSTER_UNHEALTHY = 3
EXIT_AUDIT_STALLED = 4


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="start the local stack (3-node OpenBao + HSM bridge)")
    _data_dir(p)
    p.add_argument("--base-port", type=int, default=None, help="node ports (new data dir only)")
    p.add_argument("--bridge-port", type=int, default=None, help="HSM bridge port (new data dir)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--no-example",
        action="store_true",
        help="do not seed and apply examples/clawql.yaml (two tenants) on this machine's databases",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="stop everything `up` started, and nothing else")
    _data_dir(p)
    p.set_defaults(func=_down)

    p = sub.add_parser(
        "status",
        help="nodes, raft, bridge, audit streams and Prometheus",
        epilog=f"exit status: 0 healthy; {EXIT_CLUSTER_UNHEALTHY} the cluster is not (a node "
        f"down, sealed or not a voter, or the HSM bridge down); {EXIT_AUDIT_STALLED} an audit "
        "stream is stalled or failing (or the shipper is not running); 1 an error",
    )
    _data_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    cluster = sub.add_parser("cluster", help="operate the local cluster's processes")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    csub.required = True
    p = csub.add_parser("supervise", help="run the supervisor in the foreground (used by `up`)")
    _data_dir(p)
    p.add_argument("--daemonize", action="store_true", help="fork into the background")
    p.set_defaults(func=_supervise)
    p = csub.add_parser(
        "render-k8s", help="write the whole plane as Kubernetes manifests (docs/kubernetes.md)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--values", type=Path, help="YAML of K8sSpec fields (docs/kubernetes.md)")
    p.add_argument("--replicas", type=int, default=None, help="OpenBao voters (3 or more)")
    p.add_argument("--namespace", default=None, help="the plane's namespace (default clawql)")
    for flag, what in (
        ("--image", "clawql-secrets"),
        ("--openbao-image", "OpenBao"),
        ("--redis-image", "Redis"),
        ("--fluent-bit-image", "Fluent Bit"),
    ):
        p.add_argument(flag, default=None, help=f"{what} image, REF@sha256:DIGEST")
    p.add_argument("--audit-transport", choices=("ship", "fluent-bit"), default=None)
    p.add_argument("--rules", type=Path, default=None, help="Prometheus alert rules file")
    p.add_argument(
        "--placeholder-images",
        action="store_true",
        help="allow the registry.invalid placeholders (review only: they never pull)",
    )
    p.set_defaults(func=_render_k8s)
    for name, func, text in (
        ("stop", _stop, "keep one process (n1, n2, n3, bridge) stopped"),
        ("start", _start, "let a stopped process run again"),
    ):
        p = csub.add_parser(name, help=text)
        _data_dir(p)
        p.add_argument("process")
        p.set_defaults(func=func)


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the stack keeps its state (default ./.clawql)",
    )


def _console() -> Console:
    return Console(stderr=True, log_path=False)


def _settings(args: argparse.Namespace) -> StackSettings:
    return stack.load_settings(
        args.data_dir.resolve(),
        base_port=getattr(args, "base_port", None),
        bridge_port=getattr(args, "bridge_port", None),
    )


def _up(args: argparse.Namespace) -> int:
    console = _console()
    settings = _settings(args)
    with console.status("starting") as spinner:

        def progress(message: str) -> None:
            spinner.update(message)
            console.log(message)

        res = stack.up(settings, progress=progress)
        example = None
        if not args.no_example:
            example = _example(settings, progress)
    if args.json:
        print(
            json.dumps(
                {
                    "initialised_now": res.initialised_now,
                    "recovery_shares": res.share_files,
                    **stack.status(settings),
                },
                indent=2,
            )
        )
        return 0
    console.print("[bold green]ClawQL Secrets stack is up[/]")
    for node in ("n1", "n2", "n3"):
        console.print(f"  OpenBao {node}: {settings.api_addr(node)}")
    console.print(f"  HSM bridge: {settings.bridge_addr}")
    console.print(f"  gateway: {settings.gateway_addr} (OpenAPI at /openapi.json)")
    console.print(f"  CA for clients: {settings.node_ca_dir / 'ca.pem'}")
    if example is not None:
        console.print(
            f"  example tenants {', '.join(example.tenants)}: {example.applied} OpenBao "
            f"change(s) applied; policies bound: {', '.join(example.bound) or 'unchanged'}"
        )
    console.print(f"  audit log (Merkle, write-once): {settings.audit_dir / 'store'}")
    console.print(
        f"  audit checkpoints: every {stack.LOCAL_CHECKPOINT_SECONDS:g} s on this local stack "
        f"(production default {ShipperSettings().interval_seconds:g} s)"
    )
    console.print(
        f"  Prometheus: {settings.prometheus_addr} (scrapes the shipper and the gateway; "
        "alert rules from deploy/prometheus/)"
    )
    console.print(
        f"  audit witness: {settings.witness_addr} (its own process and key, "
        f"{settings.witness_dir}); cosigns every checkpoint"
    )
    console.print(f"  logs: {settings.log_dir}")
    if res.initialised_now:
        console.print(
            f"  recovery shares ({settings.recovery_threshold} of {settings.recovery_shares}) "
            f"encrypted to key holders: {settings.recovery_dir}"
        )
        console.print(
            f"[bold red]  DEV ONLY: the holders' private identities are in "
            f"{settings.holders_dir}; never do this outside a laptop.[/]"
        )
        console.print("  the initial root token was used for bootstrap and revoked")
    return 0


def _example(settings: StackSettings, progress: Callable[[str], None]) -> Any:
    """Seed and apply the example tenants when this machine's databases answer."""
    import socket

    for port, what in ((5432, "PostgreSQL"), (3306, "MariaDB")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            progress(
                f"{what} is not reachable on 127.0.0.1:{port}: example tenants skipped "
                "(scripts/bootstrap.sh installs and starts it)"
            )
            return None
    from clawql_secrets.provision.localstack import provision_example

    return provision_example(settings, progress)


def _down(args: argparse.Namespace) -> int:
    console = _console()
    stopped = stack.down(_settings(args), progress=console.log)
    console.print("stopped" if stopped else "nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    st = stack.status(_settings(args))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    healthy = all(n["up"] and n["sealed"] is False and n["voter"] for n in st["nodes"].values())
    if not (healthy and st["bridge"].get("up")):
        return EXIT_CLUSTER_UNHEALTHY
    return 0 if st["audit"]["healthy"] else EXIT_AUDIT_STALLED


def _print_status(st: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"OpenBao cluster ({st['data_dir']})")
    for col in ("node", "up", "sealed", "role", "voter", "applied index", "restarts"):
        table.add_column(col)
    for name, n in st["nodes"].items():
        table.add_row(
            name,
            _yn(n["up"]),
            _yn(n["sealed"]),
            str(n["role"] or "-"),
            _yn(n["voter"]),
            str(n["applied_index"] or "-"),
            str(n["restarts"]),
        )
    console.print(table)
    b = st["bridge"]
    if b.get("up"):
        console.print(
            f"HSM bridge: up; token {b.get('token_label')}, key {b.get('key_name')} "
            f"v{b.get('key_version')}"
        )
    else:
        console.print(f"HSM bridge: [red]down[/] ({b.get('error', 'no answer')})")
    a = st.get("audit") or {}
    state = "up" if a.get("shipper_pid") else "[red]down[/]"
    if a.get("shipper_pid") and not a.get("healthy"):
        state = "[red]up, but not shipping every stream[/]"
    console.print(f"audit shipper: {state}; store {a.get('store')}; metrics {a.get('metrics')}")
    _print_streams(console, a)
    w = st.get("witness") or {}
    if w:
        behind = [
            f"{n} {v['cosigned']}/{v['checkpoint']}" for n, v in (w.get("streams") or {}).items()
        ]
        console.print(
            f"audit witness: {'up' if w.get('up') else '[red]down[/]'}; {w.get('url')}; "
            f"cosigned/checkpoint size: {', '.join(behind)}; key {w.get('key')}"
        )
    if a.get("verifier_key_file"):
        witness = f" --witness-key {w['key']} --witness-url {w['url']}" if w.get("key") else ""
        console.print(
            f"  verify: clawql-secrets audit verify --store {a.get('store')} "
            f"--pubkey-file {a['verifier_key_file']}{witness}"
        )
    g = st.get("gateway") or {}
    console.print(f"gateway: {'up' if g.get('pid') else '[red]down[/]'}; {g.get('url')}")
    _print_prometheus(console, st.get("prometheus") or {})
    if "raft_error" in st:
        console.print(f"raft: [yellow]{st['raft_error']}[/]")


_STATE_STYLE = {"ok": "green", "catching_up": "yellow", "failing": "red", "stalled": "bold red"}


def _print_streams(console: Console, a: dict[str, Any]) -> None:
    streams: dict[str, Any] = a.get("streams") or {}
    interval = a.get("interval_seconds")
    table = Table(title=f"audit streams (a checkpoint every {interval:g} s)" if interval else None)
    for col in ("stream", "state", "lag", "tree / published", "last checkpoint", "last error"):
        table.add_column(col)
    now = time.time()
    for name, v in streams.items():
        state = str(v.get("state"))
        lag = "-"
        if "lag_entries" in v:
            more = "" if v.get("unread_exact", True) else "≥"
            lag = f"{more}{v['lag_entries']} entries, {v['lag_seconds']:.0f} s"
        sizes = f"{_dash(v.get('tree_size'))} / {_dash(v.get('published_size'))}"
        err = v.get("last_error")
        error = "-"
        if err:
            first = str(err["message"]).splitlines()[0]
            error = f"{err['kind']}: {first} ({_ago(now, err['at'])})"
        note = v.get("note")
        table.add_row(
            name,
            f"[{_STATE_STYLE.get(state, 'red')}]{state}[/]" + (f" ({note})" if note else ""),
            lag,
            sizes,
            _ago(now, v.get("last_checkpoint_at")),
            error,
        )
    console.print(table)


def _print_prometheus(console: Console, p: dict[str, Any]) -> None:
    if not p.get("up"):
        console.print(f"Prometheus: [red]down[/]; {p.get('url')}")
        return
    targets = ", ".join(f"{job} {health}" for job, health in (p.get("targets") or {}).items())
    firing = ", ".join(p.get("alerts_firing") or []) or "none"
    console.print(
        f"Prometheus: up; {p.get('url')}; scraping {targets or 'nothing'}; "
        f"{p.get('alert_rules', 0)} alert rules, firing: {firing}"
    )


def _ago(now: float, at: object) -> str:
    if not isinstance(at, int | float):
        return "-"
    return f"{max(0.0, now - at):.0f} s ago"


def _dash(v: object) -> str:
    return "-" if v is None else str(v)


def _yn(v: object) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _supervise(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.daemonize:
        from clawql_secrets.cluster.supervisor import daemonize

        daemonize(settings)
    return Supervisor(settings).run()


def _render_k8s(args: argparse.Namespace) -> int:
    from clawql_secrets.cluster import manifests
    from clawql_secrets.cluster.k8s.spec import PLACEHOLDER_IMAGES

    spec = manifests.load_values(
        args.values,
        replicas=args.replicas,
        namespace=args.namespace,
        image=args.image,
        openbao_image=args.openbao_image,
        redis_image=args.redis_image,
        fluent_bit_image=args.fluent_bit_image,
        audit_transport=args.audit_transport,
        rules_file=args.rules,
    )
    missing = [k for k, v in PLACEHOLDER_IMAGES.items() if getattr(spec, k) == v]
    if missing and not args.placeholder_images:
        raise InputError(
            f"no image given for {', '.join(missing)}",
            fix="pass --image/--openbao-image/--redis-image/--fluent-bit-image REF@sha256:…, "
            "or --placeholder-images for a review rendering",
        )
    for path in manifests.write(spec, args.out):
        print(path)
    return 0


def _stop(args: argparse.Namespace) -> int:
    stack.hold(_settings(args), args.process)
    print(f"{args.process} will be kept stopped", file=sys.stderr)
    return 0


def _start(args: argparse.Namespace) -> int:
    stack.release(_settings(args), args.process)
    print(f"{args.process} released", file=sys.stderr)
    return 0


def register_breakglass(sub: Any) -> None:
    bg = sub.add_parser("break-glass", help="emergency procedures that need key holders")
    bsub = bg.add_subparsers(dest="bg_command", metavar="ACTION")
    bsub.required = True
    p = bsub.add_parser("decrypt-share", help="a holder decrypts their recovery share")
    p.add_argument("--identity", type=Path, required=True, help="the holder's age identity file")
    p.add_argument("share", type=Path, help="recovery-share-N.age")
    p.set_defaults(func=_bg_decrypt)
    p = bsub.add_parser(
        "root-token",
        help="generate a root token from a quorum of recovery shares, use it once, revoke it",
    )
    _data_dir(p)
    p.add_argument(
        "--share",
        type=Path,
        action="append",
        required=True,
        help="a decrypted recovery share file (repeat for each holder)",
    )
    p.add_argument(
        "--print-token",
        metavar="TTL",
        default=None,
        help="instead of an operation: print a root-policy token once, valid for TTL",
    )
    p.add_argument("operation", nargs="*", help="METHOD PATH [JSON-BODY], e.g. GET sys/auth")
    p.set_defaults(func=_bg_root)


def _bg_decrypt(args: argparse.Namespace) -> int:
    from clawql_secrets import holders

    ident = holders.load_identity(args.identity)
    try:
        blob = args.share.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {args.share}") from exc
    share = holders.decrypt_with(ident, blob, f"share {args.share.name}")
    import base64

    print(base64.b64encode(share).decode())
    return 0


def _bg_root(args: argparse.Namespace) -> int:
    from clawql_secrets.cluster import bootstrap, breakglass
    from clawql_secrets.issuer import LocalIssuer

    op = None
    if args.operation:
        if len(args.operation) not in (2, 3):
            raise InputError("operation is METHOD PATH [JSON-BODY]")
        body = None
        if len(args.operation) == 3:
            try:
                body = json.loads(args.operation[2])
            except ValueError as exc:
                raise InputError("the operation's body is not valid JSON") from exc
        op = breakglass.Operation(args.operation[0].upper(), args.operation[1], body)
    elif not args.print_token:
        raise InputError("give an operation (METHOD PATH [JSON]) or --print-token TTL")
    shares = []
    for path in args.share:
        try:
            shares.append(path.read_text().strip())
        except OSError as exc:
            raise InputError(f"cannot read share file {path}") from exc
    settings = _settings(args)
    issuer = LocalIssuer.load(settings.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(settings) as client:
        token = bootstrap.login(client, issuer, bootstrap.BREAKGLASS)
        try:
            out = breakglass.run_once(client, shares, op, token=token, print_ttl=args.print_token)
        finally:
            client.request("POST", "auth/token/revoke-self", token=token, retry_for=5)
    if args.print_token:
        _console().print(
            f"[bold red]root-policy token, valid {args.print_token}; shown once, revoke it "
            "when done (bao token revoke -self)[/]"
        )
    print(json.dumps(out, indent=2))
    return 0
