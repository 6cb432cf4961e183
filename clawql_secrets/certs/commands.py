"""``clawql-secrets certs run`` and ``certs check``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from clawql_secrets.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "certs",
        help="short-lived certificates for internal services (mTLS)",
        description="Obtain, renew and check internal services' certificates from OpenBao PKI.",
    )
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION")
    csub.required = True

    run = csub.add_parser(
        "run", help="keep every declared service's certificate fresh (runs until stopped)"
    )
    run.add_argument("--config", type=Path, default=Path("certs.yaml"))
    run.add_argument(
        "--once",
        action="store_true",
        help="obtain missing or due certificates once and exit (e.g. an init container)",
    )
    run.set_defaults(func=_run)

    chk = csub.add_parser(
        "check", help="exit non-zero if any certificate is missing, expired or about to expire"
    )
    chk.add_argument("--config", type=Path, default=Path("certs.yaml"))
    chk.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="seconds of validity that must be left (default: per service, a sixth of its ttl)",
    )
    chk.add_argument("--json", action="store_true", help="machine-readable output")
    chk.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    from clawql_secrets.certs.authority import OpenBaoAuthority
    from clawql_secrets.certs.config import load
    from clawql_secrets.certs.metrics import CertsMetrics, registry_for
    from clawql_secrets.certs.renewer import Renewer
    from clawql_secrets.cluster.client import OpenBaoClient

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    config = load(args.config)
    ob = config.openbao
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with OpenBaoClient(ob.addrs, ob.ca_file, timeout=ob.timeout, retry_for=ob.retry_for) as client:
        authority = OpenBaoAuthority(client, config.identity, config.pki_mount, time.time)
        metrics = CertsMetrics(time.time)
        renewer = Renewer(config, authority, metrics=metrics)
        if args.once:
            renewer.step()
            missing = [n for n, info in renewer.in_place().items() if info is None]
            failed = [n for n, f in renewer.failures().items() if f]
            for name in failed:
                print(f"{name}: renewal failed (see log)", flush=True)
            return 1 if missing or failed else 0
        server = None
        if config.metrics is not None:
            from prometheus_client import start_http_server

            try:
                server, _ = start_http_server(
                    config.metrics.port, addr=config.metrics.host, registry=registry_for(metrics)
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}"
                ) from exc
            print(
                f"metrics on http://{config.metrics.host}:{server.server_port}/metrics", flush=True
            )
        print(f"renewing {', '.join(s.name for s in config.services)}", flush=True)
        try:
            renewer.run(stop)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
    print("stopped", flush=True)
    return 0


def _check(args: argparse.Namespace) -> int:
    from clawql_secrets.certs.check import check_all
    from clawql_secrets.certs.config import load

    config = load(args.config)
    results = check_all(config, time.time(), args.threshold)
    if args.json:
        print(
            json.dumps(
                {"ok": all(r.ok for r in results), "services": [r.to_json() for r in results]},
                indent=2,
            )
        )
    else:
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            print(f"{mark} {r.service}: {r.status}: {r.detail}")
    return 0 if all(r.ok for r in results) else 1
